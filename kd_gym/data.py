"""The tensors an environment trains on: student inputs, gold labels and cached teacher logits, per split.

Everything is prepared once, up front, and kept on the training device, so a step only indexes tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kd_gym.embeddings import SentenceEncoder
from kd_gym.tasks import SPLITS, Task
from kd_gym.teachers import TeacherPool


@dataclass
class SplitTensors:
    """One split, as tensors with N rows.

    :param inputs: the student's inputs: ``{"embeddings": (N, D)}`` (lite) or ``{"input_ids", "attention_mask",
        ["token_type_ids"]}: (N, L)`` (full), padded to the longest row.
    :param labels: (N,) int64 gold labels.
    :param lengths: (N,) int64 number of tokens (or of words, for the lite student).
    :param teacher_logits: (N, K, C) float32, or None where not needed (the test split).
    :param oracle_weights: (N, K) the scenario's oracle weighting, where it has one (see kd_gym.scenarios).
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    lengths: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    oracle_weights: torch.Tensor | None = None
    _host_lengths: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> SplitTensors:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return SplitTensors({k: v.to(device) for k, v in self.inputs.items()}, move(self.labels),
                            move(self.lengths), move(self.teacher_logits), move(self.oracle_weights))

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows ``indices`` (host array) as a batch dict on the split's device.

        Token inputs are trimmed to the longest row of the batch, a width read from a host copy of the lengths
        (no device-to-host copy).
        """
        if self._host_lengths is None:
            self._host_lengths = self.lengths.cpu().numpy()
        device_indices = torch.as_tensor(indices, device=self.labels.device)
        inputs = {k: v[device_indices] for k, v in self.inputs.items()}
        if "attention_mask" in inputs:
            width = int(self._host_lengths[indices].max())
            inputs = {k: v[:, :width].long() for k, v in inputs.items()}
        indices = device_indices
        batch = {"inputs": inputs, "labels": self.labels[indices], "lengths": self.lengths[indices]}
        if self.teacher_logits is not None:
            batch["teacher_logits"] = self.teacher_logits[indices]
        if self.oracle_weights is not None:
            batch["oracle_weights"] = self.oracle_weights[indices]
        return batch


@dataclass
class KDData:
    """A task's splits as tensors plus the teacher pool's names and label names."""

    task: Task
    teacher_names: list[str]
    splits: dict[str, SplitTensors] = field(default_factory=dict)

    @property
    def num_teachers(self) -> int:
        return len(self.teacher_names)

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    def to(self, device: torch.device) -> KDData:
        return KDData(self.task, self.teacher_names, {k: v.to(device) for k, v in self.splits.items()})


def _word_counts(task: Task, split: str) -> torch.Tensor:
    pairs = task.text_pairs(split)
    texts = task.texts(split)
    counts = [len(t.split()) + (len(pairs[i].split()) if pairs is not None else 0) for i, t in enumerate(texts)]
    return torch.tensor(counts, dtype=torch.long)


def build_lite_data(task: Task, pool: TeacherPool, encoder: SentenceEncoder) -> KDData:
    """Sentence embeddings + teacher logits (train and dev) for the lite student."""
    pool.check_labels(task)
    splits = {}
    for split in SPLITS:
        splits[split] = SplitTensors(
            inputs={"embeddings": encoder.encode(task, split)},
            labels=torch.as_tensor(task.labels(split), dtype=torch.long),
            lengths=_word_counts(task, split),
            teacher_logits=pool.logits(task, split) if split != "test" else None,
        )
    return KDData(task, pool.names, splits)


def build_full_data(task: Task, pool: TeacherPool, tokenizer, max_length: int = 64) -> KDData:
    """Token ids (the student's tokenizer) + teacher logits (train and dev) for the full student."""
    pool.check_labels(task)
    splits = {}
    for split in SPLITS:
        pairs = task.text_pairs(split)
        encoded = tokenizer(task.texts(split), pairs, truncation=True, max_length=max_length,
                            padding="longest", return_tensors="pt")
        inputs = {k: v.to(torch.int32) for k, v in encoded.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        splits[split] = SplitTensors(
            inputs=inputs,
            labels=torch.as_tensor(task.labels(split), dtype=torch.long),
            lengths=inputs["attention_mask"].sum(1).long(),
            teacher_logits=pool.logits(task, split) if split != "test" else None,
        )
    return KDData(task, pool.names, splits)
