"""N lite students as stacked tensors: one batched forward, backward and AdamW update for all of them.

Student n of :class:`StackedLiteStudents` (:class:`StackedNgramStudents`) computes what a
:class:`~kd_gym.student.StudentTrainer` over a :class:`~kd_gym.student.LiteStudent`
(:class:`~kd_gym.student.NgramStudent`) computes, from its own state only:

- the same initial weights for the same seed: the template module's own ``reset_parameters`` runs on a random stream
  seeded like the trainer's (``StudentTrainer.reset``), and the result is copied into slot n;
- the same dropout masks: one ``bernoulli_(1 - p)`` of shape (B, H) per training forward pass from the student's own
  generator, which is what ``nn.Dropout`` draws on the CPU;
- the same layers (``baddbmm`` per student computes what ``F.linear`` computes per student) and their gradients
  (written out: the products autograd computes for ``nn.Linear``, ``nn.GELU`` and ``nn.Dropout``; for the n-gram
  table, the masked mean's backward and the row-by-row accumulation of ``nn.Embedding``'s), the same gradient
  clipping of each student's global norm and the same AdamW arithmetic (``torch.optim.AdamW``'s single-tensor update,
  elementwise, with each student's own step count).

The sparse n-gram students take the single student's sparse path for all N at once. Under fastText's SGD
(``NgramStudent(sgd_lr=...)``, the default): the real positions summed by one ``embedding_bag``, each student's
clipping over its classifier alone, AdamW on the classifiers, and each position's gradient times its student's rate
added into its row (:func:`~kd_gym.sparse.sgd_rows_`). Under lazy AdamW (``NgramStudent(sparse=True)``): the rows
each batch touched and their gradients (:func:`~kd_gym.sparse.row_gradients`), each student's clipping over its own
rows and classifier, and the lazy AdamW of :mod:`kd_gym.sparse` with one block per student.

So the students' weights agree with the single trainers' to float32 rounding (a batched matrix product may take
another kernel than a single one for some shapes and layouts; on a CPU they are bit-identical at the tiny test sizes
and at the lite env's default sizes, tests/test_vector_sizes.py); the reported per-student loss parts
(:func:`stacked_kd_loss`) are reduced in another order (~1e-7).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_gym.losses import KDLoss, multi_teacher_kd_loss
from kd_gym.sparse import (
    adamw_tensor_,
    bag_offsets,
    fused_adamw_,
    lazy_adamw_rows_,
    real_bag_sum,
    real_positions,
    row_gradients,
    sgd_lr,
    sgd_rows_,
)
from kd_gym.student import LiteStudent, NgramStudent, fused_adamw


def stacked_students(template: nn.Module, num_students: int, **options) -> StackedStudents:
    """The stack of ``num_students`` students of ``template``'s kind (a LiteStudent or an NgramStudent)."""
    kinds = {LiteStudent: StackedLiteStudents, NgramStudent: StackedNgramStudents}
    if type(template) not in kinds:
        raise NotImplementedError(f"no stacked version of {type(template).__name__}; stacked students: "
                                  f"{[kind.__name__ for kind in kinds]}")
    return kinds[type(template)](template, num_students, **options)


