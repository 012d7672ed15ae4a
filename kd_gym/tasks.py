"""Text-classification tasks: deterministic train / dev / test splits of (text[, text_pair], label).

Every source (the embedded ``tweets`` corpus, GLUE, any other HuggingFace hub dataset, local csv / jsonl /
parquet files) goes through the same two steps: :func:`_canonical` turns a loaded table into the canonical
columns ``text`` (str), optional ``text_pair`` (str) and ``label`` (int64 in ``0..C-1``), and
:func:`stratified_split` carves missing splits (and ``max_train_examples``) out of train, class by class,
with ``numpy.random.default_rng(seed)``. The test split is for final reports only; agents never see it. Where the
rows come from and the checks they pass (tweets and their topics, local files, label sets, repeated texts) live in
:mod:`kd_gym.task_sources`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from kd_gym.metrics import binary_f1, matthews_correlation
from kd_gym.task_sources import (
    LOCAL_BUILDERS,
    SPLITS,
    check_label_sets,
    check_row_count,
    drop_duplicate_texts,
    load_local_files,
    load_snippets,
    load_tweets,
)

GLUE_PATH_ENV = "KD_GYM_GLUE_PATH"
# config -> (text column, text-pair column, primary metric); stsb is a regression task and is not offered.
_GLUE_CONFIGS: dict[str, tuple[str, str | None, str]] = {
    "cola": ("sentence", None, "matthews_correlation"),
    "sst2": ("sentence", None, "accuracy"),
    "mrpc": ("sentence1", "sentence2", "f1"),
    "qqp": ("question1", "question2", "f1"),
    "mnli": ("premise", "hypothesis", "accuracy"),
    "qnli": ("question", "sentence", "accuracy"),
    "rte": ("sentence1", "sentence2", "accuracy"),
    "wnli": ("sentence1", "sentence2", "accuracy"),
}



#: silos of a task without a silo column: k-means clusters of the sentence embeddings (``kmeans_silos``)
KMEANS_SILOS = 5
#: the built-in tasks' domain columns: their siloed pools' silos unless silo_column names another
BUILTIN_SILO_COLUMNS = {"tweets": "topic", "snippets": "domain"}


@dataclass
class TaskOptions:
    """The keywords of :func:`load_task` besides the name and the seed: how to read a custom task. Each field is a
    flag of ``kd-gym teachers build``, ``train`` and ``bench`` (``--text-column``, ...)."""

    text_column: str = "text"
    """column with the (first) text of a local or hub dataset"""
    text_pair_column: str | None = None
    """column with the second text of pair tasks (None: single-text task)"""
    label_column: str = "label"
    """column with the class label (class names, ints >= 0, or a ClassLabel)"""
    dev_fraction: float = 0.1
    """share of the data (per class) drawn from train as dev when the task has no dev split"""
    test_fraction: float = 0.1
    """share of the data (per class) drawn from train as test when the task has no test split"""
    max_train_examples: int | None = None
    """keep a stratified, seeded subset of train of this many rows (None: all)"""
    allow_rare_labels: bool = False
    """keep train labels rarer than 0.5% of the rows as classes (default: an error, they are usually stray values)"""
    silo_column: str | None = None
    """column naming each row's domain: the siloed pool's silos, one expert each (None: tweets' topic, snippets'
    domain; other tasks get k-means clusters of the rows' sentence embeddings)"""
    kmeans_silos: int = KMEANS_SILOS
    """silos of a task without a silo column: k-means clusters of the rows' sentence embeddings (unused where a silo
    column gives the silos)"""


def available_tasks() -> list[str]:
    """Names accepted by :func:`load_task` besides local files and ``owner/name`` hub datasets."""
    return ["tweets", "snippets"] + [f"glue/{config}" for config in _GLUE_CONFIGS]


@dataclass
class Task:
    """A classification task with fixed train / dev / test splits.

    :param name: the task's name, e.g. ``"tweets"``, ``"glue/sst2"``, ``"my.csv"``.
    :param splits: ``"train"``, ``"dev"``, ``"test"`` -> dataset with columns ``text`` (str), optional
        ``text_pair`` (str), ``label`` (int, ``0..num_labels-1``) and possibly extra columns (tweets: ``topic``,
        ``confidence``).
    :param label_names: class index -> class name.
    :param metric: the primary metric: ``"accuracy"``, ``"f1"`` or ``"matthews_correlation"``.
    """

    name: str
    splits: dict[str, datasets.Dataset]
    label_names: list[str]
    metric: str
    #: the column naming each row's domain (the siloed pool's silos; tweets: ``topic``), or None (k-means silos)
    silo_column: str | None = None
    #: k-means silos of a task without a silo column
    kmeans_silos: int = KMEANS_SILOS
    _fingerprints: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_labels(self) -> int:
        """The number of classes C."""
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether instances are text pairs (a ``text_pair`` column is present)."""
        return "text_pair" in self.splits["train"].column_names

    def _column(self, split: str, column: str) -> list:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for task {self.name!r}; use one of {list(SPLITS)}")
        return self.splits[split].with_format("arrow")[column].to_pylist()

    def texts(self, split: str) -> list[str]:
        """The first texts of ``split``, length N."""
        return self._column(split, "text")

    def text_pairs(self, split: str) -> list[str] | None:
        """The second texts of ``split`` (length N), or None for single-text tasks."""
        return self._column(split, "text_pair") if self.is_pair else None

    def labels(self, split: str) -> np.ndarray:
        """The gold class ids of ``split``, shape (N,), int64."""
        return np.asarray(self._column(split, "label"), dtype=np.int64)

    def fingerprint(self, split: str) -> str:
        """SHA-256 hex digest of the texts, pairs and labels of ``split`` (not the task name), stable across processes."""
        if split not in self._fingerprints:
            content = [self.texts(split), self.text_pairs(split), self.labels(split).tolist()]
            self._fingerprints[split] = hashlib.sha256(json.dumps(content).encode("utf-8")).hexdigest()
        return self._fingerprints[split]

    def content_fingerprint(self) -> str:
        """SHA-256 hex digest of all three splits' content (texts, pairs, labels; not the name): what a teacher
        pool belongs to. Another file with the same rows, or the same file under another path, gives the same
        digest; another split seed gives another."""
        return hashlib.sha256("|".join(self.fingerprint(split) for split in SPLITS).encode()).hexdigest()

    def row_hashes(self, split: str) -> list[str]:
        """A short hash (16 hex digits) of each row's text and text pair in ``split``, to compare rows across tasks."""
        pairs = self.text_pairs(split) or [""] * len(self.splits[split])
        return [hashlib.sha1(f"{text}\x1f{pair}".encode()).hexdigest()[:16]
                for text, pair in zip(self.texts(split), pairs)]

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Score predictions against gold labels.

        :param predictions: class ids, shape (N,), or scores / logits, shape (N, C) (argmax is taken).
        :param labels: gold class ids, shape (N,).
        :return: ``accuracy``, the primary metric if it is another one (``f1`` for the positive class 1,
            ``matthews_correlation``) and ``metric``, the primary metric's value; all in [0, 1] ([-1, 1] for MCC).
        """
        predictions, labels = np.asarray(predictions), np.asarray(labels)
        if predictions.ndim == 2:
            predictions = predictions.argmax(axis=1)
        if predictions.shape != labels.shape or labels.ndim != 1:
            raise ValueError(
                f"predictions of shape {predictions.shape} do not match labels of shape {labels.shape}; "
                "pass class ids (N,) or logits (N, C) for N labels (N,)"
            )
        scores = {"accuracy": float(np.mean(predictions == labels)) if labels.size else 0.0}
        if self.metric == "f1":
            scores["f1"] = binary_f1(predictions, labels)
        elif self.metric == "matthews_correlation":
            scores["matthews_correlation"] = matthews_correlation(predictions, labels, self.num_labels)
        scores["metric"] = scores[self.metric]
        return scores


def stratified_split(labels: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_take`` of the positions 0..N-1, with each class's share as close to its share in ``labels`` as can be.

    Per-class quotas use the largest-remainder method, so the total is exactly ``n_take``.

    :param labels: class ids, shape (N,).
    :return: (taken positions, remaining positions), both sorted, int64.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n_take / len(labels)
    quotas = np.floor(exact).astype(np.int64)
    shortfall = n_take - int(quotas.sum())
    quotas[np.argsort(-(exact - quotas), kind="stable")[:shortfall]] += 1
    taken = [rng.permutation(np.flatnonzero(labels == c))[:quota] for c, quota in zip(classes, quotas)]
    taken_positions = np.sort(np.concatenate(taken))
    return taken_positions, np.setdiff1d(np.arange(len(labels)), taken_positions)


def _canonical(table: datasets.Dataset, text_column: str, text_pair_column: str | None, label_column: str,
               label_ids: np.ndarray, label_names: list[str]) -> datasets.Dataset:
    """Rename the source columns to ``text`` / ``text_pair``; replace the labels by ``label_ids`` (N,), stored as a
    ClassLabel over ``label_names``."""
    sources = {text_column: "text", label_column: "label"} | ({text_pair_column: "text_pair"} if text_pair_column else {})
    # Extra columns that clash with a canonical name (a "text" column when text_column="title") are dropped.
    clashing = [c for c in table.column_names if c in ("text", "text_pair", "label") and c not in sources]
    table = table.remove_columns([label_column, *clashing]).rename_columns(
        {source: target for source, target in sources.items() if source != label_column}
    )
    return table.add_column("label", label_ids.tolist()).cast_column("label", datasets.ClassLabel(names=label_names))


def _encode_labels(raw: dict[str, datasets.Dataset], label_column: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Class names and per-split class ids (N,) int64: ClassLabel names kept, ints kept ("0", "1", ...),
    strings mapped to their sorted unique values."""
    feature = raw["train"].features[label_column]
    values = {split: raw[split].with_format("arrow")[label_column].to_pylist() for split in raw}
    everything = [value for split_values in values.values() for value in split_values]
    if isinstance(feature, datasets.ClassLabel) and all(0 <= value < feature.num_classes for value in everything):
        return list(feature.names), {split: np.asarray(v, dtype=np.int64) for split, v in values.items()}
    kinds = {type(value) for value in everything}
    if kinds == {str}:
        names = sorted(set(everything))
        ids = {name: i for i, name in enumerate(names)}
        return names, {split: np.asarray([ids[x] for x in v], dtype=np.int64) for split, v in values.items()}
    if kinds == {int} and min(everything) >= 0:
        return [str(i) for i in range(max(everything) + 1)], {s: np.asarray(v, dtype=np.int64) for s, v in values.items()}
    bad = [v for v in everything if type(v) not in (str, int) or (type(v) is int and v < 0)]
    found = f"{bad[0]!r} ({type(bad[0]).__name__})" if bad else "both strings and integers"
    raise ValueError(
        f"label column {label_column!r} holds {found}; kd-gym needs class labels, all strings or all integers "
        ">= 0 (regression targets are not supported); pass label_column=... to pick another column"
    )


def _assemble(name: str, raw: dict[str, datasets.Dataset], *, text_column: str, text_pair_column: str | None,
              label_column: str, metric: str, seed: int, dev_fraction: float, test_fraction: float,
              max_train_examples: int | None, dedupe: bool = False, allow_rare_labels: bool = False,
              sources: dict[str, str] | None = None, silo_column: str | None = None) -> Task:
    """Check columns and labels, encode labels, split what is missing off train, subsample train, build the Task.

    :param raw: loaded splits, keyed by names in :data:`SPLITS`; ``"train"`` is required.
    :param dedupe: drop repeated texts within and across splits (local files; see :func:`drop_duplicate_texts`).
    :param sources: split -> where it came from (a file name), for error messages.
    """
    for split, table in raw.items():
        for flag, column in (("text_column", text_column), ("text_pair_column", text_pair_column),
                             ("label_column", label_column), ("silo_column", silo_column)):
            if column is not None and column not in table.column_names:
                raise ValueError(f"task {name!r}: column {column!r} is missing from the {split} split, which has "
                                 f"columns {table.column_names}; pass {flag}=... naming one of them")
            if column is not None and (nulls := table.with_format("arrow")[column].null_count):
                raise ValueError(f"task {name!r}: column {column!r} of the {split} split has {nulls} empty values; "
                                 "fill or drop those rows first")
    # Held-out splits with hidden labels (all -1, as in GLUE test) count as missing.
    raw = {split: table for split, table in raw.items() if split == "train" or not _labels_hidden(table, label_column)}
    label_names, label_ids = _encode_labels(raw, label_column)
    if len(np.unique(label_ids["train"])) < 2:
        raise ValueError(f"task {name!r}: the train data has only one class ({label_names[label_ids['train'][0]]!r}) "
                         f"in column {label_column!r}; a classifier needs at least two; check label_column=...")
    check_row_count(name, raw, sources or {})  # before the label checks: 2 rows are too few, not 2 stray labels
    check_label_sets(name, raw, label_column, allow_rare_labels, sources or {})
    splits = {split: _canonical(table, text_column, text_pair_column, label_column, label_ids[split], label_names)
              for split, table in raw.items()}
    if dedupe:
        splits = drop_duplicate_texts(splits, sources or {})
    rng = np.random.default_rng(seed)
    train_labels = np.asarray(splits["train"].with_format("arrow")["label"].to_pylist(), dtype=np.int64)
    n_total = len(train_labels)
    for split, fraction in (("test", test_fraction), ("dev", dev_fraction)):
        if split not in splits:
            taken, rest = stratified_split(train_labels, round(fraction * n_total), rng)
            splits[split], splits["train"], train_labels = (
                splits["train"].select(taken), splits["train"].select(rest), train_labels[rest])
    if max_train_examples is not None:
        if max_train_examples < 1:
            raise ValueError(f"max_train_examples={max_train_examples} must be >= 1, or None to keep all of train")
        if max_train_examples < len(train_labels):
            splits["train"] = splits["train"].select(stratified_split(train_labels, max_train_examples, rng)[0])
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise ValueError(f"task {name!r}: the {split} split is empty ({n_total} rows in train before splitting, "
                             f"dev_fraction={dev_fraction}, test_fraction={test_fraction}); use a larger dataset "
                             "or larger fractions")
    return Task(name, {split: splits[split] for split in SPLITS}, label_names, metric)


def _labels_hidden(table: datasets.Dataset, label_column: str) -> bool:
    labels = table.with_format("arrow")[label_column]
    return pa.types.is_integer(labels.type) and max(labels.to_pylist(), default=-1) < 0


def load_task(name: str = "tweets", *, seed: int = 0, data_files: str | dict[str, str] | None = None,
              text_column: str = "text", text_pair_column: str | None = None, label_column: str = "label",
              dev_fraction: float = 0.1, test_fraction: float = 0.1, max_train_examples: int | None = None,
              allow_rare_labels: bool = False, silo_column: str | None = None,
              kmeans_silos: int = KMEANS_SILOS) -> Task:
    """Load a task with deterministic train / dev / test splits.

    :param name: ``"tweets"`` (embedded default), ``"glue/<config>"``, a hub dataset ``"owner/name"``, or a local
        ``.csv`` / ``.jsonl`` / ``.json`` / ``.parquet`` file.
    :param seed: seeds every split drawn here; the same seed gives the same splits.
    :param data_files: local file(s) to load instead of ``name`` (then ``name`` only names the task); a dict maps
        ``train`` / ``dev`` (or ``validation``) / ``test`` to files.
    :param text_column: column with the (first) text; ignored for tweets and GLUE.
    :param text_pair_column: column with the second text of pair tasks, or None; ignored for tweets and GLUE.
    :param label_column: column with the class label (ClassLabel, int >= 0, or string); ignored for tweets and GLUE.
    :param dev_fraction: share of the data (per class) drawn from train as dev when no dev split is given.
    :param test_fraction: share of the data (per class) drawn from train as test when no test split is given.
    :param max_train_examples: keep a stratified, seeded subset of train of this many rows; None keeps all.
    :param allow_rare_labels: keep train labels rarer than 0.5% of the rows as classes (by default an error: such
        labels are usually stray values). Dev and test labels must always be labels of train.
    :param silo_column: column naming each row's domain, kept in every split: the siloed pool's silos (tweets:
        ``topic`` unless another column is named); None: k-means silos.
    :param kmeans_silos: how many k-means silos a task without a silo column gets (>= 2).
    :return: the :class:`Task`. GLUE's test labels are hidden, so its test split is GLUE validation
        (``validation_matched`` for mnli) and its dev split is drawn from GLUE train.
    """
    for flag, fraction in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"{flag}={fraction} is out of range; use a share in [0, 1), e.g. 0.1")
    if dev_fraction + test_fraction >= 1:
        raise ValueError(f"dev_fraction + test_fraction = {dev_fraction + test_fraction} leaves no training data; "
                         "keep their sum below 1, e.g. 0.1 and 0.1")
    if isinstance(kmeans_silos, bool) or not isinstance(kmeans_silos, int) or kmeans_silos < 2:
        raise ValueError(f"kmeans_silos={kmeans_silos!r} is invalid; use an integer >= 2 (silos need a choice "
                         "between experts), e.g. 5")
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    if silo_column is not None and silo_column in columns.values():
        raise ValueError(f"silo_column={silo_column!r} is also the task's text or label column; name a column that "
                         "marks each row's domain (a source, a product category, a language)")
    metric = "accuracy"
    extra: dict = {}
    if data_files is not None or Path(name).suffix.lower() in LOCAL_BUILDERS:
        if data_files is not None and name == "tweets":  # the default name would mislabel the user's files
            name = Path(data_files if isinstance(data_files, (str, os.PathLike)) else data_files["train"]).name
        files = data_files if data_files is not None else name
        raw = load_local_files(files)
        sources = {"train": str(files)} if isinstance(files, (str, os.PathLike)) else {
            {"validation": "dev"}.get(k, k): str(v) for k, v in files.items()}
        extra = {"dedupe": True, "sources": sources}
    elif name == "tweets":
        raw = {"train": load_tweets()}
        columns = {"text_column": "text", "text_pair_column": None, "label_column": "label"}
        silo_column = silo_column or BUILTIN_SILO_COLUMNS[name]
    elif name == "snippets":
        raw = {"train": load_snippets()}
        columns = {"text_column": "text", "text_pair_column": None, "label_column": "label"}
        silo_column = silo_column or BUILTIN_SILO_COLUMNS[name]
    elif name.startswith("glue/"):
        config = name.removeprefix("glue/")
        if config not in _GLUE_CONFIGS:
            hint = "stsb is a regression task, which kd-gym does not support" if config == "stsb" else "unknown"
            raise ValueError(f"GLUE config {config!r}: {hint}; use one of {available_tasks()[1:]}")
        text, pair, metric = _GLUE_CONFIGS[config]
        loaded = datasets.load_dataset(os.environ.get(GLUE_PATH_ENV, "nyu-mll/glue"), config)
        raw = {"train": loaded["train"], "test": loaded["validation_matched" if config == "mnli" else "validation"]}
        columns = {"text_column": text, "text_pair_column": pair, "label_column": "label"}
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        loaded = datasets.load_dataset(name)
        raw = {split: loaded[source] for split, source in (("train", "train"), ("dev", "validation"), ("dev", "dev"),
                                                            ("test", "test")) if source in loaded}
        if "train" not in raw:
            raise ValueError(f"hub dataset {name!r} has splits {list(loaded)} but no 'train'; pass data_files=...")
    else:
        raise ValueError(f"unknown task {name!r}; use one of {available_tasks()}, a hub dataset 'owner/name', "
                         f"or a local file ending in {sorted(LOCAL_BUILDERS)}")
    task = _assemble(name, raw, **columns, metric=metric, seed=seed, dev_fraction=dev_fraction,
                     test_fraction=test_fraction, max_train_examples=max_train_examples,
                     allow_rare_labels=allow_rare_labels, silo_column=silo_column, **extra)
    task.silo_column, task.kmeans_silos = silo_column, kmeans_silos
    return task


def teacher_metrics(task: Task, teacher_logits, labels) -> list[dict[str, float]]:
    """Each teacher's task metrics: :meth:`Task.compute_metrics` of ``teacher_logits[:, k]`` for k = 0..K-1.

    :param teacher_logits: (N, K, C) tensor or array.
    :param labels: (N,) gold class ids, tensor or array.
    """
    import torch

    predictions = torch.as_tensor(teacher_logits).argmax(-1).cpu().numpy()
    gold = torch.as_tensor(labels).cpu().numpy()
    return [task.compute_metrics(predictions[:, k], gold) for k in range(predictions.shape[1])]
