"""Checkpoints are data: nested state (dicts, lists, numbers, strings, tensors, arrays) written as one safetensors file
of tensors plus one JSON file for everything else. Loading parses JSON and tensors only; no code runs on load (no
pickle, no ``torch.load`` of arbitrary objects).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TENSOR, ARRAY, DICT, BYTES = "__tensor__", "__array__", "__dict__", "__bytes__"


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """A JSON-able skeleton of ``value``; tensors and arrays go to ``tensors`` under ``path``."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().reshape(-1)  # 0-d tensors are stored flat: shape below
        return {TENSOR: path, "shape": list(value.shape)}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value).reshape(-1))
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
    for path, write in ((folder / f"{name}.safetensors", lambda p: save_file(tensors, str(p))),
                        (folder / f"{name}.json", lambda p: p.write_text(json.dumps(skeleton)))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        write(tmp)
        os.replace(tmp, path)


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
