"""Sparse updates of an n-gram table, as fastText makes them: a step reads and writes only the rows its batch touched.

A batch of 32 tweets touches about 1,500 of the n-gram student's 16,384 table rows. A dense optimizer step
still makes about a dozen passes over the whole table (zero-fill, gradient norm, AdamW's reads and writes of
gradient, weights and both moments); here a step costs what the batch touched. One set of functions serves the single
student (:class:`~kd_gym.student.NgramStudent` with ``sparse=True`` under :class:`LazyAdamW`) and the stacked students
of the vector env (:class:`~kd_gym.stacked_ngrams.StackedNgramStudents`), so that both compute the same numbers:

- :func:`row_gradients`: the table's gradient as (touched rows, their summed gradients), accumulated position by
  position in the batch's order, as ``nn.Embedding``'s dense backward accumulates it;
- :func:`lazy_adamw_rows_`: AdamW on those rows only (the *lazy* Adam of TensorFlow's ``LazyAdam`` and PyTorch's
  ``SparseAdam``, with AdamW's decoupled weight decay): a row's moments and its weight decay advance on the steps
  that touch it. The bias correction uses the student's step count, as AdamW's does.

Untouched rows are left exactly as they are, so this is not AdamW's arithmetic on them: a dense AdamW step keeps
moving a row by its old momentum and decays it on every step. docs/env.md gives the numbers of all three rules.

fastText's own rule is the third choice (``ngram_update="sgd"``): plain SGD on the table rows with a learning rate
that decays linearly over the run (:func:`sgd_lr`), each position's gradient added straight into its row
(:func:`real_positions`, :func:`sgd_rows_`): no moments to gather and write back, no search for the distinct
rows. The classifier keeps AdamW. On a CPU every rule's numbers are reproducible and the single and stacked
students' identical; on CUDA ``index_add_`` adds a row's duplicates in no fixed order.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def fused_adamw(device: torch.device) -> bool:
    """True where PyTorch has a fused AdamW kernel for ``device`` (CUDA; the CPU from torch 2.4): one pass over each
    parameter instead of a dozen elementwise ones. The trainer, the vector env's stacked students
    (:mod:`kd_gym.stacked_base`) and the sparse student's rows all use it there, so that their students stay
    identical."""
    return _fused_adamw_for(device.type)


@functools.cache
def _fused_adamw_for(device_type: str) -> bool:
    if not hasattr(torch, "_fused_adamw_"):
        return False
    if device_type == "cuda":
        return True
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return device_type == "cpu" and version >= (2, 4)


def fused_adamw_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                 exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], *, lr: float, weight_decay: float,
                 betas: tuple[float, float], eps: float) -> None:
    """One call of PyTorch's fused AdamW kernel (what ``torch.optim.AdamW(fused=True).step()`` runs) on tensors of
    its own choosing, each with its step count (already incremented) in ``steps``: each tensor is updated as one
    parameter of its own."""
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr, beta1=betas[0],
                        beta2=betas[1], weight_decay=weight_decay, eps=eps, maximize=False, grad_scale=None,
                        found_inf=None)


def row_gradients(rows: torch.Tensor, real: torch.Tensor, grad_sum: torch.Tensor, num_rows: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of an embedding table under bags of rows summed: each real position of bag b receives bag b's
    gradient, and a row's gradient is the sum of its positions', accumulated in the order of the positions (bag by
    bag, left to right), as ``nn.Embedding``'s dense backward accumulates it.

    :param rows: (B, L) the table row each position looked up.
    :param real: (B, L) bool, the positions that count (False: padding, which gets no gradient, as ``padding_idx``).
    :param grad_sum: (B, D) the gradient of the loss w.r.t. each bag's sum.
    :param num_rows: the table's rows R: the distinct rows are found by counting into R bins (no sort).
    :return: ``touched`` (U,) the distinct rows touched, ascending, and ``summed`` (U, D) their gradients.
    """
    positions = real.nonzero()  # (M, 2) bag and position of each real position, in row-major order
    ids = rows[real]  # (M,) in the same order
    touched = (torch.bincount(ids, minlength=num_rows) > 0).nonzero().squeeze(1)
    rank = torch.empty(num_rows, dtype=torch.long, device=ids.device)
    rank[touched] = torch.arange(len(touched), device=ids.device)
    slot = rank[ids]  # each position's row, as its rank among the rows touched
    summed = torch.zeros(len(touched), grad_sum.shape[1], dtype=grad_sum.dtype, device=grad_sum.device)
    summed.index_add_(0, slot, grad_sum.index_select(0, positions[:, 0]))
    return touched, summed


