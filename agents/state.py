"""The per-instance states agents read, defined in :mod:`kd_gym.views` (the per-instance env shows the same rows):
RL-KD's per-(instance, teacher) state ``s_ik`` (:class:`PerTeacherState`, REINFORCE-paper and the SB3 teacher view)
and the label-free view of an instance (:class:`LabelFreeView`, the gold router's and the SB3 router view's).

For teacher k of instance i: ``s_ik = [instance_features[i] | teacher_features[i, k] | softmax(teacher_logits[i, k]
/ T) | softmax(student_logits[i])]``, read straight from the observation's shapes.
"""

from __future__ import annotations

import numpy as np
import torch

from kd_gym import views
from kd_gym.views import PerTeacherState

__all__ = ["LabelFreeView", "PerTeacherState"]


class LabelFreeView(views.LabelFreeView):
    """:class:`kd_gym.views.LabelFreeView` whose call gives a float32 tensor (B, size), as agents' networks take."""

    def __call__(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        return self.tensor(obs)