class StackedStudents:
    """What every stack of N students shares: their parameters, gradients and AdamW moments in flat buffers, their
    draws, gradient clipping, AdamW and evaluation; a subclass gives the forward pass and its backward.

    All parameters live in one flat buffer of N * P numbers (P: the parameters of one student), and so do their
    gradients and AdamW moments, so that AdamW is a few whole-buffer operations whatever the number of parameter
    tensors (at N = 1 their count costs, not their size). ``params`` and ``grads`` are contiguous views of the
    buffers, one block per parameter with a leading student axis, in the order of the template's parameters;
    contiguous, so the backward products are written into them by the kernels a fresh result would take. Each
    student has its own AdamW step count.

    :param template: the architecture (its weights are not used: every student is drawn by :meth:`reset`).
    :param num_students: N >= 1.
    :param lr: AdamW learning rate; :param weight_decay: AdamW (decoupled) weight decay.
    :param grad_clip: max global gradient norm of each student (0: no clipping).
    :param device: where the parameters live.
    :param dtype: autocast dtype of the forward pass (None: fp32), as the trainer's.
    """

    betas = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the trainer uses
    eps = 1e-8
    #: the key of the split inputs this student reads
    input_key = ""

    def __init__(self, template: nn.Module, num_students: int, *, lr: float, weight_decay: float,
                 grad_clip: float, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> None:
        if num_students < 1:
            raise ValueError(f"num_students={num_students}; use an integer >= 1")
        self.num_students = n = num_students
        self.device = torch.device(device)
        self.dtype = dtype
        self.lr, self.weight_decay, self.grad_clip = lr, weight_decay, grad_clip
        self.template = copy.deepcopy(template).to(self.device).train()
        #: parameter names, as in ``LiteStudent.state_dict()``
        self.names = [name for name, _ in self.template.named_parameters()]
        shapes = [p.shape for p in self.template.parameters()]
        everything = [True] * len(shapes)
        keep_grads, keep_moments = self._kept_state()
        #: (N * P,) every student's parameters, gradients and AdamW moments, one block per parameter (a sparse
        #: student's table keeps only the state its rule reads: no gradient block, and no moments under SGD)
        self.flat_params, self.params = self._buffer(shapes, everything)
        self.flat_grads, self.grads = self._buffer(shapes, keep_grads)
        (self.exp_avg, first), (self.exp_avg_sq, second) = (self._buffer(shapes, keep_moments) for _ in range(2))
        self._moments = first, second
        self._denom, self._denom_views = self._buffer(shapes, keep_moments)  # reused: no allocation per update
        # the fused update's operands: student n's blocks of the parameters with a gradient and moments (all but a
        # sparse table, which takes its own rule), each with student n's step count (a 0-d view of one (N,) tensor
        # that every update refreshes with one copy)
        fused = [k for k, (grad, moment) in enumerate(zip(keep_grads, keep_moments)) if grad and moment]
        self._blocks = [[views[k][i] for i in range(n) for k in fused]
                        for views in (self.params, self.grads, *self._moments)]
        self._step_values = torch.zeros(n, dtype=torch.float32, device=self.device)
        self._block_steps = [self._step_values[i] for i in range(n) for _ in fused]
        self._saved: tuple = ()
        #: (N,) updates of each student since it was drawn
        self.steps = np.zeros(n, dtype=np.int64)
        self.generators = [torch.Generator(device="cpu") for _ in range(n)]
        self.device_generators = ([torch.Generator(device=self.device) for _ in range(n)]
                                  if self.device.type == "cuda" else None)
        self._masks: torch.Tensor | None = None

    def _kept_state(self) -> tuple[list[bool], list[bool]]:
        """Which parameters keep a gradient block and which keep AdamW moments (all of them, unless a subclass's
        update rule reads less)."""
        count = len(list(self.template.parameters()))
        return [True] * count, [True] * count

    def _buffer(self, shapes: list[torch.Size], keep: list[bool]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """A zero flat buffer holding the parameters ``keep`` of every student, and its per-parameter (N, *shape)
        contiguous views (None for a parameter not kept). Buffers that keep the same parameters share a layout."""
        sizes = [self.num_students * int(np.prod(shape)) if kept else 0 for shape, kept in zip(shapes, keep)]
        bounds = np.cumsum([0, *sizes])
        flat = torch.zeros(int(bounds[-1]), device=self.device)
        return flat, [flat[a:b].view(-1, *shape) if kept else None
                      for a, b, shape, kept in zip(bounds[:-1], bounds[1:], shapes, keep)]

    # -- randomness
    def _mask_generator(self, index: int) -> torch.Generator:
        return self.generators[index] if self.device_generators is None else self.device_generators[index]

    def reset(self, index: int, seed: int) -> None:
        """Draw student ``index`` afresh from ``seed`` (what ``StudentTrainer.reset(seed)`` draws), with zero AdamW
        moments and step count."""
        cpu = self.generators[index]
        cpu.manual_seed(seed)
        devices = [self.device] if self.device_generators is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu.get_state())
            if self.device_generators is not None:
                self.device_generators[index].manual_seed(seed)
                torch.cuda.set_rng_state(self.device_generators[index].get_state(), self.device)
            for module in self.template.fresh_modules():
                module.reset_parameters()
            cpu.set_state(torch.get_rng_state())
            if self.device_generators is not None:
                self.device_generators[index].set_state(torch.cuda.get_rng_state(self.device))
        with torch.no_grad():
            for stacked, fresh, m, v in zip(self.params, self.template.parameters(), *self._moments):
                stacked[index].copy_(fresh)
                if m is not None:
                    m[index].zero_()
                    v[index].zero_()
        self.steps[index] = 0

    # -- computation
    def _precision(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def dropout_masks(self, batch_size: int, draw: np.ndarray | None = None) -> torch.Tensor | None:
        """(N, B, H) scaled dropout masks of a training forward pass, or None: a student without dropout."""
        return None

    @staticmethod
    def _into(op, out: torch.Tensor, exact: bool, *args) -> None:
        """``out[...] = op(*args)``: written straight into ``out`` in fp32; under autocast computed in its dtype
        (as autograd computes it) and cast into ``out``. ``out`` must stay contiguous: a product written into a
        strided slice takes a per-matrix loop that, for some shapes, rounds differently from the single trainer's
        (tests/test_vector_sizes.py)."""
        if exact:
            op(*args, out=out)
        else:
            out.copy_(op(*args))

    def _clip(self) -> None:
        """``clip_grad_norm_`` per student: each parameter's norm (reduced as clip_grad_norm_ reduces it: one
        tensor at a time), the norm of those, and the scaling of each student's gradients."""
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in self.grads], dim=1)  # (N, tensors)
        coef = (self.grad_clip / (torch.linalg.vector_norm(norms, dim=1) + 1e-6)).clamp(max=1.0)
        # g * 1.0 == g: on the CPU (where reading coef costs no device sync) an unclipped step skips the pass over
        # the buffer; the lite student's gradients are rarely clipped
        if self.device.type != "cpu" or bool((coef < 1.0).any()):
            for g in self.grads:
                g.mul_(_per_student(coef, g))

    def _adamw(self) -> None:
        """The trainer's AdamW update of every student: PyTorch's fused kernel (:func:`~kd_gym.student.fused_adamw`)
        on each student's own parameter blocks, with its own step count, where this torch has it (the same kernel on
        tensors of the same shapes and values as the trainer's, so the same numbers); else
        ``torch.optim.AdamW``'s single-tensor update, elementwise on the flat buffers."""
        if fused_adamw(self.device):
            self._fused_adamw()
            return
        beta1, beta2 = self.betas
        p, g, m, v, denom = self.flat_params, self.flat_grads, self.exp_avg, self.exp_avg_sq, self._denom
        same = bool((self.steps == self.steps[0]).all())
        steps = [float(self.steps[0])] if same else [float(s) for s in self.steps]
        step_size = [self.lr / (1 - beta1**s) for s in steps]  # Python floats, computed as torch computes them
        bias2_sqrt = [(1 - beta2**s) ** 0.5 for s in steps]
        if self.weight_decay != 0:
            p.mul_(1 - self.lr * self.weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        torch.sqrt(v, out=denom)
        if same:  # denom = sqrt(v) / sqrt(1 - beta2^t) + eps, in place
            denom.div_(bias2_sqrt[0]).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size[0])
        else:  # (N,) float32: the float32 values torch's kernels cast the Python floats to, per parameter block;
            # (-s * m) / d == -(s * m) / d exactly: the same numbers as value=-s
            step_size_t, bias2_sqrt_t = (torch.tensor(values, dtype=torch.float32, device=self.device)
                                         for values in (step_size, bias2_sqrt))
            for p_k, m_k, d_k in zip(self.params, self._moments[0], self._denom_views):
                d_k.div_(_per_student(bias2_sqrt_t, d_k)).add_(self.eps)
                p_k.addcdiv_(m_k * _per_student(step_size_t, m_k), d_k, value=-1.0)

    def _fused_adamw(self) -> None:
        """One ``torch._fused_adamw_`` call over every (student, parameter) block: what ``AdamW(fused=True).step()``
        runs for one student, for all N (each block a contiguous (shape,) view of the flat buffers)."""
        self._step_values.copy_(torch.from_numpy(self.steps))
        params, grads, exp_avgs, exp_avg_sqs = self._blocks
        fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, self._block_steps, lr=self.lr,
                     weight_decay=self.weight_decay, betas=self.betas, eps=self.eps)

    def predict(self, inputs: torch.Tensor, index: np.ndarray | None = None, chunk: int = 512) -> torch.Tensor:
        """(n, M, C) eval-mode logits of the students ``index`` (None: all) on shared rows ``inputs`` (M, D), in
        chunks of ``chunk`` rows (as ``StudentTrainer.predict``; per-row results do not depend on the chunking)."""
        out = [self.forward(inputs[i : i + chunk], index=index)[0] for i in range(0, len(inputs), chunk)]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Student ``index``'s weights, with the keys of ``LiteStudent.state_dict()`` (loadable into one)."""
        return {name: p[index].detach().clone() for name, p in zip(self.names, self.params)}


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
            rates = torch.tensor([-sgd_lr(self.row_sgd[0], int(t), self.row_sgd[1]) for t in self.steps],
                                 dtype=table.dtype, device=self.device)
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
        coef = None
        if self.grad_clip:  # clip_grad_norm_ per student: its rows' norm, its classifier's, the norm of those
            norms = [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in self.grads[1:]]
            norms = torch.stack(norms if table_norms is None else [table_norms, *norms], dim=1)
            coef = (self.grad_clip / (torch.linalg.vector_norm(norms, dim=1) + 1e-6)).clamp(max=1.0)
            if self.device.type != "cpu" or bool((coef < 1.0).any()):
                for g in self.grads[1:]:
                    g.mul_(_per_student(coef, g))
            else:
                coef = None
        self.steps += 1
        if fused_adamw(self.device):
            self._fused_adamw()
        else:  # torch.optim.AdamW's single-tensor update per student (LazyAdamW's arithmetic without the kernel)
            options = {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas, "eps": self.eps}
            for i, t in enumerate(self.steps.tolist()):
                for p, g, m, v in zip(*(views[1:] for views in (self.params, self.grads, *self._moments))):
                    adamw_tensor_(p[i], g[i], m[i], v[i], float(t), **options)
        return coef