@torch.no_grad()
def lazy_adamw_rows_(table: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, rows: torch.Tensor,
                     grad: torch.Tensor, segments: list[tuple[int, int, int]], *, lr: float, weight_decay: float,
                     betas: tuple[float, float], eps: float) -> None:
    """AdamW on the rows ``rows`` of ``table`` and of its moments, in place; every other row is left untouched.

    The touched rows are gathered, updated by ``torch.optim.AdamW``'s arithmetic (its fused kernel where this torch
    has one, :func:`fused_adamw`; else its single-tensor update), and written back. ``segments``
    gives each block of rows its own AdamW step count, so that the stacked students, each with its own, share one
    call; the kernel updates each block as a tensor of its own, so a student's rows get the same numbers in a stack as
    alone.

    :param table: (R, D) weights; :param exp_avg: (R, D), :param exp_avg_sq: (R, D) AdamW's moments.
    :param rows: (U,) distinct rows; :param grad: (U, D) their gradients.
    :param segments: ``(start, end, t)``: rows ``rows[start:end]`` take AdamW step ``t`` (already incremented).
    """
    blocks = [(a, b, t) for a, b, t in segments if b > a]
    if not blocks:  # a batch of padding only touched no row
        return
    p, m, v = table.index_select(0, rows), exp_avg.index_select(0, rows), exp_avg_sq.index_select(0, rows)
    if fused_adamw(table.device):
        steps = [torch.tensor(float(t), device=table.device) for _, _, t in blocks]
        fused_adamw_(*([t[a:b] for a, b, _ in blocks] for t in (p, grad, m, v)), steps, lr=lr,
                     weight_decay=weight_decay, betas=betas, eps=eps)
    else:
        for a, b, t in blocks:
            adamw_tensor_(p[a:b], grad[a:b], m[a:b], v[a:b], float(t), lr=lr, weight_decay=weight_decay,
                          betas=betas, eps=eps)
    table.index_copy_(0, rows, p)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)


@torch.no_grad()
def adamw_tensor_(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: float, *, lr: float,
                  weight_decay: float, betas: tuple[float, float], eps: float) -> None:
    """``torch.optim.AdamW``'s single-tensor update of one tensor at step ``t`` (already incremented), in place."""
    beta1, beta2 = betas
    p.mul_(1 - lr * weight_decay)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
    p.addcdiv_(m, denom, value=-(lr / (1 - beta1**t)))


