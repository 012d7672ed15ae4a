"""The network of the REINFORCE teacher selector (:mod:`agents.reinforce`): the paper's shared logistic unit with a
bias per teacher, and the optional per-teacher router on the instance's view."""

from __future__ import annotations

import torch
from torch import nn


class TeacherSelector(nn.Module):
    """``sigmoid(w . s_k + b_k)``: one logistic unit shared by the K teachers plus a bias per teacher (the paper);
    with ``routed``, plus ``u_k . r``: teacher k's own weights on the instance's view ``r`` (:meth:`view`).

    Why ``routed``: in the shared unit the instance's features enter every teacher's logit through the same
    weights, so they move all keep probabilities alike and cannot say *which* teacher suits this instance; only
    each teacher's own columns of ``s_k`` (its prediction, entropy, ...) can. Per-teacher weights on what is known
    about the instance (its features, every teacher's prediction, the student's) let the selector route instances.

    :param input_size: size d of ``s_k``.  :param num_teachers: K.
    :param layout: ``(S, P, C)`` of :class:`~agents.state.PerTeacherState` (``routed`` needs it).
    :param routed: add the per-teacher routing term.  :param hidden: routing term: one hidden layer of this many
        tanh units (0: linear).
    """

    def __init__(self, input_size: int, num_teachers: int, *, layout: tuple[int, int, int] | None = None,
                 routed: bool = False, hidden: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size, 1, bias=False)
        self.teacher_bias = nn.Parameter(torch.zeros(num_teachers))
        self.layout = layout
        self.router: nn.Module | None = None
        if routed:
            if layout is None:
                raise ValueError("a routed selector needs the state's layout (S, P, C)")
            s, _, c = layout
            view = s + (num_teachers + 1) * c
            self.router = (nn.Linear(view, num_teachers, bias=False) if hidden == 0 else
                           nn.Sequential(nn.Linear(view, hidden), nn.Tanh(), nn.Linear(hidden, num_teachers, bias=False)))

    def view(self, states: torch.Tensor) -> torch.Tensor:
        """The instance's view ``r`` (..., S + (K + 1) C) from states (..., K, d): its features, every teacher's
        softened prediction and the student's prediction."""
        s, p, c = self.layout
        teachers = states[..., s + p:s + p + c].flatten(-2)
        return torch.cat([states[..., 0, :s], teachers, states[..., 0, s + p + c:]], dim=-1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Keep logits (..., K) for states (..., K, d)."""
        logits = self.linear(states).squeeze(-1) + self.teacher_bias
        if self.router is not None:
            logits = logits + self.router(self.view(states))
        return logits
