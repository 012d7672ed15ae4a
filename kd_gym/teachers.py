"""A pool of K teachers whose logits are computed once and cached on disk.

A teacher is a folder: a HuggingFace sequence classifier (hub id or ``save_pretrained`` folder, the general case) or
a TF-IDF + logistic-regression teacher (:mod:`kd_gym.prepare.tfidf`, recognised by its ``config.json``).

Each teacher has its own tokenizer. Logits for a task split are keyed by a fingerprint of everything that shapes them:
the teacher's files (weights, config and tokenizer, by content), the split's content, the rows computed, max length,
precision and the label order; they are stored with safetensors under ``<cache_dir>/logits/`` and checked against
that key when read. After the first run a teacher costs a file read. A teacher folder that lacks what its model
needs (``config.json``, a tokenizer with a vocabulary) is refused by name before anything is computed.

A pool built by ``kd-gym teachers build`` skips the rows its teachers were trained on (``skip_rows``): no student
may learn from them, so their logits are never computed and read as NaN. That is a third of the tweets' logits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kd_gym.prepare.cache import (
    TRAINING_ROWS_FILE,
    cached_tensor,
    fingerprint,
    hash_files,
    kd_gym_home,
    resolve_model_folder,
)
from kd_gym.prepare.inference import (
    autocast_dtype,
    batched_forward,
    check_model_folder,
    quiet_transformers,
    resolve_device,
)
from kd_gym.prepare.tfidf import is_tfidf_teacher, tfidf_labels, tfidf_logits
from kd_gym.tasks import Task, teacher_metrics

log = logging.getLogger(__name__)

GENERIC_LABEL_PREFIX = "LABEL_"


@dataclass
class TeacherSpec:
    """One teacher.

    :param path: a HuggingFace hub id or a local folder made with ``save_pretrained``.
    :param name: a short name for tables and logs (default: the folder or id's last part).
    :param revision: hub revision (branch, tag or commit) for hub ids.
    :param label_map: task label name -> teacher label name (or index), for teachers whose label space differs.
    """

    path: str
    name: str | None = None
    revision: str | None = None
    label_map: dict[str, str | int] | None = field(default=None)

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.name is None:
            self.name = Path(self.path.rstrip("/")).name


def _as_spec(teacher: str | Path | TeacherSpec | dict) -> TeacherSpec:
    if isinstance(teacher, TeacherSpec):
        return teacher
    if isinstance(teacher, dict):
        return TeacherSpec(**teacher)
    return TeacherSpec(path=str(teacher))


def label_permutation(teacher_labels: Sequence[str], task: Task, name: str, label_map=None) -> list[int]:
    """Indices into a teacher's logits, one per task label, so that column c of the result is task label c.

    :raises ValueError: when the label spaces differ and no ``label_map`` says how they correspond.
    """
    task_labels = list(task.label_names)
    lowered = [label.lower() for label in teacher_labels]
    if label_map is not None:
        perm = []
        for label in task_labels:
            if label not in label_map:
                raise ValueError(f"label_map of teacher {name!r} has no entry for task label {label!r}")
            target = label_map[label]
            if isinstance(target, int):
                if not 0 <= target < len(teacher_labels):
                    raise ValueError(f"label_map of teacher {name!r} maps {label!r} to index {target}, "
                                     f"but the teacher has {len(teacher_labels)} labels")
                perm.append(target)
            elif str(target).lower() in lowered:
                perm.append(lowered.index(str(target).lower()))
            else:
                raise ValueError(f"label_map of teacher {name!r} maps {label!r} to {target!r}, "
                                 f"which is not one of its labels {list(teacher_labels)}")
        return perm
    if len(teacher_labels) != len(task_labels):
        raise ValueError(f"teacher {name!r} predicts {len(teacher_labels)} labels but task {task.name!r} has "
                         f"{len(task_labels)} ({task_labels}); pass label_map={{task label: teacher label}}")
    if all(label.startswith(GENERIC_LABEL_PREFIX) for label in teacher_labels):
        return list(range(len(task_labels)))
    if sorted(lowered) == sorted(label.lower() for label in task_labels):
        return [lowered.index(label.lower()) for label in task_labels]
    raise ValueError(f"teacher {name!r} has labels {list(teacher_labels)} but task {task.name!r} has "
                     f"{task_labels}; pass label_map={{task label: teacher label}}")


def load_classifier(folder: str | Path, **kwargs):
    """Load a sequence classifier and its tokenizer from a local folder, without transformers' load report."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


class TeacherPool:
    """K teachers and their cached logits.

    :param teachers: hub ids, folders, :class:`TeacherSpec` or dicts of its fields.
    :param cache_dir: where logits are cached (default ``$KD_GYM_HOME``).
    :param max_length: max tokens per input; part of the cache key.
    :param batch_size: inference batch size.
    :param device: "auto", "cpu", "cuda", ...
    :param precision: "auto" (bf16 on CUDA and on CPUs with native bf16), "bf16" or "fp32"; part of the cache key.
    :param skip_rows: row hashes (:meth:`~kd_gym.tasks.Task.row_hashes`) whose logits are not computed: their rows
        hold NaN. A built pool passes the rows its teachers were trained on (:meth:`from_manifest`); part of the
        cache key.
    """

    def __init__(
        self,
        teachers: Sequence[str | Path | TeacherSpec | dict],
        *,
        cache_dir: str | Path | None = None,
        max_length: int = 64,
        batch_size: int = 128,
        device: str = "auto",
        precision: str = "auto",
        skip_rows: Collection[str] = (),
    ) -> None:
        if len(teachers) == 0:
            raise ValueError("a teacher pool needs at least one teacher")
        self.specs = [_as_spec(t) for t in teachers]
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}; set TeacherSpec(name=...)")
        self.cache_dir = Path(cache_dir) if cache_dir else kd_gym_home()
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self._folders: dict[int, Path] = {}
        self._file_hashes: dict[int, str] = {}
        self.skip_rows = frozenset(skip_rows)

    @property
    def names(self) -> list[str]:
        """Teacher names, in pool order."""
        return [spec.name for spec in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    @classmethod
    def from_manifest(cls, manifest: str | Path, *, skip_trained_rows: bool = True, **kwargs) -> TeacherPool:
        """A pool from a ``pool.json`` written by ``kd-gym teachers build`` (folders relative to it).

        :param skip_trained_rows: skip (NaN) the rows listed in the pool's ``training_rows.txt``, the rows its
            teachers were trained on, which no student reads; False: compute every row.
        """
        manifest = Path(manifest)
        if not manifest.exists():
            raise FileNotFoundError(f"no teacher pool at {manifest}; build it with `kd-gym teachers build`")
        entries = json.loads(manifest.read_text())["teachers"]
        specs = [TeacherSpec(path=str(manifest.parent / e["folder"]), name=e["name"]) for e in entries]
        rows_file = manifest.parent / TRAINING_ROWS_FILE
        if skip_trained_rows and rows_file.exists() and "skip_rows" not in kwargs:
            kwargs["skip_rows"] = rows_file.read_text().split()
        return cls(specs, **kwargs)

    def _folder(self, k: int) -> Path:
        if k not in self._folders:
            folder = resolve_model_folder(self.specs[k].path, self.specs[k].revision)
            if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
                raise FileNotFoundError(f"teacher {self.specs[k].name!r}: no model weights (*.safetensors or *.bin) in "
                                        f"{folder}; save the model there with save_pretrained, or fix the path")
            if not is_tfidf_teacher(folder):
                check_model_folder(folder, f"teacher {self.specs[k].name!r}")
            self._folders[k] = folder
        return self._folders[k]

    def _teacher_labels(self, k: int) -> list[str]:
        from transformers import AutoConfig

        if is_tfidf_teacher(self._folder(k)):
            return tfidf_labels(self._folder(k))
        config = AutoConfig.from_pretrained(self._folder(k))
        return [config.id2label[i] for i in range(config.num_labels)]

    def check_labels(self, task: Task) -> list[list[int]]:
        """Check every teacher's label space against ``task``; returns each teacher's label permutation."""
        return [
            label_permutation(self._teacher_labels(k), task, spec.name, spec.label_map)
            for k, spec in enumerate(self.specs)
        ]

    def _computed_rows(self, task: Task, split: str) -> np.ndarray | None:
        """The rows of ``split`` whose logits are computed (None: all of them)."""
        if not self.skip_rows:
            return None
        keep = np.array([h not in self.skip_rows for h in task.row_hashes(split)], dtype=bool)
        return None if keep.all() else np.flatnonzero(keep)

    def _cache_key(self, k: int, task: Task, split: str, perm: list[int],
                   rows: np.ndarray | None) -> tuple[str, dict[str, str]]:
        """The fingerprint of teacher ``k``'s logits on ``split``, and what it is made of, by name."""
        if k not in self._file_hashes:  # weights, config and tokenizer files, by content
            self._file_hashes[k] = hash_files(self._folder(k))
        parts = {"model_files": self._file_hashes[k], "split": task.fingerprint(split),
                 "max_length": str(self.max_length), "precision": str(self.dtype), "label_order": json.dumps(perm),
                 "computed_rows": "all" if rows is None else fingerprint(rows.tolist())}
        return fingerprint(parts), parts

    def teacher_logits(self, k: int, task: Task, split: str) -> torch.Tensor:
        """(N, C) logits of teacher ``k`` on ``split``, columns in the task's label order (NaN on ``skip_rows``);
        cached."""
        perm = label_permutation(self._teacher_labels(k), task, self.specs[k].name, self.specs[k].label_map)
        rows = self._computed_rows(task, split)
        key, parts = self._cache_key(k, task, split, perm, rows)
        path = self.cache_dir / "logits" / f"{self.specs[k].name}-{split}-{key[:20]}.safetensors"

        def compute() -> torch.Tensor:
            texts, pairs = task.texts(split), task.text_pairs(split)
            if rows is not None:
                texts, pairs = [texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows]
            if is_tfidf_teacher(self._folder(k)):
                computed = tfidf_logits(self._folder(k), texts, pairs)[:, perm]
            else:
                model, tokenizer = load_classifier(self._folder(k))
                model.to(self.device)
                computed = batched_forward(
                    model, tokenizer, texts, pairs, lambda batch: model(**batch).logits,
                    max_length=self.max_length, batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                    desc=f"teacher {self.specs[k].name} on {split}",
                )[:, perm]
            return computed

        if rows is None:
            return cached_tensor(path, key, len(task.splits[split]), compute, parts)
        computed = cached_tensor(path, key, len(rows), compute, parts)  # the computed rows only: the cache holds no NaN
        logits = torch.full((len(task.splits[split]), computed.shape[1]), float("nan"))
        logits[torch.as_tensor(rows)] = computed
        return logits

    def logits(self, task: Task, split: str) -> torch.Tensor:
        """(N, K, C) float32 logits of all teachers on ``split``; computed once, then read from the cache."""
        return torch.stack([self.teacher_logits(k, task, split) for k in range(len(self))], dim=1)

    def evaluate(self, task: Task, split: str) -> list[dict[str, float]]:
        """Each teacher's task metrics on ``split``."""
        return teacher_metrics(task, self.logits(task, split), task.labels(split))

    def disagreement(self, task: Task, split: str) -> np.ndarray:
        """(K, K) share of instances on which two teachers predict different labels."""
        predictions = self.logits(task, split).argmax(-1).numpy()
        return (predictions[:, :, None] != predictions[:, None, :]).mean(axis=0)
