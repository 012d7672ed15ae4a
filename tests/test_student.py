"""Tests for kd_gym.student: StudentTrainer with the lite and the full student on the tiny task."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_gym.data import KDData
from kd_gym.prepare.embeddings import SentenceEncoder
from kd_gym.prepare.tensors import build_full_data, build_lite_data
from kd_gym.student import FullStudent, LiteStudent, StudentTrainer
from kd_gym.tasks import load_task
from kd_gym.teachers import TeacherPool

B = 16
LR = {"lite": 1e-2, "full": 3e-3}


@pytest.fixture(scope="module")
def encoder_folder(tiny_encoder, tmp_path_factory) -> Path:
    """The tiny encoder with a tokenizer rebuilt from its vocab.txt, so that words are not all [UNK] and the
    student sees inputs that differ."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("student") / "encoder"
    shutil.copytree(tiny_encoder, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def datasets_by_kind(tiny_csv, tiny_teachers, encoder_folder, tmp_path_factory) -> dict[str, KDData]:
    cache_dir = tmp_path_factory.mktemp("student_cache")
    task = load_task(str(tiny_csv), seed=0)
    pool = TeacherPool(tiny_teachers, cache_dir=cache_dir, device="cpu", precision="fp32")
    encoder = SentenceEncoder(encoder_folder, cache_dir=cache_dir, device="cpu", precision="fp32")
    tokenizer = FullStudent(encoder_folder, task.num_labels).tokenizer
    return {"lite": build_lite_data(task, pool, encoder), "full": build_full_data(task, pool, tokenizer, max_length=16)}


def make_trainer(kind: str, data: dict[str, KDData], encoder_folder: Path, **kwargs) -> StudentTrainer:
    model = LiteStudent(32, 3, hidden_size=64) if kind == "lite" else FullStudent(encoder_folder, 3, num_layers=2)
    kwargs = {"lr": LR[kind], "device": "cpu", "precision": "fp32", **kwargs}
    return StudentTrainer(model, data[kind], **kwargs)


def batch_and_weights(data: KDData, seed: int = 0) -> tuple[dict, torch.Tensor]:
    rng = np.random.default_rng(seed)
    batch = data.splits["train"].batch(np.sort(rng.choice(len(data.splits["train"]), B, replace=False)))
    return batch, torch.as_tensor(rng.random((B, data.num_teachers)), dtype=torch.float32)


def parameters(trainer: StudentTrainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


KINDS = pytest.mark.parametrize("kind", ["lite", "full"])


def test_data_shapes(datasets_by_kind) -> None:
    lite, full = datasets_by_kind["lite"], datasets_by_kind["full"]
    for data in (lite, full):
        assert data.num_teachers == 3 and data.num_labels == 3
        assert [len(data.splits[s]) for s in ("train", "dev", "test")] == [240, 30, 30]
        assert data.splits["train"].teacher_logits.shape == (240, 3, 3) and data.splits["test"].teacher_logits is None
    assert lite.splits["train"].inputs["embeddings"].shape == (240, 32)
    torch.testing.assert_close(lite.splits["train"].inputs["embeddings"].norm(dim=1), torch.ones(240))  # L2-normalised
    assert full.splits["train"].inputs["input_ids"].shape[0] == 240
    # Trimmed to the longest row of the batch.
    batch = full.splits["train"].batch(np.arange(5))
    assert batch["inputs"]["input_ids"].shape[1] == int(full.splits["train"].lengths[:5].max())


@KINDS
def test_training_on_a_fixed_batch_lowers_the_loss(kind, datasets_by_kind, encoder_folder) -> None:
    trainer = make_trainer(kind, datasets_by_kind, encoder_folder)
    trainer.reset(seed=0)
    batch, weights = batch_and_weights(datasets_by_kind[kind])
    losses = [trainer.train_step(batch, weights).loss.item() for _ in range(30)]
    assert trainer.steps == 30
    assert losses[-1] < 0.75 * losses[0], losses  # the KD term keeps it above 0: ~0.66 after 30 steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # The student now fits the batch: its CE there (eval mode) is below that of the fresh student, chance level.
    logits, representation = trainer.forward(batch, grad=False)
    assert logits.shape == (B, 3) and representation.shape == (B, trainer.model.representation_size)
    assert F.cross_entropy(logits, batch["labels"]).item() < 0.8 * np.log(3)


@KINDS
def test_same_seed_gives_identical_numbers(kind, datasets_by_kind, encoder_folder) -> None:
    results = []
    for _ in range(2):  # two trainers with their own models, one after the other
        trainer = make_trainer(kind, datasets_by_kind, encoder_folder)
        trainer.reset(seed=3)
        losses = [trainer.train_step(*batch_and_weights(datasets_by_kind[kind], seed=s)).loss.item() for s in range(5)]
        results.append((losses, trainer.evaluate("dev"), parameters(trainer)))
    (losses_a, metrics_a, params_a), (losses_b, metrics_b, params_b) = results
    assert losses_a == losses_b
    assert metrics_a == metrics_b
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name


@KINDS
def test_reset_seed_draws_the_fresh_modules(kind, datasets_by_kind, encoder_folder) -> None:
    trainer = make_trainer(kind, datasets_by_kind, encoder_folder)
    trainer.reset(seed=3)
    init_3 = parameters(trainer)
    trainer.train_step(*batch_and_weights(datasets_by_kind[kind]))
    trainer.reset(seed=4)
    init_4 = parameters(trainer)
    fresh = {f"{name}.{p}" for name, module in trainer.model.named_modules()
             if module in trainer.model.fresh_modules() for p in ("weight", "bias")}
    assert fresh and fresh <= init_3.keys()
    for name in init_3:
        if name in fresh:
            assert not torch.equal(init_3[name], init_4[name]), name  # a different seed, a different draw
        else:
            assert torch.equal(init_3[name], init_4[name]), name  # pre-trained weights are restored as they were
    if kind == "full":
        assert len(init_3) > len(fresh)  # the encoder is pre-trained, not redrawn
    trainer.train_step(*batch_and_weights(datasets_by_kind[kind]))
    trainer.reset(seed=3)  # after training: back to exactly the seed-3 student
    assert trainer.steps == 0
    for name, value in parameters(trainer).items():
        assert torch.equal(value, init_3[name]), name


@KINDS
def test_evaluate_matches_a_hand_computation(kind, datasets_by_kind, encoder_folder) -> None:
    trainer = make_trainer(kind, datasets_by_kind, encoder_folder, eval_batch_size=7)  # several eval batches
    trainer.reset(seed=1)
    for seed in range(3):
        trainer.train_step(*batch_and_weights(datasets_by_kind[kind], seed=seed))
    labels = datasets_by_kind[kind].splits["dev"].labels
    metrics = trainer.evaluate("dev")
    assert set(metrics) == {"metric", "accuracy", "loss"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["metric"] == metrics["accuracy"]
    assert 0.0 < metrics["loss"] < 10.0
    # By hand, from the eval-mode student over the whole split in one batch.
    trainer.model.eval()
    with torch.no_grad():
        logits, _ = trainer.model(**datasets_by_kind[kind].splits["dev"].batch(np.arange(30))["inputs"])
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    # And on a subset of rows.
    rows = np.array([0, 4, 5, 17, 29])
    subset = trainer.evaluate("dev", rows)
    assert subset["accuracy"] == pytest.approx((logits[rows].argmax(-1) == labels[rows]).float().mean().item())
    assert subset["loss"] == pytest.approx(F.cross_entropy(logits[rows], labels[rows]).item(), rel=1e-5)


@KINDS
def test_all_zero_rows_learn_from_the_gold_label_alone(kind, datasets_by_kind, encoder_folder) -> None:
    batch, weights = batch_and_weights(datasets_by_kind[kind])
    # Rows with zero weights have the loss of alpha = 1 (plain CE) on those rows; the other rows do not.
    weights[:4] = 0.0
    kd = make_trainer(kind, datasets_by_kind, encoder_folder, alpha=0.2)
    kd.reset(seed=5)
    mixed = kd.train_step(batch, weights).per_instance
    ce_only = make_trainer(kind, datasets_by_kind, encoder_folder, alpha=1.0)
    ce_only.reset(seed=5)
    plain = ce_only.train_step(batch, weights).per_instance
    torch.testing.assert_close(mixed[:4], plain[:4])
    assert (mixed[4:] - plain[4:]).abs().min() > 1e-4
    # A batch of all-zero rows makes the same update as alpha = 1.
    kd.reset(seed=5)
    zero = kd.train_step(batch, torch.zeros_like(weights))
    ce_only.reset(seed=5)
    gold = ce_only.train_step(batch, weights)
    torch.testing.assert_close(zero.loss, gold.loss)
    assert zero.kd.item() == 0.0 and gold.kd.item() > 0.0
    params_zero, params_gold = parameters(kd), parameters(ce_only)
    for name in params_zero:
        torch.testing.assert_close(params_zero[name], params_gold[name], rtol=1e-6, atol=1e-7)


@KINDS
def test_numpy_weights_and_reused_logits_give_the_same_update(kind, datasets_by_kind, encoder_folder) -> None:
    batch, weights = batch_and_weights(datasets_by_kind[kind])
    trainer = make_trainer(kind, datasets_by_kind, encoder_folder)
    trainer.reset(seed=2)
    reference = trainer.train_step(batch, weights)
    after_reference = parameters(trainer)
    trainer.reset(seed=2)
    logits, _ = trainer.forward(batch, grad=True)  # as the env does: the observation's forward pass is reused
    reused = trainer.train_step(batch, weights.numpy(), logits=logits)
    torch.testing.assert_close(reused.per_instance, reference.per_instance)
    for name, value in parameters(trainer).items():
        torch.testing.assert_close(value, after_reference[name])


def test_save_writes_the_weights(datasets_by_kind, encoder_folder, tmp_path) -> None:
    from safetensors.torch import load_file

    trainer = make_trainer("lite", datasets_by_kind, encoder_folder)
    trainer.reset(seed=0)
    trainer.train_step(*batch_and_weights(datasets_by_kind["lite"]))
    trainer.save(tmp_path / "out" / "student.safetensors")
    saved = load_file(str(tmp_path / "out" / "student.safetensors"))
    state = trainer.model.state_dict()
    assert saved.keys() == state.keys()
    for name in state:
        assert torch.equal(saved[name], state[name])


def test_pair_credit_matches_a_finite_difference():
    """credit[i, k] = how fast a gradient step on instance i's KD term toward teacher k lowers the dev loss."""
    from test_agents import noisy_teacher_data

    from kd_gym.losses import multi_teacher_kd_loss

    torch.manual_seed(0)
    data = noisy_teacher_data(n_train=64, n_dev=64)
    trainer = StudentTrainer(LiteStudent(16, 3, hidden_size=8), data, alpha=0.3, temperature=2.0, device="cpu")
    batch = trainer.split("train").batch(np.arange(4))
    dev_indices = np.arange(64)
    credit = trainer.pair_credit(batch, dev_indices).numpy()
    model = trainer.model.eval()

    def dev_loss() -> float:
        with torch.no_grad():
            dev = trainer.split("dev").batch(dev_indices)
            return F.cross_entropy(model(**dev["inputs"])[0], dev["labels"]).item()

    base, eps = dev_loss(), 1e-3
    for i, k in [(0, 0), (1, 2), (3, 1)]:
        one = {key: (value[i : i + 1] if torch.is_tensor(value) else {n: v[i : i + 1] for n, v in value.items()})
               for key, value in batch.items()}
        weights = torch.zeros(1, 3)
        weights[0, k] = 1.0
        logits = model(**one["inputs"])[0]
        term = multi_teacher_kd_loss(logits, one["teacher_logits"], weights, one["labels"], alpha=0.3, temperature=2.0)
        kd_only = (1 - 0.3) * term.kd  # the distillation part of instance i's loss toward teacher k
        grads = torch.autograd.grad(kd_only, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p.sub_(eps * g)
        decrease = (base - dev_loss()) / eps
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p.add_(eps * g)
        assert decrease == pytest.approx(credit[i, k], rel=0.05, abs=1e-3), (i, k, decrease, credit[i, k])


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.5])
def test_lite_dropout_from_a_generator_is_torch_dropout_on_that_stream(dropout) -> None:
    """The lite student's generator-drawn masks are the ones nn.Dropout draws from torch's global generator at the
    same state: the same logits and gradients, bit for bit, and the stream left at the same place."""
    inputs = torch.randn(32, 24)
    reference, own = LiteStudent(24, 5, 16, dropout=dropout), LiteStudent(24, 5, 16, dropout=dropout)
    own.load_state_dict(reference.state_dict())
    own.generator = torch.Generator().manual_seed(7)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected, _ = reference.train()(inputs)
        expected_state = torch.get_rng_state()
    global_state = torch.get_rng_state()
    logits, _ = own.train()(inputs)
    assert torch.equal(logits, expected)
    assert torch.equal(own.generator.get_state(), expected_state)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator is not used
    expected.sum().backward()
    logits.sum().backward()
    for a, b in zip(reference.parameters(), own.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert torch.equal(own.eval()(inputs)[0], reference.eval()(inputs)[0])  # no dropout in eval mode