def real_positions(rows: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real positions of bags of rows, in row-major order (bag by bag, left to right): the row each looked up,
    and its bag. A bag's gradient spread over them (``grad_sum.index_select(0, bag)``) is what
    ``nn.Embedding(sparse=True)``'s backward gives as values, one entry per position; padding gets none.

    :param rows: (B, L) the table row of each position; :param real: (B, L) bool, the positions that count.
    :return: ``index`` (M,) the rows of the M real positions and ``bag`` (M,) the bag of each.
    """
    flat = real.reshape(-1).nonzero().squeeze(1)
    return rows.reshape(-1).index_select(0, flat), torch.div(flat, real.shape[1], rounding_mode="floor")


def real_bag_sum(table: torch.Tensor, rows: torch.Tensor, real: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, D) the sum of each bag's real rows of ``table``, gathered from the real positions only
    (``F.embedding_bag``; a padded ``F.embedding(rows, table).sum(1)`` reads every padding position too, and sums in
    another order, ~1e-7 apart), with what :func:`real_positions` gives, for the backward pass.

    :param rows: (B, L) the table row of each position; :param real: (B, L) bool, the positions that count.
    :return: the sums, ``index`` and ``bag``.
    """
    index, bag = real_positions(rows, real)
    return torch.nn.functional.embedding_bag(index, table, bag_offsets(real), mode="sum"), index, bag


def bag_offsets(real: torch.Tensor) -> torch.Tensor:
    """(B,) where each bag's real positions start among all of them (:func:`real_positions`' order): the
    ``offsets`` of ``F.embedding_bag``. :param real: (B, L) bool."""
    offsets = torch.zeros(len(real), dtype=torch.long, device=real.device)
    offsets[1:] = real.sum(1).cumsum(0)[:-1]
    return offsets


def sgd_lr(lr: float, step: int, total_steps: int | None) -> float:
    """fastText's learning rate at update ``step`` (1-based) of ``total_steps``: ``lr * (1 - (step - 1) / total)``,
    linear decay from ``lr`` to ``lr / total`` at the last update (and held there after it); constant without a
    total."""
    return float(sgd_lrs(lr, np.array([step]), total_steps)[0])


def sgd_lrs(lr: float, steps: np.ndarray, total_steps: int | None) -> np.ndarray:
    """:func:`sgd_lr` of every update count in ``steps`` (float64, the same doubles), one call for N students."""
    if not total_steps:
        return np.full(len(steps), float(lr))
    return lr * (1.0 - (np.minimum(steps, total_steps) - 1) / total_steps)


@torch.no_grad()
def sgd_rows_(table: torch.Tensor, rows: torch.Tensor, steps: torch.Tensor) -> None:
    """fastText's update of the rows of ``table`` in place: ``table[rows[i]] += steps[i]`` for every position i in
    order, duplicates accumulating (``index_add_``); every other row is left as it is.

    :param rows: (M,) the row of each real position (:func:`real_positions`).
    :param steps: (M, D) each position's step, ``-lr * gradient``: the same products whether the gradient is scaled
        before it is spread over the positions (the stacked students, each at its own rate) or after (the single
        student), so that a student's rows get the same numbers in a stack as alone.
    """
    table.index_add_(0, rows, steps)


class _BagSum(torch.autograd.Function):
    """``F.embedding(ids, table).sum(1)`` whose backward gives the table a sparse gradient for :class:`LazyAdamW`:
    the rows touched (:func:`row_gradients`, coalesced); or, ``per_position`` (fastText's SGD), the sum over the real
    positions only (:func:`real_bag_sum`, ~1e-7 from the padded sum) and one gradient entry per real position.
    Differentiable once; the students' credit, which differentiates twice, runs the dense lookup in eval mode."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, table: torch.Tensor, per_position: bool) -> torch.Tensor:
        ctx.table_shape, ctx.per_position = table.shape, per_position
        if per_position:  # fastText's SGD: the real positions only, kept for the backward pass
            total, index, bag = real_bag_sum(table, ids.long(), ids != 0)
            ctx.save_for_backward(index, bag)
            return total
        ctx.save_for_backward(ids)
        return torch.nn.functional.embedding(ids, table).sum(1)

    @staticmethod
    def backward(ctx, grad_sum: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        if ctx.per_position:  # one entry per real position, in order, uncoalesced: for sgd_rows_
            index, bag = ctx.saved_tensors
            grad = torch.sparse_coo_tensor(index.unsqueeze(0), grad_sum.index_select(0, bag), ctx.table_shape,
                                           is_coalesced=False, check_invariants=False)
            return None, grad, None
        (ids,) = ctx.saved_tensors
        rows, summed = row_gradients(ids.long(), ids != 0, grad_sum, ctx.table_shape[0])
        grad = torch.sparse_coo_tensor(rows.unsqueeze(0), summed, ctx.table_shape, is_coalesced=True,
                                       check_invariants=False)  # unique rows, in range: valid by construction
        return None, grad, None


def bag_sum(ids: torch.Tensor, table: torch.Tensor, per_position: bool = False) -> torch.Tensor:
    """(B, D) the sum of the rows ``ids`` (B, L) of ``table`` (row 0 pads: zero, no gradient); the table's gradient
    is sparse (:class:`_BagSum`): the distinct rows touched and their summed gradients (coalesced), or with
    ``per_position`` one entry per real position in order (:func:`real_positions`, for fastText's SGD)."""
    return _BagSum.apply(ids, table, per_position)


class LazyAdamW(torch.optim.Optimizer):
    """AdamW where a parameter's gradient is dense, :func:`lazy_adamw_rows_` where it is sparse (the n-gram table
    under ``NgramStudent(sparse=True)``). Dense parameters take PyTorch's fused AdamW kernel where this torch has one
    (:func:`fused_adamw`), as the stacked students do; else ``torch.optim.AdamW``'s arithmetic.

    With ``row_sgd=(lr, total_steps)`` a sparse gradient's rows take fastText's SGD instead (:func:`sgd_rows_` at
    :func:`sgd_lr`; the gradient one entry per position, ``bag_sum(..., per_position=True)``), without moments.

    :param params: the student's parameters; :param lr:, :param weight_decay:, :param betas:, :param eps: AdamW's.
    :param row_sgd: None (lazy AdamW on the rows) or fastText's SGD: its learning rate and the updates it decays over.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, row_sgd: tuple[float, int | None] | None = None) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps})
        self.row_sgd = row_sgd

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch.optim.Optimizer's signature)
        for group in self.param_groups:
            options = {"lr": group["lr"], "weight_decay": group["weight_decay"], "betas": group["betas"],
                       "eps": group["eps"]}
            dense: list[tuple[torch.Tensor, dict]] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                sgd = p.grad.is_sparse and self.row_sgd is not None
                if not state:
                    state["step"] = torch.tensor(0.0)
                    if not sgd:
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                if sgd:
                    rate = sgd_lr(self.row_sgd[0], int(state["step"]), self.row_sgd[1])
                    sgd_rows_(p, p.grad._indices()[0], p.grad._values() * -torch.tensor(rate, dtype=p.dtype,
                                                                                          device=p.device))
                elif p.grad.is_sparse:
                    rows = p.grad._indices()[0]
                    lazy_adamw_rows_(p, state["exp_avg"], state["exp_avg_sq"], rows, p.grad._values(),
                                     [(0, len(rows), int(state["step"]))], **options)
                else:
                    dense.append((p, state))
            if not dense:
                continue
            params, states = [p for p, _ in dense], [s for _, s in dense]
            grads = [p.grad for p in params]
            exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            if fused_adamw(params[0].device):
                steps = [s["step"].to(params[0].device) for s in states]
                fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, **options)
                continue
            for p, g, m, v, state in zip(params, grads, exp_avgs, exp_avg_sqs, states):
                adamw_tensor_(p, g, m, v, float(state["step"]), **options)


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse (coalesced) gradients, scaling their values in
    place: nothing is densified. The same numbers as torch's on dense gradients (each tensor's norm, the norm of
    those, then ``max_norm / (norm + 1e-6)`` capped at 1)."""
    grads = [p.grad for p in params if p.grad is not None]
    values = [g._values() if g.is_sparse else g for g in grads]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in values]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for v in values:
        v.mul_(coef)
    return total
