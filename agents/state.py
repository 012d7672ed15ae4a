"""The per-(instance, teacher) state of RL-KD, shared by REINFORCE and the SB3 adapter's teacher view.

For teacher k of instance i: ``s_ik = [instance_features[i] | teacher_features[i, k] | softmax(teacher_logits[i, k]
/ T) | softmax(student_logits[i])]``, read straight from the observation's shapes: what belongs to the instance,
what is known about teacher k on it, teacher k's softened prediction and the student's prediction.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from kd_gym.features import GOLD_INSTANCE_FEATURES


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    z /= z.sum(-1, keepdims=True)
    return z


class PerTeacherState:
    """Builds ``s_ik`` (see the module docstring) from the env's observation.

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

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, K, size) float32 states."""
        instance, own = obs["instance_features"], obs["teacher_features"]
        b, k, p = own.shape
        s, c = instance.shape[1], obs["student_logits"].shape[1]
        states = np.empty((b, k, s + p + 2 * c), dtype=np.float32)
        states[..., :s] = instance[:, None]
        states[..., s:s + p] = own
        states[..., s + p:s + p + c] = _softmax(obs["teacher_logits"] / np.float32(self.temperature))
        states[..., s + p + c:] = _softmax(obs["student_logits"])[:, None]
        return states

    def tensor(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        """The same states as a float32 tensor (B, K, size)."""
        return torch.from_numpy(self(obs))


class LabelFreeView:
    """What an instance shows without its gold label, one row per instance: its label-free instance features
    (every column but those that use the gold label or say whether it is there; the sentence embedding or the
    student's representation when the observation has them) and every teacher's log-probabilities (T = 1).

    The view of the gold-likelihood router (:mod:`agents.gold_router`) and of the SB3 adapter's ``view="router"``: a
    policy fitted on the labelled instances reads the same columns, with the same meaning, on the transfer rows.

    :param instance_feature_names: the env's ``instance_feature_names``.
    :param num_teachers: K.  :param num_labels: C.
    """

    SKIP = (*GOLD_INSTANCE_FEATURES, "labelled")
    """instance features left out: a policy fitted on labelled rows would read them as a constant there and misread
    them on the transfer rows"""

    def __init__(self, instance_feature_names: list[str], num_teachers: int, num_labels: int) -> None:
        self.columns = np.array([i for i, name in enumerate(instance_feature_names) if name not in self.SKIP])
        self.size = len(self.columns) + num_teachers * num_labels

    def __call__(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        """(B, size) float32 views."""
        log_probs = torch.log_softmax(torch.from_numpy(obs["teacher_logits"]), dim=-1).flatten(1)
        return torch.cat([torch.from_numpy(obs["instance_features"][:, self.columns]), log_probs], dim=1)
