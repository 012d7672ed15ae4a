"""Shared helpers of the env tests: the tiny env's sizes, a maker, random actions, comparisons."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import kd_gym

B, K, C = 8, 3, 3  # tiny_env_kwargs: batch_size 8, three teachers, three labels
P = 4  # teacher_features columns: teacher_ce, teacher_entropy, teacher_correct, teacher_student_kl
S_BASE = 5  # instance_features columns: teacher_agreement, student_ce, student_entropy, length, labelled
D_EMBED = 32  # the tiny encoder's hidden size: the embedding columns a lite env appends by default


def instance_size(env_id: str) -> int:
    """S of an env with the default options: the lite env appends the instance's embedding, the full env has none."""
    return S_BASE + (D_EMBED if "Lite" in env_id else 0)
OBS_KEYS = {"teacher_features", "instance_features", "teacher_logits", "student_logits"}
LR = {"kd_gym/TeacherSelection-v0": 3e-3, "kd_gym/TeacherSelectionLite-v0": 1e-2}  # fast enough to move dev
ENV_IDS = pytest.mark.parametrize("env_id", kd_gym.ENV_IDS)
ACTION_TYPES = pytest.mark.parametrize("action_type", ["weights", "select"])
BUILTIN_REWARDS = ["dev_delta", "dev_loss_delta", "neg_ce", "neg_ce_kd"]


def make(env_id: str, env_kwargs: dict, **overrides) -> gym.Env:
    return gym.make(env_id, **{**env_kwargs, **overrides})


def weights_actions(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((B, K)).astype(np.float32) for _ in range(n)]


def student_parameters(env: gym.Env) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in env.unwrapped.trainer.model.named_parameters()}


def assert_obs_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() == OBS_KEYS
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
