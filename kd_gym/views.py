"""Per-instance views of a TeacherSelection observation: one flat row per decision, for policies that take one
vector in and give one vector out (the per-instance env :mod:`kd_gym.routing`, the SB3 adapter, REINFORCE).

A ``Dict`` observation of a batch of B instances (``teacher_features`` (B, K, P), ``instance_features`` (B, S),
``teacher_logits`` (B, K, C), ``student_logits`` (B, C)) becomes, per view:

- ``"router"`` (:class:`LabelFreeView`): (B, S' + K * C), what each instance shows without its gold label;
- ``"instance"`` (:class:`InstanceView`): (B, S + K * P + K * C + C), everything the observation says about it;
- ``"teacher"`` (:class:`PerTeacherState`): (B, K, S + P + 2C), RL-KD's state of each (instance, teacher) pair.

Leading axes before B (a vector env's N students) are kept.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from kd_gym.features import FEATURE_BOUND, GOLD_INSTANCE_FEATURES

VIEWS = ("router", "instance", "teacher")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    z /= z.sum(-1, keepdims=True)
    return z


class PerTeacherState:
    """RL-KD's state of teacher k on instance i: ``s_ik = [instance_features[i] | teacher_features[i, k] |
    softmax(teacher_logits[i, k] / T) | softmax(student_logits[i])]``: what belongs to the instance, what is known
    about teacher k on it, teacher k's softened prediction and the student's prediction.

    :param observation_space: the env's ``Dict`` observation space (for the sizes S, P, C).
    :param temperature: the env's KD temperature T (``env.unwrapped.config.temperature``).
    """

    def __init__(self, observation_space: gym.spaces.Dict, temperature: float) -> None:
        _, k, p = observation_space["teacher_features"].shape
        s = observation_space["instance_features"].shape[1]
        c = observation_space["student_logits"].shape[1]
        self.temperature = float(temperature)
        self.num_teachers = k
        self.size = s + p + 2 * c
        #: (S, P, C): the column blocks of ``s_ik`` are S instance features, P teacher features, C + C probabilities
        self.layout = (s, p, c)
        #: every column lies in [-bound, bound]: features in +-50, probabilities in [0, 1]
        self.bound = FEATURE_BOUND

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(..., B, K, size) float32 states."""
        instance, own = obs["instance_features"], obs["teacher_features"]
        *lead, b, k, p = own.shape
        s, c = instance.shape[-1], obs["student_logits"].shape[-1]
        states = np.empty((*lead, b, k, s + p + 2 * c), dtype=np.float32)
        states[..., :s] = instance[..., None, :]
        states[..., s:s + p] = own
        states[..., s + p:s + p + c] = _softmax(obs["teacher_logits"] / np.float32(self.temperature))
        states[..., s + p + c:] = _softmax(obs["student_logits"])[..., None, :]
        return states

    def tensor(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        """The same states as a float32 tensor (B, K, size)."""
        return torch.from_numpy(self(obs))


class LabelFreeView:
    """What an instance shows without its gold label, one row per instance: its label-free instance features
    (every column but those that use the gold label or say whether it is there; the sentence embedding or the
    student's representation when the observation has them) and every teacher's log-probabilities (T = 1).

    A policy fitted on the labelled instances reads the same columns, with the same meaning, on the transfer rows.

    :param instance_feature_names: the env's ``instance_feature_names``.
    :param num_teachers: K.  :param num_labels: C.
    """

    SKIP = (*GOLD_INSTANCE_FEATURES, "labelled")
    """instance features left out: a policy fitted on labelled rows would read them as a constant there and misread
    them on the transfer rows"""

    def __init__(self, instance_feature_names: list[str], num_teachers: int, num_labels: int) -> None:
        self.columns = np.array([i for i, name in enumerate(instance_feature_names) if name not in self.SKIP])
        # the same columns as runs of consecutive ones (slices): a copy of each, with no per-element indexing
        breaks = np.flatnonzero(np.diff(self.columns) != 1) + 1
        self._runs = [slice(int(run[0]), int(run[-1]) + 1) for run in np.split(self.columns, breaks)]
        self.size = len(self.columns) + num_teachers * num_labels
        #: every column lies in [-bound, bound]: features in +-50; log-probabilities of logits clipped to +-50 in
        #: [-(100 + log C), 0]
        self.bound = 2 * FEATURE_BOUND + math.log(max(num_labels, 2))

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(..., B, size) float32 views (log-softmax by torch, so the numbers match :meth:`tensor`'s)."""
        return self.tensor(obs).numpy()

    def tensor(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        """(..., B, size) float32 views as a tensor."""
        log_probs = torch.log_softmax(torch.from_numpy(obs["teacher_logits"]), dim=-1).flatten(-2)
        instance = torch.from_numpy(obs["instance_features"])
        return torch.cat([*(instance[..., run] for run in self._runs), log_probs], dim=-1)


class InstanceView:
    """Everything the observation says about instance i, one row per instance: ``[instance_features[i] |
    teacher_features[i] | teacher_logits[i] | student_logits[i]]`` flattened (every column in [-50, 50]).

    :param observation_space: the env's ``Dict`` observation space.
    """

    def __init__(self, observation_space: gym.spaces.Dict) -> None:
        _, k, p = observation_space["teacher_features"].shape
        s, c = observation_space["instance_features"].shape[1], observation_space["student_logits"].shape[1]
        self.size = s + k * p + k * c + c
        self.bound = FEATURE_BOUND

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(..., B, size) float32 rows."""
        lead = obs["instance_features"].shape[:-1]
        return np.concatenate([obs["instance_features"], obs["teacher_features"].reshape(*lead, -1),
                               obs["teacher_logits"].reshape(*lead, -1), obs["student_logits"]],
                              axis=-1).astype(np.float32)
