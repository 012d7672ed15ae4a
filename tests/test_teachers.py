"""Tests for kd_gym.teachers: logits against a hand-run model, the on-disk cache, label spaces, evaluate/disagreement."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import kd_gym.teachers
from kd_gym.tasks import Task, load_task
from kd_gym.teachers import TeacherPool, TeacherSpec

TASK_LABELS = ["negative", "neutral", "positive"]


def _save_variant(source: Path, target: Path, *, seed: int | None = None, row_order: list[int] | None = None,
                  id2label: list[str] | None = None, bias_shift: float = 0.0) -> Path:
    """A teacher derived from ``source``: 2-D weights redrawn with std 0.3 (``seed``), classifier rows reordered
    (``row_order``), label names replaced (``id2label``), classifier bias shifted; saved with a tokenizer that
    knows the tiny vocabulary."""
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast

    model = AutoModelForSequenceClassification.from_pretrained(source)
    with torch.no_grad():
        if seed is not None:  # larger weights than the default init, so logits vary from instance to instance
            generator = torch.Generator().manual_seed(seed)
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
        if row_order is not None:
            model.classifier.weight.copy_(model.classifier.weight[row_order].clone())
            model.classifier.bias.copy_(model.classifier.bias[row_order].clone())
        model.classifier.bias.add_(bias_shift)
    if id2label is not None:
        model.config.id2label = dict(enumerate(id2label))
        model.config.label2id = {label: i for i, label in enumerate(id2label)}
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    shutil.copy(source / "vocab.txt", target / "vocab.txt")
    BertTokenizerFast.from_pretrained(target).save_pretrained(target)  # built from vocab.txt
    return target


@pytest.fixture(scope="module")
def varied_teachers(tiny_teachers, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("varied")
    return [_save_variant(source, root / f"varied{k}", seed=10 + k) for k, source in enumerate(tiny_teachers)]


@pytest.fixture(scope="module")
def task(tiny_csv) -> Task:
    return load_task(str(tiny_csv), seed=0)


def make_pool(teachers, cache_dir: Path, **kwargs) -> TeacherPool:
    return TeacherPool(teachers, cache_dir=cache_dir, device="cpu", precision="fp32", **kwargs)


def logits_by_hand(folder: Path, texts: list[str], max_length: int = 64) -> torch.Tensor:
    """(N, C) logits of the classifier in ``folder``, run plainly in eval mode, fp32, one padded batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits.float()


def cache_files(cache_dir: Path) -> set[str]:
    return {path.name for path in (cache_dir / "logits").glob("*.safetensors")}


