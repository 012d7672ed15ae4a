"""Scenarios: transformations of a teacher pool's cached logits that set a known decision problem.

Each scenario documents its oracle weighting (the per-instance weights one would choose knowing how the pool was
made); where one exists, ``oracle_weights`` gives it per instance, so benchmarks can report it as a reference row.

- ``default``: the pool as built; its oracle is the gold-label one of :mod:`kd_gym.regime` (set by the env).
- ``noisy-teacher``: one extra teacher that is wrong on purpose: the pool's best teacher (by dev metric) with its
  labels rotated (class c is reported as class c+1 mod C), so it is as confident as the best teacher and always
  wrong. Oracle: equal weights over the original teachers, 0 on the noisy one.
- ``specialists``: one teacher per slice of the data (tweet topic groups): on its slice a specialist reports the
  pool's best teacher's logits, elsewhere the pool's weakest teacher's. No fixed weighting matches per-instance
  choice. Oracle: all weight on the specialist of the instance's slice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kd_gym.data import KDData, SplitTensors

SPECIALIST_SLICES: dict[str, tuple[str, ...]] = {
    "airline": ("airline",),
    "deflategate": ("deflategate",),
    "tech": ("apple", "self-driving"),
    "other": ("other",),
}


def _replace(data: KDData, names: list[str], logits_fn, oracle_fn) -> KDData:
    splits = {}
    for name, split in data.splits.items():
        if split.teacher_logits is None:
            splits[name] = split
            continue
        logits = logits_fn(name, split)
        splits[name] = SplitTensors(split.inputs, split.labels, split.lengths, logits,
                                    oracle_weights=oracle_fn(name, split, logits))
    return KDData(data.task, names, splits)


def default(data: KDData) -> KDData:
    """The pool as built; no oracle."""
    return data


def noisy_teacher(data: KDData) -> KDData:
    """Add the best teacher with rotated labels; oracle: uniform over the original teachers."""
    best = int(np.argmax(data.teacher_metrics("dev")))
    k = data.num_teachers
    names = [*data.teacher_names, f"noisy-{data.teacher_names[best]}"]

    def logits_fn(_, split: SplitTensors) -> torch.Tensor:
        noisy = split.teacher_logits[:, best].roll(shifts=1, dims=-1)  # class c's score becomes class c+1's
        return torch.cat([split.teacher_logits, noisy.unsqueeze(1)], dim=1)

    def oracle_fn(_, split: SplitTensors, logits: torch.Tensor) -> torch.Tensor:
        weights = torch.ones(len(split), k + 1, device=logits.device)
        weights[:, k] = 0.0
        return weights

    return _replace(data, names, logits_fn, oracle_fn)


def specialists(data: KDData) -> KDData:
    """One specialist per topic group: best teacher on its slice, weakest elsewhere; oracle: the slice's specialist."""
    if "topic" not in data.task.splits["train"].column_names:
        raise ValueError(f"scenario 'specialists' needs a 'topic' column (task 'tweets' has one); "
                         f"task {data.task.name!r} has columns {data.task.splits['train'].column_names}")
    metrics = data.teacher_metrics("dev")
    best, worst = int(np.argmax(metrics)), int(np.argmin(metrics))
    names = [f"specialist-{s}" for s in SPECIALIST_SLICES]

    def slice_masks(split_name: str, device) -> torch.Tensor:
        topics = np.asarray(data.task.splits[split_name]["topic"])
        masks = np.stack([np.isin(topics, group) for group in SPECIALIST_SLICES.values()], axis=1)
        return torch.as_tensor(masks, device=device)  # (N, S)

    def logits_fn(split_name: str, split: SplitTensors) -> torch.Tensor:
        masks = slice_masks(split_name, split.labels.device).unsqueeze(-1)  # (N, S, 1)
        strong = split.teacher_logits[:, best].unsqueeze(1)
        weak = split.teacher_logits[:, worst].unsqueeze(1)
        return torch.where(masks, strong, weak)

    def oracle_fn(split_name: str, split: SplitTensors, logits: torch.Tensor) -> torch.Tensor:
        return slice_masks(split_name, logits.device).float()

    return _replace(data, names, logits_fn, oracle_fn)


SCENARIOS: dict[str, Callable[[KDData], KDData]] = {
    "default": default,
    "noisy-teacher": noisy_teacher,
    "specialists": specialists,
}


def apply_scenario(name: str, data: KDData) -> KDData:
    """``data`` with scenario ``name`` applied."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; available: {sorted(SCENARIOS)}")
    return SCENARIOS[name](data)
