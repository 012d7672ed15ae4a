"""The tensors an environment trains on: student inputs, gold labels and cached teacher logits, per split.

Everything is prepared once, up front (:mod:`kd_gym.prepare.tensors`), and kept on the training device, so a step
only indexes tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kd_gym.tasks import Task, teacher_metrics


@dataclass
class SplitTensors:
    """One split, as tensors with N rows.

    :param inputs: the student's inputs: ``{"embeddings": (N, D)}`` (lite) or ``{"input_ids", "attention_mask",
        ["token_type_ids"]}: (N, L)`` (full), padded to the longest row.
    :param labels: (N,) int64 gold labels.
    :param lengths: (N,) int64 number of tokens (or of words, for the lite student).
    :param teacher_logits: (N, K, C) float32, or None where not needed (the test split).
    :param oracle_weights: (N, K) the scenario's oracle weighting, where it has one (see kd_gym.scenarios).
    :param labelled: (N,) bool, which rows keep their gold label for training (None: all; see kd_gym.regime).
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    lengths: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    oracle_weights: torch.Tensor | None = None
    labelled: torch.Tensor | None = None
    _host_lengths: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> SplitTensors:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return SplitTensors({k: v.to(device) for k, v in self.inputs.items()}, move(self.labels),
                            move(self.lengths), move(self.teacher_logits), move(self.oracle_weights),
                            move(self.labelled))

    def select(self, rows: np.ndarray) -> SplitTensors:
        """The rows ``rows`` (host array of indices) as a new SplitTensors."""
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.labels.device)
        pick = (lambda t: None if t is None else t[index])  # noqa: E731
        return SplitTensors({k: v[index] for k, v in self.inputs.items()}, self.labels[index], self.lengths[index],
                            pick(self.teacher_logits), pick(self.oracle_weights), pick(self.labelled))

    def batch(self, indices: np.ndarray | slice, inputs: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """The rows ``indices`` (host array, or a slice: then views, no copy) as a batch dict on the split's device.

        Token inputs are trimmed to the longest row of the batch, a width read from a host copy of the lengths
        (no device-to-host copy).

        :param inputs: the names of the inputs to gather (None: all of them), e.g. the student's ``input_names``.
        """
        if self._host_lengths is None:
            self._host_lengths = self.lengths.cpu().numpy()
        device_indices = indices if isinstance(indices, slice) else torch.as_tensor(indices, device=self.labels.device)
        names = self.inputs if inputs is None else inputs
        inputs = {k: self.inputs[k][device_indices] for k in names}
        if "attention_mask" in inputs:
            width = int(self._host_lengths[indices].max())
            inputs = {k: v[:, :width].long() for k, v in inputs.items()}
        indices = device_indices
        batch = {"inputs": inputs, "labels": self.labels[indices], "lengths": self.lengths[indices]}
        if self.teacher_logits is not None:
            batch["teacher_logits"] = self.teacher_logits[indices]
        if self.oracle_weights is not None:
            batch["oracle_weights"] = self.oracle_weights[indices]
        if self.labelled is not None:
            batch["labelled"] = self.labelled[indices]
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

    def teacher_metrics(self, split: str = "dev") -> list[float]:
        """Each teacher's primary task metric on ``split`` (from the cached logits), in pool order."""
        tensors = self.splits[split]
        if tensors.teacher_logits is None:
            raise ValueError(f"split {split!r} has no teacher logits (teachers are scored on train and dev only)")
        return [m["metric"] for m in teacher_metrics(self.task, tensors.teacher_logits, tensors.labels)]

    def to(self, device: torch.device) -> KDData:
        return KDData(self.task, self.teacher_names, {k: v.to(device) for k, v in self.splits.items()})
