"""The student and its trainer: one KD update per call, with per-instance teacher weights.

Two students share :class:`StudentTrainer`:

- :class:`FullStudent`: a small transformer trained from tokens, initialised from the first layers of a
  teacher-family checkpoint (default: the first 2 layers of MiniLM).
- :class:`LiteStudent`: a small MLP head over frozen, cached sentence embeddings; the same decision problem at a
  fraction of the cost, so agents can be benchmarked on a CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd_gym.data import KDData, SplitTensors
from kd_gym.embeddings import mean_pool
from kd_gym.inference import autocast, autocast_dtype, resolve_device
from kd_gym.losses import KDLoss, multi_teacher_kd_loss


class LiteStudent(nn.Module):
    """An MLP over sentence embeddings: (B, D) -> logits (B, C) and representation (B, hidden).

    :param input_size: embedding size D.
    :param num_labels: C.
    :param hidden_size: hidden units (0: a linear classifier; the representation is then the input).
    :param dropout: dropout on the hidden layer.
    """

    def __init__(self, input_size: int, num_labels: int, hidden_size: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.representation_size = hidden_size or input_size
        self.body = (
            nn.Sequential(nn.Linear(input_size, hidden_size), nn.GELU(), nn.Dropout(dropout))
            if hidden_size else nn.Identity()
        )
        self.classifier = nn.Linear(self.representation_size, num_labels)

    def fresh_modules(self) -> list[nn.Module]:
        """The modules drawn at random on a new student (all of them: nothing is pre-trained)."""
        return [m for m in self.modules() if isinstance(m, nn.Linear)]

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.body(embeddings)
        return self.classifier(representation), representation


class FullStudent(nn.Module):
    """A HuggingFace sequence classifier trained from tokens: inputs (B, L) -> logits (B, C), representation (B, H).

    :param checkpoint: hub id or folder of a teacher-family encoder.
    :param num_labels: C.
    :param num_layers: keep the first ``num_layers`` transformer layers (None: all).
    """

    def __init__(self, checkpoint: str | Path, num_labels: int, num_layers: int | None = 2) -> None:
        super().__init__()
        from kd_gym.cache import resolve_model_folder
        from kd_gym.teachers import load_classifier

        extra = {"num_hidden_layers": num_layers} if num_layers else {}
        self.model, self.tokenizer = load_classifier(
            resolve_model_folder(checkpoint), num_labels=num_labels, ignore_mismatched_sizes=True, **extra
        )
        self.representation_size = self.model.config.hidden_size

    def fresh_modules(self) -> list[nn.Module]:
        """The modules drawn at random on a new student: the classification head (the encoder is pre-trained)."""
        return [m for m in self.model.classifier.modules() if isinstance(m, nn.Linear)]

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**inputs, output_hidden_states=True)
        return out.logits, mean_pool(out.hidden_states[-1], inputs["attention_mask"])


class StudentTrainer:
    """Owns the student model, optimizer, device and precision; one KD update per :meth:`train_step`.

    :param model: a :class:`LiteStudent` or :class:`FullStudent` (any module returning (logits, representation)).
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
        self.model = model.to(self.device)
        self.data = data.to(self.device)
        self.lr, self.weight_decay = lr, weight_decay
        self.alpha, self.temperature, self.grad_clip = alpha, temperature, grad_clip
        self.eval_batch_size = eval_batch_size
        self._initial_state = copy.deepcopy(self.model.state_dict())
        self.optimizer = self._make_optimizer()
        self.steps = 0

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def reset(self, seed: int | None = None) -> None:
        """A fresh student: the initial weights, a fresh optimizer and, when ``seed`` is given, a new draw of the
        randomly initialised modules from ``torch.manual_seed(seed)`` (same seed, same student)."""
        self.model.load_state_dict(self._initial_state)
        if seed is not None:
            torch.manual_seed(seed)
            for module in getattr(self.model, "fresh_modules", list)():
                module.reset_parameters()
        self.optimizer = self._make_optimizer()
        self.steps = 0

    def split(self, name: str) -> SplitTensors:
        return self.data.splits[name]

    def forward(self, batch: dict, *, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Student (logits (B, C), representation (B, H)) on a batch; in train mode when ``grad``."""
        self.model.train(grad)
        with torch.set_grad_enabled(grad), autocast(self.device, self.dtype):
            logits, representation = self.model(**batch["inputs"])
        return logits.float(), representation.float()

    def train_step(self, batch: dict, weights: torch.Tensor | np.ndarray, logits: torch.Tensor | None = None) -> KDLoss:
        """One optimizer update on ``batch`` with per-instance teacher weights.

        :param batch: from ``SplitTensors.batch``; must hold ``teacher_logits`` (B, K, C).
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
                                       alpha=self.alpha, temperature=self.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return result

    @torch.no_grad()
    def predict(self, split: str, indices: np.ndarray | None = None) -> torch.Tensor:
        """(N, C) student logits on ``split`` (or its rows ``indices``), in eval mode."""
        tensors = self.split(split)
        rows = np.arange(len(tensors)) if indices is None else np.asarray(indices)
        out = [self.forward(tensors.batch(rows[i : i + self.eval_batch_size]), grad=False)[0]
               for i in range(0, len(rows), self.eval_batch_size)]
        return torch.cat(out)

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

    def save(self, path: str | Path) -> None:
        """Save the student's weights (safetensors)."""
        from safetensors.torch import save_file

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.model.state_dict().items()}, str(path))
