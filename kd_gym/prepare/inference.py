"""Device, precision, and batched forward passes of HuggingFace encoders over a list of texts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 / AMX), where bf16 is faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto", "bf16" or "fp32") on ``device``; None means fp32.

    "auto" picks bf16 on CUDA, and on CPUs with native bf16 support; fp32 elsewhere.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """An autocast context for ``device`` that is a no-op when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (expected missing / unused keys) inside the block."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


_CHECKED_FOLDERS: set[tuple] = set()  # (folder, its files' names, sizes and times) already checked in this process


def check_model_folder(folder: Path, who: str) -> None:
    """Refuse a HuggingFace model folder that lacks what its model type needs: ``config.json`` and a tokenizer
    with a vocabulary. Without its vocabulary files transformers builds a tokenizer of special tokens only, which
    reads every text as ``[UNK]``: a teacher would give the same logits on every row, an encoder the same embedding.

    :param who: what the folder is, for the message (``"teacher 'x'"``).
    :raises FileNotFoundError: naming ``who``, the folder and the missing file(s).
    """
    stamp = (str(folder), tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                       for p in folder.iterdir() if p.is_file())))
    if stamp in _CHECKED_FOLDERS:
        return
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{who}: no config.json in {folder}; save the model there with "
                                "save_pretrained (it writes config.json beside the weights), or fix the path")
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise FileNotFoundError(f"{who}: no tokenizer could be loaded from {folder} ({error}); save the "
                                "teacher's tokenizer there with tokenizer.save_pretrained(folder)") from error
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        needed = sorted(set(getattr(type(tokenizer), "vocab_files_names", {}).values())) or ["tokenizer.json"]
        present = sorted(p.name for p in folder.iterdir() if p.name.startswith(("tokenizer", "vocab", "merges",
                                                                                "special_tokens")))
        raise FileNotFoundError(
            f"{who}: the tokenizer in {folder} has no vocabulary ({len(tokenizer)} tokens, all special: "
            f"{tokenizer.all_special_tokens}), so every text would read as unknown tokens; its vocabulary file "
            f"({' or '.join(needed)}) is missing (tokenizer files there: {present or 'none'}). Copy the tokenizer "
            "files from where the teacher was trained, or save them with tokenizer.save_pretrained(folder)")
    _CHECKED_FOLDERS.add(stamp)


def batched_forward(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    output_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    *,
    max_length: int = 64,
    batch_size: int = 128,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    desc: str = "forward",
) -> torch.Tensor:
    """Run ``output_fn(batch)`` over all texts in length-sorted batches; returns (N, ...) float32 in input order.

    Sorting by length keeps padding, and so wasted compute, small.
    """
    device = device or torch.device("cpu")
    encoded = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    outputs: list[torch.Tensor] = []
    model.eval()
    with torch.inference_mode(), autocast(device, dtype):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start : start + batch_size]
            features = [{key: encoded[key][i] for key in encoded} for i in idx]
            batch = tokenizer.pad(features, return_tensors="pt")
            batch = {key: value.to(device) for key, value in batch.items()}
            outputs.append(output_fn(batch).float().cpu())
    stacked = torch.cat(outputs) if outputs else torch.empty(0)
    result = torch.empty_like(stacked)
    result[torch.from_numpy(order)] = stacked
    return result