def forbid_model_loading(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the teacher model was loaded although its logits are cached")

    monkeypatch.setattr(kd_gym.teachers, "load_classifier", fail)


def count_model_loading(monkeypatch) -> list[str]:
    loaded: list[str] = []
    original = kd_gym.teachers.load_classifier

    def counting(folder, **kwargs):
        loaded.append(Path(folder).name)
        return original(folder, **kwargs)

    monkeypatch.setattr(kd_gym.teachers, "load_classifier", counting)
    return loaded


# ------------------------------------------------------------------------------------------------ logits


def test_logits_shape_and_values_match_the_model_run_by_hand(varied_teachers, task, tmp_path) -> None:
    pool = make_pool([str(p) for p in varied_teachers], tmp_path)
    assert pool.names == ["varied0", "varied1", "varied2"] and len(pool) == 3
    for split in ("train", "dev"):
        logits = pool.logits(task, split)
        assert logits.shape == (len(task.splits[split]), 3, 3) and logits.dtype == torch.float32
        for k, folder in enumerate(varied_teachers):
            torch.testing.assert_close(logits[:, k], logits_by_hand(folder, task.texts(split)), atol=1e-5, rtol=1e-5)
    # The comparison is sensitive to row order: the logits differ from instance to instance.
    assert logits.std(dim=0).min() > 0.05


def test_conftest_teachers_give_the_same_logits_as_by_hand(tiny_teachers, task, tmp_path) -> None:
    pool = make_pool(tiny_teachers, tmp_path)
    logits = pool.logits(task, "dev")
    assert logits.shape == (30, 3, 3)
    for k, folder in enumerate(tiny_teachers):
        torch.testing.assert_close(logits[:, k], logits_by_hand(folder, task.texts("dev")), atol=1e-5, rtol=1e-5)


def test_max_length_truncates_like_the_tokenizer(varied_teachers, task, tmp_path) -> None:
    pool = make_pool([varied_teachers[0]], tmp_path, max_length=6)
    expected = logits_by_hand(varied_teachers[0], task.texts("dev"), max_length=6)
    torch.testing.assert_close(pool.logits(task, "dev")[:, 0], expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ the cache


def test_second_call_reads_the_cache_without_loading_the_model(varied_teachers, task, tmp_path, monkeypatch) -> None:
    loaded = count_model_loading(monkeypatch)
    pool = make_pool(varied_teachers[:2], tmp_path)
    first = pool.logits(task, "dev")
    assert loaded == ["varied0", "varied1"]
    assert len(cache_files(tmp_path)) == 2
    forbid_model_loading(monkeypatch)
    assert torch.equal(pool.logits(task, "dev"), first)
    again = make_pool(varied_teachers[:2], tmp_path).logits(task, "dev")  # a new pool: nothing kept in memory
    assert torch.equal(again, first)
    assert len(cache_files(tmp_path)) == 2


@pytest.fixture(scope="module")
def warm_cache(varied_teachers, task, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A cache folder holding the dev logits of varied0 and varied1, and those logits (N, 2, C)."""
    cache_dir = tmp_path_factory.mktemp("warm")
    return cache_dir, make_pool(varied_teachers[:2], cache_dir).logits(task, "dev")


@pytest.fixture()
def cache_copy(warm_cache, tmp_path) -> tuple[Path, Path, torch.Tensor]:
    """A fresh copy of the warm cache: (cache folder, varied0's dev file in it, the logits it should give)."""
    source, logits = warm_cache
    cache_dir = tmp_path / "cache"
    shutil.copytree(source, cache_dir)
    (path,) = (cache_dir / "logits").glob("varied0-dev-*.safetensors")
    return cache_dir, path, logits


def _recomputes_to(original: torch.Tensor, varied_teachers, task, cache_dir, monkeypatch, caplog) -> None:
    """A new pool recomputes exactly teacher varied0, warns about it, gets ``original`` and repairs the file."""
    loaded = count_model_loading(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kd_gym.prepare.cache"):
        again = make_pool(varied_teachers[:2], cache_dir).logits(task, "dev")
    assert loaded == ["varied0"]
    assert any("recomputing" in record.getMessage() for record in caplog.records)
    torch.testing.assert_close(again, original, atol=1e-6, rtol=1e-6)
    forbid_model_loading(monkeypatch)  # the repaired file is used from now on
    torch.testing.assert_close(make_pool(varied_teachers[:2], cache_dir).logits(task, "dev"), original,
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_cache_file_is_recomputed(varied_teachers, task, cache_copy, monkeypatch, caplog, keep) -> None:
    cache_dir, path, original = cache_copy
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    _recomputes_to(original, varied_teachers, task, cache_dir, monkeypatch, caplog)


@pytest.mark.parametrize("payload", [b"\xff" * 16, b"\x00" * 16, b"\x01\x02\x03\x04" * 4])
def test_corrupted_tensor_bytes_are_recomputed(varied_teachers, task, cache_copy, monkeypatch, caplog, payload) -> None:
    cache_dir, path, original = cache_copy
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    middle = header + (len(data) - header) // 2  # inside the tensor data
    data[middle : middle + len(payload)] = payload
    path.write_bytes(bytes(data))
    _recomputes_to(original, varied_teachers, task, cache_dir, monkeypatch, caplog)


@pytest.mark.parametrize("field", ["fingerprint", "rows"])
def test_flipped_metadata_is_recomputed(varied_teachers, task, cache_copy, monkeypatch, caplog, field) -> None:
    cache_dir, path, original = cache_copy
    data = path.read_bytes()
    start = data.index(f'"{field}":"'.encode()) + len(field) + 4
    flipped = b"9" if data[start : start + 1] != b"9" else b"8"  # same length: the header still parses
    path.write_bytes(data[:start] + flipped + data[start + 1 :])
    _recomputes_to(original, varied_teachers, task, cache_dir, monkeypatch, caplog)


def test_garbage_header_is_recomputed(varied_teachers, task, cache_copy, monkeypatch, caplog) -> None:
    cache_dir, path, original = cache_copy
    data = bytearray(path.read_bytes())
    data[9:20] = b"not json!!!"
    path.write_bytes(bytes(data))
    _recomputes_to(original, varied_teachers, task, cache_dir, monkeypatch, caplog)


def test_max_length_is_part_of_the_cache_key(varied_teachers, task, tmp_path) -> None:
    long = make_pool([varied_teachers[0]], tmp_path, max_length=64).logits(task, "dev")
    before = cache_files(tmp_path)
    short = make_pool([varied_teachers[0]], tmp_path, max_length=6).logits(task, "dev")
    after = cache_files(tmp_path)
    assert len(before) == 1 and len(after) == 2  # a new file, the old one kept
    assert not torch.allclose(short, long)  # and it holds other numbers: texts longer than 6 tokens are cut


def test_weights_are_part_of_the_cache_key(varied_teachers, task, tmp_path, monkeypatch) -> None:
    # Same folder name (so the same teacher name), other weights: the cache must not be fooled by the name.
    changed = _save_variant(varied_teachers[0], tmp_path / "other" / "varied0", bias_shift=0.5)
    original = make_pool([varied_teachers[0]], tmp_path / "cache").logits(task, "dev")
    loaded = count_model_loading(monkeypatch)
    shifted = make_pool([changed], tmp_path / "cache").logits(task, "dev")
    assert loaded == ["varied0"]
    assert len(cache_files(tmp_path / "cache")) == 2
    torch.testing.assert_close(shifted, original + 0.5, atol=1e-5, rtol=1e-5)


def _swap_vocabulary(folder: Path) -> None:
    """Give the teacher in ``folder`` another tokenizer: its words in reverse order (special tokens kept), so that
    every word gets another id."""
    from transformers import BertTokenizerFast

    words = (folder / "vocab.txt").read_text().split()
    special = [w for w in words if w.startswith("[")]
    (folder / "vocab.txt").write_text("\n".join(special + [w for w in words if not w.startswith("[")][::-1]) + "\n")
    (folder / "tokenizer.json").unlink()  # built again from vocab.txt
    BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)


def test_tokenizer_is_part_of_the_cache_key(varied_teachers, task, tmp_path, monkeypatch) -> None:
    # The same weights behind another tokenizer give other logits: the cache must not serve the old ones.
    folder = tmp_path / "copy" / "varied0"
    shutil.copytree(varied_teachers[0], folder)
    original = make_pool([folder], tmp_path / "cache").logits(task, "dev")
    _swap_vocabulary(folder)
    loaded = count_model_loading(monkeypatch)
    swapped = make_pool([folder], tmp_path / "cache").logits(task, "dev")
    assert loaded == ["varied0"]  # computed again, not read
    assert len(cache_files(tmp_path / "cache")) == 2
    torch.testing.assert_close(swapped, logits_by_hand(folder, task.texts("dev"))[:, None], atol=1e-5, rtol=1e-5)
    assert (swapped - original).abs().max() > 0.05
    # and the intact original still reads its own logits
    torch.testing.assert_close(make_pool([varied_teachers[0]], tmp_path / "cache").logits(task, "dev"), original)


def test_cache_file_says_what_its_key_is_made_of(varied_teachers, task, cache_copy, monkeypatch, caplog) -> None:
    # A file whose stored key parts disagree with the teacher's is recomputed, and the warning names the part.
    cache_dir, path, original = cache_copy
    data = path.read_bytes()
    start = data.index(b'"max_length":"') + len('"max_length":"')
    path.write_bytes(data[:start] + (b"7" if data[start:start + 1] != b"7" else b"8") + data[start + 1:])
    _recomputes_to(original, varied_teachers, task, cache_dir, monkeypatch, caplog)
    assert "max_length" in caplog.text


# ------------------------------------------------------------------------------------------------ label spaces


def test_teacher_with_other_number_of_labels_is_an_error(varied_teachers, task, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        varied_teachers[0], num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
        ignore_mismatched_sizes=True)
    model.save_pretrained(tmp_path / "binary")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(varied_teachers[0] / name, tmp_path / "binary" / name)
    pool = make_pool([varied_teachers[0], tmp_path / "binary"], tmp_path / "cache")
    with pytest.raises(ValueError, match="label_map") as error:
        pool.check_labels(task)
    assert "'binary'" in str(error.value) and "2 labels" in str(error.value) and "3" in str(error.value)
    with pytest.raises(ValueError, match="label_map"):
        pool.logits(task, "dev")


@pytest.fixture(scope="module")
def reversed_teachers(varied_teachers, tmp_path_factory) -> dict[str, Path]:
    """varied0 with its classifier rows in reverse order, under task names and under other names."""
    root = tmp_path_factory.mktemp("reversed")
    return {
        "named": _save_variant(varied_teachers[0], root / "named", row_order=[2, 1, 0],
                               id2label=["positive", "neutral", "negative"]),
        "renamed": _save_variant(varied_teachers[0], root / "renamed", row_order=[2, 1, 0],
                                 id2label=["good", "meh", "bad"]),
        "generic": _save_variant(varied_teachers[0], root / "generic", row_order=[2, 1, 0],
                                 id2label=["LABEL_0", "LABEL_1", "LABEL_2"]),
    }


def test_permuted_label_names_are_put_in_task_order(varied_teachers, reversed_teachers, task, tmp_path) -> None:
    logits = make_pool([varied_teachers[0], reversed_teachers["named"]], tmp_path).logits(task, "dev")
    torch.testing.assert_close(logits[:, 1], logits[:, 0], atol=1e-6, rtol=1e-6)
    # ... whereas the raw model output is in the teacher's own (reversed) order.
    raw = logits_by_hand(reversed_teachers["named"], task.texts("dev"))
    torch.testing.assert_close(raw, logits[:, 0].flip(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("label_map", [
    {"negative": "bad", "neutral": "meh", "positive": "good"},
    {"negative": "BAD", "neutral": "Meh", "positive": "good"},  # names match case-insensitively
    {"negative": 2, "neutral": 1, "positive": 0},
])
def test_label_map_reorders_columns(varied_teachers, reversed_teachers, task, tmp_path, label_map) -> None:
    spec = TeacherSpec(path=str(reversed_teachers["renamed"]), label_map=label_map)
    logits = make_pool([varied_teachers[0], spec], tmp_path).logits(task, "dev")
    torch.testing.assert_close(logits[:, 1], logits[:, 0], atol=1e-6, rtol=1e-6)


def test_label_map_on_generic_labels(varied_teachers, reversed_teachers, task, tmp_path) -> None:
    # LABEL_i names are taken in task order unless a label_map says otherwise.
    plain = make_pool([reversed_teachers["generic"]], tmp_path).logits(task, "dev")[:, 0]
    mapped = make_pool([TeacherSpec(path=str(reversed_teachers["generic"]), label_map={
        "negative": "LABEL_2", "neutral": "LABEL_1", "positive": "LABEL_0"})], tmp_path).logits(task, "dev")[:, 0]
    reference = make_pool([varied_teachers[0]], tmp_path).logits(task, "dev")[:, 0]
    torch.testing.assert_close(plain, reference.flip(-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mapped, reference, atol=1e-6, rtol=1e-6)


def test_other_label_names_without_a_map_are_an_error(reversed_teachers, task, tmp_path) -> None:
    pool = make_pool([reversed_teachers["renamed"]], tmp_path)
    with pytest.raises(ValueError, match="label_map") as error:
        pool.logits(task, "dev")
    assert "good" in str(error.value) and "negative" in str(error.value)


@pytest.mark.parametrize("label_map, wrong", [
    ({"negative": "bad", "neutral": "meh"}, "positive"),                       # a task label is missing
    ({"negative": "bad", "neutral": "meh", "positive": "great"}, "great"),      # not a teacher label
    ({"negative": 2, "neutral": 1, "positive": 3}, "3"),                        # index out of range
])
def test_invalid_label_map_is_an_error(reversed_teachers, task, tmp_path, label_map, wrong) -> None:
    pool = make_pool([TeacherSpec(path=str(reversed_teachers["renamed"]), label_map=label_map)], tmp_path)
    with pytest.raises(ValueError, match="label_map") as error:
        pool.check_labels(task)
    assert wrong in str(error.value)


def test_duplicate_names_and_empty_pool_are_errors(varied_teachers, tmp_path) -> None:
    with pytest.raises(ValueError, match="unique"):
        make_pool([varied_teachers[0], varied_teachers[0]], tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        make_pool([], tmp_path)


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_and_disagreement_match_a_hand_computation(varied_teachers, task, tmp_path) -> None:
    pool = make_pool(varied_teachers, tmp_path)
    labels = task.labels("dev")
    predictions = np.stack([logits_by_hand(folder, task.texts("dev")).argmax(-1).numpy()
                            for folder in varied_teachers], axis=1)  # (N, K)
    scores = pool.evaluate(task, "dev")
    assert len(scores) == 3
    for k, score in enumerate(scores):
        accuracy = float(np.mean(predictions[:, k] == labels))
        assert score["accuracy"] == pytest.approx(accuracy) and score["metric"] == pytest.approx(accuracy)

    disagreement = pool.disagreement(task, "dev")
    expected = np.array([[np.mean(predictions[:, i] != predictions[:, j]) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(disagreement, expected)
    assert disagreement.shape == (3, 3)
    np.testing.assert_array_equal(np.diag(disagreement), 0.0)
    np.testing.assert_array_equal(disagreement, disagreement.T)
    off_diagonal = disagreement[~np.eye(3, dtype=bool)]
    assert ((off_diagonal > 0) & (off_diagonal < 1)).any()  # the teachers partly agree: a non-trivial check


# ------------------------------------------------------------------------------------------------ skipped rows


def test_skipped_rows_are_nan_and_the_others_match_a_full_pool(varied_teachers, task, tmp_path, monkeypatch) -> None:
    full = make_pool(varied_teachers[:2], tmp_path).logits(task, "train")
    hashes = task.row_hashes("train")
    skipped = set(hashes[::3])
    partial = make_pool(varied_teachers[:2], tmp_path, skip_rows=skipped).logits(task, "train")
    nan_rows = torch.isnan(partial).any(dim=(1, 2)).numpy()
    np.testing.assert_array_equal(nan_rows, [h in skipped for h in hashes])
    assert torch.isnan(partial[torch.as_tensor(nan_rows)]).all()
    torch.testing.assert_close(partial[torch.as_tensor(~nan_rows)], full[torch.as_tensor(~nan_rows)],
                               atol=1e-5, rtol=1e-5)  # batches differ (fewer rows, other padding): float rounding
    assert len(cache_files(tmp_path)) == 4  # a skipping pool caches its own files; the full pool's stay
    dev = make_pool(varied_teachers[:2], tmp_path, skip_rows=skipped).logits(task, "dev")
    assert not torch.isnan(dev).any()  # dev rows are not teacher rows
    forbid_model_loading(monkeypatch)  # the second time they are read back (the cache holds the computed rows)
    again = make_pool(varied_teachers[:2], tmp_path, skip_rows=skipped).logits(task, "train")
    torch.testing.assert_close(again, partial, equal_nan=True, rtol=0, atol=0)


def test_a_built_pool_skips_its_training_rows(varied_teachers, task, tmp_path) -> None:
    import json

    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "pool.json").write_text(json.dumps({"teachers": [{"name": p.name, "folder": str(p)}
                                                               for p in varied_teachers[:2]]}))
    hashes = task.row_hashes("train")
    (folder / "training_rows.txt").write_text("\n".join(hashes[:5]) + "\n")
    pool = TeacherPool.from_manifest(folder / "pool.json", cache_dir=tmp_path, device="cpu", precision="fp32")
    assert pool.skip_rows == frozenset(hashes[:5])
    assert not TeacherPool.from_manifest(folder / "pool.json", skip_trained_rows=False).skip_rows
