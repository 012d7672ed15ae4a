"""The student's trainer: one KD update per call, with per-instance teacher weights.

:class:`StudentTrainer` trains any of the students of :mod:`kd_gym.student_models` (re-exported here):

- :class:`FullStudent`: a small transformer trained from tokens, initialised from the first layers of a
  teacher-family checkpoint (default: the first 2 layers of MiniLM).
- the lite students, the same decision problem at a fraction of the cost, so agents can be benchmarked on a CPU:
  :class:`NgramStudent` (the default: a fastText-style bag of hashed uni- and bigrams trained from tokens) and
  :class:`LiteStudent` (a small MLP head over frozen, cached sentence embeddings).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from kd_gym.data import KDData, SplitTensors
from kd_gym.losses import KDLoss, multi_teacher_kd_loss
from kd_gym.prepare.inference import autocast, autocast_dtype, resolve_device
from kd_gym.sparse import LazyAdamW, clip_grad_norm_, fused_adamw  # fused_adamw: public here too
from kd_gym.student_models import FullStudent, LiteStudent, NgramStudent

__all__ = ["FullStudent", "LiteStudent", "NgramStudent", "StudentTrainer", "fused_adamw"]


class StudentTrainer:
    """Owns the student model, optimizer, device and precision; one KD update per :meth:`train_step`.

    :param model: a :class:`NgramStudent`, :class:`LiteStudent` or :class:`FullStudent` (any module returning
        (logits, representation)); an ``NgramStudent(sparse=True)`` is trained by :class:`~kd_gym.sparse.LazyAdamW`.
    :param data: the splits as tensors; moved to the trainer's device once.
    :param lr: AdamW learning rate.
    :param weight_decay: AdamW weight decay.
    :param alpha: weight of the gold-label CE term of the KD loss.
    :param temperature: KD temperature T.
    :param grad_clip: max gradient norm (0: no clipping).
    :param device: "auto" (CUDA when available), "cpu", "cuda", ...
    :param precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
    :param eval_batch_size: batch size of :meth:`evaluate`.
    """

    def __init__(
        self,
        model: nn.Module,
        data: KDData,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        alpha: float = 0.5,
        temperature: float = 2.0,
        grad_clip: float = 1.0,
        device: str = "auto",
        precision: str = "auto",
        eval_batch_size: int = 512,
    ) -> None:
        self.device = resolve_device(device)
        # bf16 pays off on CUDA; on CPU the student's small matmuls are faster and exactly reproducible in fp32.
        self.dtype = autocast_dtype(self.device, precision) if (precision != "auto" or self.device.type == "cuda") else None
        self.model = model.to(self.device).train()  # every submodule in one mode (from_pretrained leaves eval)
        self.data = data.to(self.device)
        self.lr, self.weight_decay = lr, weight_decay
        self.alpha, self.temperature, self.grad_clip = alpha, temperature, grad_clip
        self.eval_batch_size = eval_batch_size
        self._initial_state = copy.deepcopy(self.model.state_dict())
        # The student's own random stream (init of fresh modules, dropout): nothing the agent or the user draws from
        # torch's global generator changes the student, and the student never reseeds the global generator.
        self.generator = torch.Generator(device="cpu")
        self.cuda_generator = torch.Generator(device=self.device) if self.device.type == "cuda" else None
        # A model that draws its dropout from a generator is handed the student's own on a CPU (the same masks as
        # torch's dropout under own_rng(), without swapping the global generator's state twice per step).
        self._draws_own_dropout = self.device.type == "cpu" and hasattr(self.model, "generator")
        if self._draws_own_dropout:
            self.model.generator = self.generator
        self.optimizer = self._make_optimizer()
        self.steps = 0

    @contextmanager
    def own_rng(self) -> Iterator[None]:
        """Run the block on the student's own random stream; torch's global generators are restored afterwards."""
        devices = [self.device] if self.cuda_generator is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.generator.get_state())
            if self.cuda_generator is not None:
                torch.cuda.set_rng_state(self.cuda_generator.get_state(), self.device)
            yield
            self.generator.set_state(torch.get_rng_state())
            if self.cuda_generator is not None:
                self.cuda_generator.set_state(torch.cuda.get_rng_state(self.device))

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if getattr(self.model, "sparse", False):  # only the table rows a batch touched are read and written
            sgd_lr = getattr(self.model, "sgd_lr", None)
            row_sgd = None if sgd_lr is None else (sgd_lr, self.model.sgd_steps)
            return LazyAdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay, row_sgd=row_sgd)
        fused = {"fused": True} if fused_adamw(self.device) else {}
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay, **fused)

    def reset(self, seed: int | None = None) -> None:
        """A fresh student: the initial weights, a fresh optimizer and, when ``seed`` is given, a new draw of the
        randomly initialised modules from the student's own generator seeded with ``seed`` (same seed, same student;
        torch's global generator is neither used nor reseeded)."""
        self.model.load_state_dict(self._initial_state)
        if seed is not None:
            self.generator.manual_seed(seed)
            if self.cuda_generator is not None:
                self.cuda_generator.manual_seed(seed)
            with self.own_rng():
                for module in getattr(self.model, "fresh_modules", list)():
                    module.reset_parameters()
        self.optimizer = self._make_optimizer()
        self.steps = 0

    def split(self, name: str) -> SplitTensors:
        return self.data.splits[name]

    def batch(self, split: str, indices: np.ndarray | slice) -> dict[str, torch.Tensor]:
        """The rows ``indices`` of ``split`` as a batch (``SplitTensors.batch``), with the inputs the student reads
        (its ``input_names``; all of them for a model that does not name them)."""
        return self.split(split).batch(indices, getattr(self.model, "input_names", None))

    def forward(self, batch: dict, *, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Student (logits (B, C), representation (B, H)) on a batch; in train mode when ``grad``."""
        if self.model.training != grad:
            self.model.train(grad)
        precision = autocast(self.device, self.dtype) if self.dtype is not None else nullcontext()
        if grad:  # dropout draws from the student's own stream
            with nullcontext() if self._draws_own_dropout else self.own_rng(), torch.enable_grad(), precision:
                logits, representation = self.model(**batch["inputs"])
        else:
            with torch.no_grad(), precision:
                logits, representation = self.model(**batch["inputs"])
        return logits.float(), representation.float()

    def train_step(self, batch: dict, weights: torch.Tensor | np.ndarray, logits: torch.Tensor | None = None) -> KDLoss:
        """One optimizer update on ``batch`` with per-instance teacher weights.

        :param batch: from ``SplitTensors.batch``; must hold ``teacher_logits`` (B, K, C); may hold
            ``teacher_probs`` (B, K, C), their softmax at the trainer's temperature (then not recomputed).
        :param weights: (B, K) non-negative weights; rows are normalised inside the loss, all-zero rows learn from
            the gold label alone.
        :param logits: (B, C) student logits of this batch computed by :meth:`forward` with ``grad=True`` since the
            last update; reused instead of a second forward pass.
        :return: the loss and its parts (tensors on the device; nothing is copied to the host).
        """
        weights = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        if logits is None:
            logits, _ = self.forward(batch, grad=True)
        result = multi_teacher_kd_loss(logits, batch["teacher_logits"], weights, batch["labels"],
                                       alpha=self.alpha, temperature=self.temperature, labelled=batch.get("labelled"),
                                       teacher_probs=batch.get("teacher_probs"))
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        params = list(self.model.parameters())
        sparse = [p for p in params if p.grad is not None and p.grad.is_sparse]
        if sparse and getattr(self.model, "sgd_lr", None) is not None:  # fastText's SGD on the rows: not clipped
            params, sparse = [p for p in params if p.grad is None or not p.grad.is_sparse], []
        for p in sparse:  # one entry per touched row, ascending (kd_gym.sparse.row_gradients) from one backward pass
            p.grad._coalesced_(True)  # (the gradients were set to None before it): autograd drops the flag, set it back
        if self.grad_clip and sparse:
            clip_grad_norm_(params, self.grad_clip)  # scales the sparse gradient's values: nothing densified
        elif self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return result

    def lookahead(self, batch: dict, weights: torch.Tensor | np.ndarray, split: str = "dev",
                  indices: np.ndarray | None = None, rng_state: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """The metrics :meth:`evaluate` would give after a trial update on ``batch`` with ``weights``; afterwards the
        student, its optimizer, its random stream and its step count are exactly as before.

        :param rng_state: the random stream to run the trial's forward pass from (pass the state the batch's own
            forward pass started from, and the trial sees the same dropout masks as the real update).
        """
        params = [p.detach().clone() for p in self.model.parameters()]
        slots = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in self.optimizer.state[p].items()}
                 for p in self.model.parameters() if p in self.optimizer.state}
        rng, steps = self.rng_state(), self.steps
        if rng_state is not None:
            self.set_rng_state(rng_state)
        self.train_step(batch, weights)
        metrics = self.evaluate(split, indices)
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), params):
                p.copy_(saved)
        for p in self.model.parameters():
            if p in slots:
                self.optimizer.state[p] = slots[p]
            else:
                self.optimizer.state.pop(p, None)
        self.set_rng_state(rng)
        self.steps = steps
        return metrics

    def pair_credit(self, batch: dict, dev_indices: np.ndarray | None, split: str = "dev") -> torch.Tensor:
        """(B, K) first-order credit of each (instance, teacher) pair: how fast one gradient step on instance i's
        distillation term toward teacher k alone would lower the student's dev loss on ``dev_indices``, in nats per
        unit step: ``<J_i G, g_ik>`` with ``G`` the dev-loss gradient, ``J_i`` the Jacobian of instance i's logits
        and ``g_ik = w T (softmax(s_i / T) - softmax(t_ik / T))`` the gradient of that term w.r.t. the logits
        (w = 1 - alpha on labelled instances, 1 on the transfer set). Positive: the pair helps the dev loss.
        Computed in eval mode (no dropout), without touching the student: one dev backward pass and one
        double-backward over the batch.
        """
        return self.credit(batch, None, dev_indices, split)[0]

    def credit(self, batch: dict, weights: torch.Tensor | np.ndarray | None, dev_indices: np.ndarray | None = None,
               split: str = "dev") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pair credit (B, K) of :meth:`pair_credit` and, given ``weights`` (B, K), each instance's *student
        credit* (B,): ``<G, grad_theta loss_i(w)>``, the first-order rate at which a gradient step on instance i's
        loss under those weights lowers the dev loss (nats per unit step; positive helps). The KD term's gradient
        w.r.t. the logits is linear in the normalised weights ``w_bar``, so

            student_credit_i = sum_k w_bar_ik pair_credit_ik + ce_coef_i <J_i G, softmax(s_i) - onehot(y_i)>

        with ``ce_coef_i`` the CE coefficient of :func:`~kd_gym.losses.multi_teacher_kd_loss` (alpha on a labelled
        row with some teacher weight, 1 on a labelled row with none, 0 on a transfer row). The batch loss is the mean
        over the B rows, so the mean of the student credits is the first-order effect of the whole update's
        gradient (before clipping and AdamW's scaling). Costs what :meth:`pair_credit` costs.
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.eval()
        # The credit differentiates twice through the student; PyTorch's fused attention kernels (the full
        # student's default) have no double backward, the math kernel has.
        with torch.enable_grad(), autocast(self.device, self.dtype), sdpa_kernel(SDPBackend.MATH):
            dev = self.split(split).batch(slice(None) if dev_indices is None else np.asarray(dev_indices))
            dev_loss = torch.nn.functional.cross_entropy(self.model(**dev["inputs"])[0].float(), dev["labels"])
            dev_grad = torch.autograd.grad(dev_loss, params)
            logits = self.model(**batch["inputs"])[0].float()  # (B, C)
            probe = torch.zeros_like(logits, requires_grad=True)
            vjp = torch.autograd.grad(logits, params, probe, create_graph=True)  # J^T probe, linear in probe
            directional = torch.autograd.grad(sum((v * g).sum() for v, g in zip(vjp, dev_grad)), probe)[0]  # J G
        logits = logits.detach()
        student_t = torch.softmax(logits / self.temperature, -1).unsqueeze(1)  # (B, 1, C)
        teacher_t = torch.softmax(batch["teacher_logits"].float() / self.temperature, -1)  # (B, K, C)
        labelled = batch.get("labelled")
        kd_weight = torch.full((len(logits),), 1.0 - self.alpha, device=logits.device)
        if labelled is not None:  # transfer rows learn from the KD term alone, with weight 1
            kd_weight = torch.where(labelled, kd_weight, torch.ones_like(kd_weight))
        g = kd_weight[:, None, None] * self.temperature * (student_t - teacher_t)
        pair = (directional.unsqueeze(1) * g).sum(-1)
        if weights is None:
            return pair, None
        weights = torch.as_tensor(weights, dtype=torch.float32, device=pair.device)
        total = weights.sum(1)
        normalised = weights / total.clamp_min(1e-12)[:, None]
        has_teacher = total > 0
        known = torch.ones_like(total, dtype=torch.bool) if labelled is None else labelled
        ce_coef = torch.where(has_teacher, self.alpha, 1.0) * known.float()
        ce_grad = torch.softmax(logits, -1) - torch.nn.functional.one_hot(batch["labels"], logits.shape[1]).float()
        student = (normalised * pair).sum(1) + ce_coef * (directional * ce_grad).sum(1)
        return pair, student

    @torch.no_grad()
    def predict(self, split: str, indices: np.ndarray | None = None) -> torch.Tensor:
        """(N, C) student logits on ``split`` (or its rows ``indices``), in eval mode."""
        tensors = self.split(split)
        forward = (lambda batch: self.forward(batch, grad=False)[0])  # noqa: E731
        if getattr(self.model, "sparse", False):  # the table through the classifier once (NgramStudent.predict_logits)
            self.model.eval()
            projected = self.model.projected_table()
            forward = (lambda batch: self.model.predict_logits(batch["inputs"]["ngram_ids"], projected))  # noqa: E731
        if indices is None:  # the whole split: slices are views, nothing is gathered
            n, size = len(tensors), self.eval_batch_size
            out = [forward(tensors.batch(slice(i, i + size))) for i in range(0, n, size)]
        else:
            rows = np.asarray(indices)
            out = [forward(tensors.batch(rows[i : i + self.eval_batch_size]))
                   for i in range(0, len(rows), self.eval_batch_size)]
        return out[0] if len(out) == 1 else torch.cat(out)

    @torch.no_grad()
    def evaluate(self, split: str = "dev", indices: np.ndarray | None = None) -> dict[str, float]:
        """The task metrics of the student on ``split`` (or its rows ``indices``) and the mean CE ``loss``."""
        logits = self.predict(split, indices)
        labels = self.split(split).labels
        if indices is not None:
            labels = labels[torch.as_tensor(indices, device=labels.device)]
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
        metrics = self.data.task.compute_metrics(logits.argmax(-1).cpu().numpy(), labels.cpu().numpy())
        return {**metrics, "loss": loss}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that defines the student now, as tensors: weights (``model.*``), optimizer moments
        (``optimizer.*``), its random stream and the step count; restored exactly by :meth:`load_state_dict`."""
        state = {f"model.{k}": v.detach().clone() for k, v in self.model.state_dict().items()}
        optimizer = self.optimizer.state_dict()
        for index, slots in optimizer["state"].items():
            for slot, value in slots.items():
                state[f"optimizer.{index}.{slot}"] = torch.as_tensor(value).detach().clone()
        state.update(self.rng_state())
        state["steps"] = torch.tensor(self.steps)
        return state

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The student's random stream now (``rng.cpu`` and, on CUDA, ``rng.cuda``)."""
        state = {"rng.cpu": self.generator.get_state()}
        if self.cuda_generator is not None:
            state["rng.cuda"] = self.cuda_generator.get_state()
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back a :meth:`rng_state`."""
        self.generator.set_state(state["rng.cpu"].cpu())
        if self.cuda_generator is not None and "rng.cuda" in state:
            self.cuda_generator.set_state(state["rng.cuda"].cpu())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict` (tensors may come from disk, on any device); a student saved under another
        table rule is refused before anything changes."""
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith("optimizer."):
                _, index, slot = key.split(".", 2)
                slots.setdefault(int(index), {})[slot] = value
        self._check_table_rule(slots)
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        self.optimizer = self._make_optimizer()
        optimizer = self.optimizer.state_dict()
        optimizer["state"] = slots
        self.optimizer.load_state_dict(optimizer)
        self.set_rng_state(state)
        self.steps = int(state["steps"])

    def _check_table_rule(self, slots: dict[int, dict[str, torch.Tensor]]) -> None:
        """Refuse a saved n-gram student whose table was trained by another rule than this one's (AdamW keeps
        moments, fastText's SGD none): resuming it would change the learning rule in the middle of a run."""
        names = [name for name, _ in self.model.named_parameters()]
        if "embedding.weight" not in names or not isinstance(self.model, NgramStudent):
            return
        saved = slots.get(names.index("embedding.weight"))
        if not saved:
            return
        saved_sgd, sgd = "exp_avg" not in saved, self.model.sgd_lr is not None
        if saved_sgd != sgd:
            raise ValueError(
                "the saved n-gram student's table was trained by "
                + ("fastText's SGD (ngram_update='sgd')" if saved_sgd else "AdamW (ngram_update='sparse' or 'dense')")
                + ", this one's by " + ("fastText's SGD" if sgd else "AdamW")
                + "; resume it with the rule it was trained with: --ngram-update "
                + ("sgd" if saved_sgd else "sparse (or dense, if it was trained dense)")
                + " (the default became sgd in this release; before, it was sparse)")

    def save(self, path: str | Path) -> None:
        """Save the student's weights (safetensors)."""
        from safetensors.torch import save_file

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.model.state_dict().items()}, str(path))
