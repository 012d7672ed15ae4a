"""What every stack of N lite students shares (:class:`StackedStudents`): parameters, gradients and AdamW moments
in flat buffers, the students' draws, gradient clipping, AdamW and evaluation. The stacks themselves:
:mod:`kd_gym.stacked_lite` (the MLP) and :mod:`kd_gym.stacked_ngrams` (the n-gram bag); the overview is
:mod:`kd_gym.student_stack`.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from kd_gym.sparse import fused_adamw_
from kd_gym.student import fused_adamw


class StackedStudents:
    """What every stack of N students shares: their parameters, gradients and AdamW moments in flat buffers, their
    draws, gradient clipping, AdamW and evaluation; a subclass gives the forward pass and its backward.

    All parameters live in one flat buffer of N * P numbers (P: the parameters of one student), and so do their
    gradients and AdamW moments, so that AdamW is a few whole-buffer operations whatever the number of parameter
    tensors (at N = 1 their count costs, not their size). ``params`` and ``grads`` are contiguous views of the
    buffers, one block per parameter with a leading student axis, in the order of the template's parameters;
    contiguous, so the backward products are written into them by the kernels a fresh result would take. Each
    student has its own AdamW step count. A parameter whose update rule reads less (a sparse n-gram table:
    :meth:`_kept_state`) has no gradient block (``grads[k]`` is None) and, under fastText's SGD, no moments; the
    whole-buffer AdamW and clipping (:meth:`_adamw`, :meth:`_clip`) serve the stacks that keep everything.

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
        # the parameters AdamW updates whole (all but a sparse table, which takes its own rule)
        whole = [grad and moment for grad, moment in zip(keep_grads, keep_moments)]
        self._denom, self._denom_views = self._buffer(shapes, whole)  # reused: no allocation per update
        # the fused update's operands: student n's blocks of those parameters, each with student n's step count (a
        # 0-d view of one (N,) tensor that every update refreshes with one copy)
        fused = [k for k, kept in enumerate(whole) if kept]
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

    def _clip(self, grads: list[torch.Tensor] | None = None,
              leading_norms: torch.Tensor | None = None) -> torch.Tensor | None:
        """``clip_grad_norm_`` per student over ``grads`` (default: all of them): each tensor's norm (reduced as
        clip_grad_norm_ reduces it: one tensor at a time), after ``leading_norms`` (N,) of gradients held elsewhere
        (a sparse table's rows) where given, the norm of those, and the scaling of each student's ``grads``.
        Returns the coefficients (N,) the gradients held elsewhere are still to be scaled by, or None where nothing
        was scaled."""
        grads = self.grads if grads is None else grads
        norms = [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]
        norms = torch.stack(norms if leading_norms is None else [leading_norms, *norms], dim=1)  # (N, tensors)
        coef = (self.grad_clip / (torch.linalg.vector_norm(norms, dim=1) + 1e-6)).clamp(max=1.0)
        # g * 1.0 == g: on the CPU (where reading coef costs no device sync) an unclipped step skips the pass over
        # the buffer; the lite student's gradients are rarely clipped
        if self.device.type != "cpu" or bool((coef < 1.0).any()):
            for g in grads:
                g.mul_(per_student(coef, g))
            return coef
        return None

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
                d_k.div_(per_student(bias2_sqrt_t, d_k)).add_(self.eps)
                p_k.addcdiv_(m_k * per_student(step_size_t, m_k), d_k, value=-1.0)

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


def per_student(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) per-student values shaped to broadcast over ``like`` (N, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))
