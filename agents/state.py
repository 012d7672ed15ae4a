"""The per-(instance, teacher) state of RL-KD, shared by REINFORCE and the SB3 adapter's teacher view.

For teacher k of instance i: ``s_ik = [instance_features[i] | teacher_features[i, k] | softmax(teacher_logits[i, k]
/ T) | softmax(student_logits[i])]``, read straight from the observation's shapes: what belongs to the instance,
what is known about teacher k on it, teacher k's softened prediction and the student's prediction.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


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

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, K, size) float64 states."""
        k = self.num_teachers
        instance = np.asarray(obs["instance_features"], dtype=np.float64)
        shared = np.repeat(instance[:, None], k, axis=1)  # (B, K, S)
        own = np.asarray(obs["teacher_features"], dtype=np.float64)  # (B, K, P)
        teacher_probs = _softmax(np.asarray(obs["teacher_logits"], dtype=np.float64) / self.temperature)
        student_probs = np.repeat(_softmax(np.asarray(obs["student_logits"], dtype=np.float64))[:, None], k, axis=1)
        return np.concatenate([shared, own, teacher_probs, student_probs], axis=-1)