def _per_student(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) per-student values shaped to broadcast over ``like`` (N, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))


def stacked_kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                    *, alpha: float, temperature: float, labelled: torch.Tensor | None = None,
                    teacher_probs: torch.Tensor | None = None) -> KDLoss:
    """:func:`~kd_gym.losses.multi_teacher_kd_loss` of N students at once, each a mean over its own B rows.

    :param logits: (N, B, C); :param teacher_logits: (N, B, K, C); :param weights: (N, B, K); :param labels: (N, B);
    :param labelled: (N, B) bool or None; :param teacher_probs: (N, B, K, C) or None.
    :return: ``loss``, ``ce``, ``kd``: (N,) per student (as the single loss gives them for its batch);
        ``per_instance``: (N, B); ``weights``: (N, B, K) normalised as the single loss normalises them.
    """
    n, b, c = logits.shape
    k = teacher_logits.shape[2]
    flat = (lambda t, *shape: None if t is None else t.reshape(n * b, *shape))  # noqa: E731
    rows = multi_teacher_kd_loss(flat(logits, c), flat(teacher_logits, k, c), flat(weights, k), flat(labels),
                                 alpha=alpha, temperature=temperature, labelled=flat(labelled),
                                 teacher_probs=flat(teacher_probs, k, c))  # every row's loss is the single loss's row
    per_instance = rows.per_instance.view(n, b)
    with torch.no_grad():  # the reported parts per student: the single loss's CE and KD means over this student's rows
        ce, kd = rows.instance_ce.view(n, b), rows.instance_kd.view(n, b)
        known = torch.ones_like(ce) if labelled is None else labelled.float()
        has_teacher = (weights.sum(-1) > 0).float()
        ce_mean = (ce * known).sum(1) / known.sum(1).clamp_min(1)
        kd_mean = (kd * has_teacher).sum(1) / has_teacher.sum(1).clamp_min(1)
    return KDLoss(loss=per_instance.mean(1), ce=ce_mean, kd=kd_mean, per_instance=per_instance,
                  weights=rows.weights.view(n, b, k))
