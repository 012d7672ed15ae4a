"""Synthetic pools for the agent tests: a confidently wrong teacher (tests/test_agents.py) and split experts, each
right on one cluster of instances (tests/test_routing.py); and the small lite env they run in."""

from __future__ import annotations

import datasets
import gymnasium as gym
import numpy as np
import torch

import kd_gym  # noqa: F401 - registers the envs
from kd_gym.data import KDData, SplitTensors
from kd_gym.tasks import Task

BATCH, TEACHERS, LABELS, WRONG = 16, 3, 3, 2


def noisy_teacher_data(seed: int = 0, n_train: int = 2048, n_dev: int = 512, dim: int = 16) -> KDData:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (LABELS, dim))

    def split(n: int, label_noise: float, with_teachers: bool = True) -> SplitTensors:
        truth = rng.integers(0, LABELS, n)
        embeddings = centers[truth] + rng.normal(0.0, 1.0, (n, dim))
        labels = np.where(rng.random(n) < label_noise, rng.integers(0, LABELS, n), truth)
        logits = rng.normal(0.0, 1.0, (n, TEACHERS, LABELS))
        for k in range(TEACHERS):
            target = (truth + 1) % LABELS if k == WRONG else truth
            logits[np.arange(n), k, target] += 6.0 if k == WRONG else 4.0
        return SplitTensors({"embeddings": torch.tensor(embeddings, dtype=torch.float32)}, torch.tensor(labels),
                            torch.tensor(rng.integers(5, 20, n)),
                            torch.tensor(logits, dtype=torch.float32) if with_teachers else None)

    tables = {s: datasets.Dataset.from_dict({"text": ["unused"], "label": [0]}) for s in ("train", "dev", "test")}
    task = Task("synthetic", tables, ["l0", "l1", "l2"], "accuracy")
    splits = {"train": split(n_train, 0.3), "dev": split(n_dev, 0.0), "test": split(n_dev, 0.0, False)}
    return KDData(task, [f"teacher{k}" for k in range(TEACHERS)], splits)


def make_env(data: KDData, **options) -> gym.Env:
    config = {"data": data, "lite_student": "mlp", "batch_size": BATCH, "reward": "dev_loss_delta", "reward_interval": 1,
              "alpha": 0.2, "include_embedding": False,
              "gold_labels": None,
              "episode_steps": 100, "dev_subset": 256, "device": "cpu", **options}
    return gym.make("kd_gym/TeacherSelectionLite-v0", **config)

def split_experts_data(seed: int = 0, n_train: int = 2048, n_dev: int = 512, dim: int = 16) -> KDData:
    """Two clusters of 16-d embeddings, each with the same three class centres. Teacher 0 puts +5 on the true class in cluster 0
    and on the next class in cluster 1, teacher 1 the reverse, teacher 2 is noise. Only the instance's embedding
    tells which teacher to follow: each teacher is as confident everywhere. The cluster is the embedding's sign
    along ``centers[1] - centers[0]`` (they are far apart), which :func:`cluster_of` reads back."""
    rng = np.random.default_rng(seed)
    centers = np.stack([np.full(dim, -1.5), np.full(dim, 1.5)])
    classes = rng.normal(0.0, 1.0, (LABELS, dim))
    classes -= classes.mean(1, keepdims=True)  # no shift along the clusters' axis

    def split(n: int, with_teachers: bool = True) -> SplitTensors:
        cluster = rng.integers(0, 2, n)
        truth = rng.integers(0, LABELS, n)
        embeddings = centers[cluster] + classes[truth] + rng.normal(0.0, 1.0, (n, dim))
        logits = rng.normal(0.0, 0.5, (n, TEACHERS, LABELS))
        for k in range(2):
            target = np.where(cluster == k, truth, (truth + 1) % LABELS)
            logits[np.arange(n), k, target] += 5.0
        return SplitTensors({"embeddings": torch.tensor(embeddings, dtype=torch.float32)}, torch.tensor(truth),
                            torch.tensor(rng.integers(5, 20, n)),
                            torch.tensor(logits, dtype=torch.float32) if with_teachers else None)

    tables = {s: datasets.Dataset.from_dict({"text": ["unused"], "label": [0]}) for s in ("train", "dev", "test")}
    task = Task("synthetic", tables, ["l0", "l1", "l2"], "accuracy")
    splits = {"train": split(n_train), "dev": split(n_dev), "test": split(n_dev, False)}
    return KDData(task, [f"teacher{k}" for k in range(TEACHERS)], splits)


def assert_same(a, b, where: str = "state") -> None:
    """Nested dicts / lists of tensors, arrays and plain values are exactly equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, torch.as_tensor(b)), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where
