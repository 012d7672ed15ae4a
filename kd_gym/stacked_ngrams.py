"""N :class:`~kd_gym.student.NgramStudent` bags of n-grams as one batched computation: dense, lazy-AdamW or
fastText-SGD tables (:mod:`kd_gym.student_stack` says what "the same as N single students" means here)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kd_gym.sparse import (
    adamw_tensor_,
    bag_offsets,
    lazy_adamw_rows_,
    real_bag_sum,
    real_positions,
    row_gradients,
    sgd_lrs,
    sgd_rows_,
)
from kd_gym.stacked_base import StackedStudents
from kd_gym.student import NgramStudent, fused_adamw


class StackedNgramStudents(StackedStudents):
    """N independent :class:`~kd_gym.student.NgramStudent` bags of n-grams trained as one batched computation.
    Parameter blocks: ``embedding.weight`` (N, V, D), one table per student, seen as one (N * V, D) table that
    student n's ids index at an offset of n * V; ``classifier.weight`` (N, C, D), ``classifier.bias`` (N, C).

    The backward pass writes what autograd writes for the single student: the classifier's products, the masked
    mean's (``grad / count``, spread over the ids and masked), and the table's gradient accumulated row by row in
    the order of the ids (``index_add_`` into the zeroed buffer; the single student's ``nn.Embedding`` backward adds
    the same rows in the same order). A padding id (0) of student n indexes its row n * V, which stays zero as the
    single student's padding row does: its gradient terms are masked to (signed) zeros. A sparse template
    (``sparse=True``) takes :meth:`_sparse_update` instead: only the rows the batches touched are read and written.
    Options: :class:`StackedStudents`."""

    input_key = "ngram_ids"

    def __init__(self, template: NgramStudent, num_students: int, **options) -> None:
        super().__init__(template, num_students, **options)
        self.buckets, self.dim = self.template.embedding.weight.shape
        #: the template's ``sparse``: only the table rows a batch touched are read and written (kd_gym.sparse)
        self.sparse = bool(getattr(self.template, "sparse", False))
        #: the template's fastText SGD on the table rows (learning rate, updates it decays over), or None (AdamW)
        self.row_sgd = (None if getattr(self.template, "sgd_lr", None) is None
                        else (self.template.sgd_lr, self.template.sgd_steps))

    def _kept_state(self) -> tuple[list[bool], list[bool]]:
        """A sparse table needs no gradient block (its update reads the rows' gradients), and under fastText's SGD no
        moments either: at N = 256, 2 GB of table-sized buffers not allocated."""
        grads, moments = super()._kept_state()
        if getattr(self.template, "sparse", False):
            grads[0] = False
            moments[0] = getattr(self.template, "sgd_lr", None) is None  # lazy AdamW keeps the table's moments
        return grads, moments

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, masks: torch.Tensor | None = None, index: np.ndarray | None = None,
                *, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n, B, C) and representation (n, B, D) of the students ``index`` (None: all N) on ``inputs``.

        :param inputs: (n, B, L) n-gram ids, one batch per student, or (B, L) shared by all (e.g. the dev rows).
        :param masks: unused (no dropout), for the interface of :class:`StackedLiteStudents`.
        :param train: keep what :meth:`update` needs (all N students only).
        """
        students = np.arange(self.num_students) if index is None else np.asarray(index)
        n = len(students)
        ids = inputs if inputs.dim() == 3 else inputs.expand(n, *inputs.shape)
        batch, length = ids.shape[1], ids.shape[2]
        offsets = torch.as_tensor(students * self.buckets, dtype=torch.long, device=self.device).view(n, 1, 1)
        rows = (ids.long() + offsets).view(n * batch, length)  # student n's table is rows [n * V, (n + 1) * V)
        table = self.params[0].view(-1, self.dim)
        # NgramStudent.forward on n * B rows: the mean of the real ids' embeddings (a padding id indexes its
        # student's zero row), then the classifier per student
        real = (ids != 0).view(n * batch, length, 1)
        count = real.sum(1).to(table.dtype).clamp_min(1.0)
        if train and self.row_sgd is not None:  # the real positions only, as NgramStudent(sgd_lr=...) trains
            total, *positions = real_bag_sum(table, rows, real.view(rows.shape))
        else:
            total, positions = F.embedding(rows, table).sum(1), None
        representation = (total / count).view(n, batch, self.dim)
        w, b = self.params[1:] if index is None else (p[torch.as_tensor(students, device=self.device)]
                                                      for p in self.params[1:])
        with self._precision():
            logits = torch.baddbmm(b.unsqueeze(1), representation, w.transpose(1, 2))
        if train:
            self._saved = (rows, real, count, representation, positions)
        return logits.float(), representation.float()

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, index: np.ndarray | None = None, chunk: int = 512) -> torch.Tensor:
        """(n, M, C) eval logits on shared rows ``inputs`` (M, L); the sparse students' as
        ``NgramStudent.predict_logits`` computes them (each table through its classifier once), the dense students'
        as :meth:`forward`'s."""
        if not self.sparse:
            return super().predict(inputs, index, chunk)
        students = np.arange(self.num_students) if index is None else np.asarray(index)
        select = torch.as_tensor(students, device=self.device)
        tables, weights, biases = (p if index is None else p[select] for p in self.params)
        projected = torch.bmm(tables, weights.transpose(1, 2))  # (n, V, C): NgramStudent.projected_table per student
        n, buckets, classes = projected.shape
        out = []
        for i in range(0, len(inputs), chunk):  # NgramStudent.predict_logits for every student: one embedding_bag
            ids = inputs[i : i + chunk]
            real = ids != 0
            count = real.sum(1, keepdim=True).to(projected.dtype).clamp_min(1.0)
            index, _ = real_positions(ids.long(), real)  # the real positions, shared by the students
            offsets = bag_offsets(real)
            shift = torch.arange(n, device=ids.device).unsqueeze(1)  # student s: rows s * V.., bags s * M..
            total = F.embedding_bag((index + shift * buckets).view(-1), projected.reshape(-1, classes),
                                    (offsets + shift * len(index)).view(-1), mode="sum")
            out.append(total.view(n, len(ids), classes) / count + biases.unsqueeze(1))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    @torch.no_grad()
    def update(self, grad_logits: torch.Tensor) -> None:
        """One update of every student from d loss_n / d logits_n (N, B, C) of the last ``forward(..., train=True)``:
        the backward pass of the classifier, the masked mean and the embedding, per student, then the trainer's
        gradient clipping and its update rule (AdamW on the whole table, lazy AdamW or fastText's SGD on the rows
        touched: :meth:`_sparse_update`)."""
        rows, real, count, representation, positions = self._saved
        exact = self.dtype is None
        g_table, g_w, g_b = self.grads
        with self._precision():
            self._into(torch.bmm, g_w, exact, grad_logits.transpose(1, 2), representation)
            self._into(torch.sum, g_b, exact, grad_logits, 1)
            grad = torch.bmm(grad_logits, self.params[1]).float()  # d loss / d representation, (N, B, D)
        # spread over the ids, masked: a padding id's gradient would land on its student's zero row, which
        # nn.Embedding's padding_idx leaves alone
        if self.sparse:
            self._sparse_update(rows, real, grad.view(-1, self.dim) / count, positions)
            return
        grad = (grad.view(-1, self.dim) / count).unsqueeze(1).expand(-1, rows.shape[1], -1) * real  # (N * B, L, D)
        g_table.zero_()
        g_table.view(-1, self.dim).index_add_(0, rows.view(-1), grad.view(-1, self.dim))
        if self.grad_clip:
            self._clip()
        self.steps += 1
        self._adamw()

    def _sparse_update(self, rows: torch.Tensor, real: torch.Tensor, grad_sum: torch.Tensor,
                       positions: list[torch.Tensor] | None) -> None:
        """The sparse students' backward and update from d loss / d (sum of the row's embeddings) (N * B, D).
        fastText's SGD (``row_sgd``): AdamW on the classifiers (each clipped alone), then each real position's
        gradient (``positions``, kept by :meth:`forward`) times its student's rate added into its row. Lazy AdamW:
        the table's gradient as the rows touched (:func:`~kd_gym.sparse.row_gradients`, what
        ``NgramStudent(sparse=True)`` hands its optimizer), each student's gradient clipping over its own rows and
        classifier, then AdamW on the classifier and :func:`~kd_gym.sparse.lazy_adamw_rows_` on the rows."""
        table = self.params[0].view(-1, self.dim)
        if self.row_sgd is not None:  # fastText's SGD: each position's gradient added into its row, no clipping
            self._classifier_update(None)
            rates = torch.tensor(-sgd_lrs(self.row_sgd[0], self.steps, self.row_sgd[1]), dtype=table.dtype,
                                 device=self.device)
            index, bag = positions  # the forward pass's real positions (kd_gym.sparse.real_bag_sum)
            steps = grad_sum * rates.repeat_interleave(len(rows) // self.num_students).unsqueeze(1)  # (N * B, D)
            sgd_rows_(table, index, steps.index_select(0, bag))
            return
        touched, summed = row_gradients(rows, real.view(rows.shape), grad_sum, self.num_students * self.buckets)
        student = torch.div(touched, self.buckets, rounding_mode="floor")  # (U,) whose row each is, ascending
        ends = torch.bincount(student, minlength=self.num_students).cumsum(0).tolist()
        segments = list(zip([0, *ends[:-1]], ends))  # student n's rows: summed[a:b]
        table_norms = torch.stack([torch.linalg.vector_norm(summed[a:b]) for a, b in segments]) if self.grad_clip else None
        coef = self._classifier_update(table_norms)
        if coef is not None:
            summed.mul_(coef[student].unsqueeze(1))
        exp_avg, exp_avg_sq = (moment[0].view(-1, self.dim) for moment in self._moments)
        lazy_adamw_rows_(table, exp_avg, exp_avg_sq, touched, summed,
                         [(a, b, int(t)) for (a, b), t in zip(segments, self.steps)], lr=self.lr,
                         weight_decay=self.weight_decay, betas=self.betas, eps=self.eps)

    def _classifier_update(self, table_norms: torch.Tensor | None) -> torch.Tensor | None:
        """Each student's gradient clipping (``clip_grad_norm_`` over its table rows' norm ``table_norms`` (N,), where
        given, and its classifier's), one more step, and AdamW on the classifier. Returns the clipping coefficients
        (N,) the table rows are still to be scaled by, or None where nothing is scaled."""
        # clip_grad_norm_ per student: its rows' norm, its classifier's, the norm of those
        coef = self._clip(self.grads[1:], table_norms) if self.grad_clip else None
        self.steps += 1
        if fused_adamw(self.device):
            self._fused_adamw()
        else:  # torch.optim.AdamW's single-tensor update per student (LazyAdamW's arithmetic without the kernel)
            options = {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas, "eps": self.eps}
            for i, t in enumerate(self.steps.tolist()):
                for p, g, m, v in zip(*(views[1:] for views in (self.params, self.grads, *self._moments))):
                    adamw_tensor_(p[i], g[i], m[i], v[i], float(t), **options)
        return coef
