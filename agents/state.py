"""The per-instance states agents read, defined in :mod:`kd_gym.views` (the per-instance env shows the same rows):
RL-KD's per-(instance, teacher) state ``s_ik`` (:class:`PerTeacherState`, REINFORCE-paper and the SB3 teacher view)
and the label-free view of an instance (:class:`LabelFreeView`, the gold router's and the SB3 router view's); and
the running standardisation those two agents apply to them (:class:`Standardiser`).

For teacher k of instance i: ``s_ik = [instance_features[i] | teacher_features[i, k] | softmax(teacher_logits[i, k]
/ T) | softmax(student_logits[i])]``, read straight from the observation's shapes.
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

from kd_gym import views
from kd_gym.views import PerTeacherState

__all__ = ["LabelFreeView", "PerTeacherState", "Standardiser"]


class LabelFreeView(views.LabelFreeView):
    """:class:`kd_gym.views.LabelFreeView` whose call gives a float32 tensor (B, size), as agents' networks take."""

    def __call__(self, obs: dict[str, np.ndarray]) -> torch.Tensor:
        return self.tensor(obs)


class Standardiser:
    """Rows standardised with a running mean / std of every row folded in (SB3's ``RunningMeanStd``, float64), applied
    as one fused multiply-add ``x * (1 / std) + (-mean / std)``, clipped to ``[-clip, clip]``.

    :param size: the columns of a row.  :param clip: the bound of a standardised value.
    """

    def __init__(self, size: int, clip: float = 5.0) -> None:
        self.stats = RunningMeanStd(shape=(size,))
        self.clip = clip
        self._set_scale()

    def update(self, rows: torch.Tensor) -> None:
        """Fold ``rows`` (n, size) into the running moments."""
        rows = rows.to(torch.float64, copy=True)
        mean = rows.mean(dim=0)
        var = rows.sub_(mean).square_().mean(dim=0)  # in place on this call's copy (torch.var_mean: 3x slower here)
        self.stats.update_from_moments(mean.numpy(), var.numpy(), rows.shape[0])
        self._set_scale()

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Standardised, clipped ``rows`` (..., size) float32."""
        scale, shift = self._scale
        return torch.addcmul(shift, rows, scale).clamp_(-self.clip, self.clip)

    def _set_scale(self) -> None:
        std = np.sqrt(self.stats.var + 1e-8)
        self._scale = (torch.as_tensor(1.0 / std, dtype=torch.float32),
                       torch.as_tensor(-self.stats.mean / std, dtype=torch.float32))

    def state_dict(self) -> dict:
        return {"mean": self.stats.mean, "var": self.stats.var, "count": self.stats.count}

    def load_state_dict(self, state: dict) -> None:
        self.stats.mean, self.stats.var = np.asarray(state["mean"]), np.asarray(state["var"])
        self.stats.count = float(state["count"])
        self._set_scale()
