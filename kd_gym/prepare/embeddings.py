"""Frozen sentence embeddings for the lite student, computed once per split and cached on disk.

The default encoder is all-MiniLM-L6-v2 with its own recipe: mean pooling over tokens, then L2 normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kd_gym.prepare.cache import (
    cached_tensor,
    fingerprint,
    hash_files,
    kd_gym_home,
    minilm_path,
    resolve_model_folder,
)
from kd_gym.prepare.inference import (
    autocast_dtype,
    batched_forward,
    check_model_folder,
    quiet_transformers,
    resolve_device,
)
from kd_gym.tasks import Task


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) token states and (B, L) mask -> (B, H) mean over real tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a HuggingFace encoder, cached per task split.

    :param model: hub id or local folder of the encoder (default: the packaged MiniLM).
    :param cache_dir: cache root (default ``$KD_GYM_HOME``).
    :param max_length: max tokens per input; part of the cache key.
    """

    def __init__(self, model: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 max_length: int = 64, batch_size: int = 128, device: str = "auto", precision: str = "auto") -> None:
        if model is None:
            model = minilm_path()
        self.folder = resolve_model_folder(model)
        self.cache_dir = Path(cache_dir) if cache_dir else kd_gym_home()
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self._files_hash: str | None = None

    def encode(self, task: Task, split: str) -> torch.Tensor:
        """(N, H) float32 embeddings of ``split``; computed once, then read from the cache."""
        if self._files_hash is None:
            check_model_folder(self.folder, f"sentence encoder {self.folder.name!r}")
            self._files_hash = hash_files(self.folder)
        key = fingerprint(self._files_hash, task.fingerprint(split), self.max_length, str(self.dtype), "mean-l2")
        path = self.cache_dir / "embeddings" / f"{self.folder.name}-{split}-{key[:20]}.safetensors"

        def compute() -> torch.Tensor:
            from transformers import AutoModel, AutoTokenizer

            with quiet_transformers():
                model = AutoModel.from_pretrained(self.folder).to(self.device)
                tokenizer = AutoTokenizer.from_pretrained(self.folder)

            def embed(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                hidden = model(**batch).last_hidden_state
                return F.normalize(mean_pool(hidden.float(), batch["attention_mask"]), dim=-1)

            return batched_forward(
                model, tokenizer, task.texts(split), task.text_pairs(split), embed, max_length=self.max_length,
                batch_size=self.batch_size, device=self.device, dtype=self.dtype, desc=f"embed {split}",
            )

        return cached_tensor(path, key, len(task.splits[split]), compute)
