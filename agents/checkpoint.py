"""Checkpoints are data: nested state (dicts, lists, numbers, strings, bytes, tensors, arrays) written as tensors in
safetensors plus a JSON skeleton for everything else. Loading parses JSON and tensors only; no code runs on load (no
pickle, no ``torch.load`` of arbitrary objects).

Two layouts:
- a saved agent (:func:`save_state` / :func:`load_state`): ``<name>.safetensors`` + ``<name>.json`` in a folder;
- a run checkpoint (:func:`save_checkpoint` / :func:`load_checkpoint`): one safetensors file whose header metadata
  holds the JSON skeleton, written to a temporary file and renamed over the old one, so that a process killed at
  any moment leaves either the previous checkpoint or the new one, complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TENSOR, ARRAY, DICT, BYTES = "__tensor__", "__array__", "__dict__", "__bytes__"
CHECKPOINT_FORMAT = "kd-gym-checkpoint/1"  # the header metadata key "format" of a run checkpoint


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """A JSON-able skeleton of ``value``; tensors and arrays go to ``tensors`` under ``path`` (made unique)."""
    while path in tensors:  # a key holding a dot could repeat another entry's path
        path += "_"
    if isinstance(value, torch.Tensor):
        # stored flat (0-d tensors too: shape below) and copied, since safetensors refuses tensors that share memory
        tensors[path] = value.detach().cpu().reshape(-1).clone()
        return {TENSOR: path, "shape": list(value.shape)}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.array(value, copy=True).reshape(-1))  # views of one buffer: copied too
        return {ARRAY: path, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        tensors[path] = torch.frombuffer(bytearray(value), dtype=torch.uint8) if value else torch.zeros(0, dtype=torch.uint8)
        return {BYTES: path}
    if isinstance(value, dict):
        # keys keep their type (optimizer states are keyed by int): a list of [key, value] pairs
        return {DICT: [[key, _encode(item, tensors, f"{path}.{key}")] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(item, tensors, f"{path}.{i}") for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save {type(value).__name__} at {path!r} in a checkpoint; use tensors, arrays, numbers, "
                    "strings, bytes, lists or dicts")


def _decode(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if TENSOR in skeleton:
            return tensors[skeleton[TENSOR]].reshape(skeleton["shape"])
        if ARRAY in skeleton:
            return tensors[skeleton[ARRAY]].numpy().reshape(skeleton["shape"])
        if BYTES in skeleton:
            return tensors[skeleton[BYTES]].numpy().tobytes()
        return {key: _decode(item, tensors) for key, item in skeleton[DICT]}
    if isinstance(skeleton, list):
        return [_decode(item, tensors) for item in skeleton]
    return skeleton


def save_state(folder: str | Path, state: dict[str, Any], name: str = "state") -> None:
    """Write ``state`` to ``folder/<name>.safetensors`` and ``folder/<name>.json``, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors, "state")
    _write_atomic(folder / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    _write_atomic(folder / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(skeleton)))


def load_state(folder: str | Path, name: str = "state") -> dict[str, Any]:
    """Read a state written by :func:`save_state`.

    :raises FileNotFoundError: when either file is missing; ``ValueError`` when they are unreadable.
    """
    folder = Path(folder)
    files = folder / f"{name}.safetensors", folder / f"{name}.json"
    for path in files:
        if not path.exists():
            raise FileNotFoundError(f"checkpoint file {path} is missing; save the agent with agent.save({str(folder)!r})")
    try:
        tensors = load_file(str(files[0]))
        skeleton = json.loads(files[1].read_text())
        return _decode(skeleton, tensors)
    except Exception as error:  # safetensors, JSON or structure errors: all mean a damaged checkpoint
        raise ValueError(f"checkpoint in {folder} is unreadable or corrupted ({type(error).__name__}: {error}); "
                         "save it again") from error


def _write_atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``, flushed to disk first: ``path`` is always old or new, whole."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to one safetensors file: its tensors, and the JSON skeleton (everything else) in the header.

    The file is replaced atomically: until the new one is complete, ``path`` holds the previous checkpoint.
    :param path: the file, e.g. ``run/checkpoint.safetensors``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(state, tensors, "state"))
    _write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT,
                                                                           "skeleton": skeleton}))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    :raises FileNotFoundError: when there is none; ``ValueError`` naming the file when it is unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        return _decode(json.loads(metadata["skeleton"]), tensors)
    except Exception as error:  # safetensors, JSON or structure errors: all mean a damaged checkpoint
        raise ValueError(f"checkpoint {path} is unreadable or corrupted ({type(error).__name__}: {error}); delete it "
                         "to start the run over") from error
