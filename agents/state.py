"""The per-(instance, teacher) state of RL-KD, shared by REINFORCE and the SB3 adapter's teacher view.

For teacher k of instance i: ``s_ik = [shared features of i | teacher k's own features | softmax(teacher_logits[i, k]
/ T) | softmax(student_logits[i])]``. The shared columns are every feature that is not per-teacher
(``teacher_agreement``, ``student_ce``, ``student_entropy``, ``length`` and, when the env adds it, the student's
representation); teacher k's columns are ``teacher_ce``, ``teacher_entropy``, ``teacher_correct`` and
``teacher_student_kl`` (names in ``env.unwrapped.feature_names``).
"""

from __future__ import annotations

import numpy as np

PER_TEACHER_STATS = ("teacher_ce", "teacher_entropy", "teacher_correct", "teacher_student_kl")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


class PerTeacherState:
    """Builds ``s_ik`` (see the module docstring) from the env's observation.

    :param env: the unwrapped TeacherSelection env (for ``feature_names``, ``teacher_names``, temperature).
    """

    def __init__(self, env) -> None:
        names, teachers = env.feature_names, env.teacher_names
        # (P, K) column indices of the per-teacher stats; the shared columns are all the others.
        self.teacher_columns = np.array([[names.index(f"{stat}[{t}]") for t in teachers] for stat in PER_TEACHER_STATS])
        self.shared_columns = np.array(sorted(set(range(len(names))) - set(self.teacher_columns.ravel().tolist())))
        self.temperature = float(env.config["temperature"])
        self.num_teachers = len(teachers)
        self.size = len(self.shared_columns) + len(PER_TEACHER_STATS) + 2 * env.num_labels

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, K, size) float64 states."""
        features = np.asarray(obs["features"], dtype=np.float64)
        k = self.num_teachers
        shared = np.repeat(features[:, None, self.shared_columns], k, axis=1)  # (B, K, S)
        own = features[:, self.teacher_columns].transpose(0, 2, 1)  # (B, K, P)
        teacher_probs = _softmax(np.asarray(obs["teacher_logits"], dtype=np.float64) / self.temperature)
        student_probs = np.repeat(_softmax(np.asarray(obs["student_logits"], dtype=np.float64))[:, None], k, axis=1)
        return np.concatenate([shared, own, teacher_probs, student_probs], axis=-1)
