"""N :class:`~kd_gym.student.LiteStudent` MLPs as one batched computation (:mod:`kd_gym.student_stack` says what
"the same as N single students" means here)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_gym.stacked_base import StackedStudents
from kd_gym.student import LiteStudent


class StackedLiteStudents(StackedStudents):
    """N independent :class:`~kd_gym.student.LiteStudent` MLPs trained as one batched computation. Parameter blocks:
    ``body.0.weight`` (N, H, D), ``body.0.bias`` (N, H), ``classifier.weight`` (N, C, H), ``classifier.bias``
    (N, C) (without a hidden layer only the classifier's). Options: :class:`StackedStudents`."""

    input_key = "embeddings"

    def __init__(self, template: LiteStudent, num_students: int, **options) -> None:
        super().__init__(template, num_students, **options)
        self.hidden = isinstance(self.template.body, nn.Sequential)
        dropouts = [m for m in self.template.modules() if isinstance(m, nn.Dropout)]
        self.dropout = dropouts[0].p if dropouts else 0.0

    def dropout_masks(self, batch_size: int, draw: np.ndarray | None = None) -> torch.Tensor | None:
        """(N, B, H) scaled dropout masks (``bernoulli(1 - p) / (1 - p)``), or None without dropout.

        :param draw: (N,) bool, the students that draw a new mask from their generator (None: all); the others
            keep the mask of the last call (their current batch's, so its forward pass can be redone).
        """
        if not self.hidden or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        shape = (self.num_students, batch_size, self.params[0].shape[1])
        if self._masks is None or self._masks.shape != shape:
            if draw is not None and not draw.all():
                raise RuntimeError("the first dropout_masks() call of a batch size must draw every student's mask")
            self._masks = torch.empty(shape, device=self.device)
        masks = self._masks  # a buffer reused by every call: the last forward pass has consumed the old masks
        rows = range(self.num_students) if draw is None or draw.all() else np.flatnonzero(draw)
        for n in rows:  # each student's stream, in the order and shape nn.Dropout draws it
            masks[n].bernoulli_(keep, generator=self._mask_generator(int(n)))
        if len(rows) == self.num_students:
            masks.div_(keep)
        else:
            for n in rows:
                masks[n].div_(keep)
        return masks

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, masks: torch.Tensor | None = None, index: np.ndarray | None = None,
                *, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n, B, C) and representation (n, B, H) of the students ``index`` (None: all N) on ``inputs``.

        No autograd graph is built: :meth:`update` back-propagates by hand through the last ``train=True`` pass.

        :param inputs: (n, B, D) one batch per student, or (B, D) shared by all (e.g. the dev rows).
        :param masks: (n, B, H) from :meth:`dropout_masks` (train mode), or None (eval mode: no dropout).
        :param train: keep what :meth:`update` needs (all N students only).
        """
        params = self.params if index is None else [p[torch.as_tensor(index, device=self.device)] for p in self.params]
        n = params[0].shape[0]
        x = inputs if inputs.dim() == 3 else inputs.expand(n, *inputs.shape)
        pre = None
        with self._precision():
            if self.hidden:
                w1, b1, w2, b2 = params
                pre = torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2))  # F.linear per student
                representation = F.gelu(pre)
                if masks is not None:
                    representation = representation * masks
            else:
                representation, (w2, b2) = x, params
            logits = torch.baddbmm(b2.unsqueeze(1), representation, w2.transpose(1, 2))
        if train:
            self._saved = (x, pre, masks, representation)
        return logits.float(), representation.float()

    @torch.no_grad()
    def update(self, grad_logits: torch.Tensor) -> None:
        """One AdamW update of every student from the gradient of its loss w.r.t. its logits of the last
        ``forward(..., train=True)``: the backward pass of ``nn.Linear``, ``nn.GELU`` and ``nn.Dropout``, per student
        (the products autograd computes for them, written straight into the flat gradient buffer), then the
        trainer's gradient clipping and AdamW.

        :param grad_logits: (N, B, C) d loss_n / d logits_n, e.g. ``torch.autograd.grad(loss.sum(), logits)`` for
            per-student losses (N,) (student n's loss depends on its own logits only).
        """
        x, pre, masks, representation = self._saved
        exact = self.dtype is None  # fp32: the products land in the buffer; under autocast they are cast into it
        with self._precision():
            w2 = self.params[-2]
            g_w2, g_b2 = self.grads[-2:]
            self._into(torch.bmm, g_w2, exact, grad_logits.transpose(1, 2), representation)
            self._into(torch.sum, g_b2, exact, grad_logits, 1)
            if self.hidden:
                grad = torch.bmm(grad_logits, w2)
                if masks is not None:
                    grad = grad * masks
                grad = torch.ops.aten.gelu_backward(grad, pre)
                g_w1, g_b1 = self.grads[:2]
                self._into(torch.bmm, g_w1, exact, grad.transpose(1, 2), x)
                self._into(torch.sum, g_b1, exact, grad, 1)
        if self.grad_clip:
            self._clip()
        self.steps += 1
        self._adamw()
