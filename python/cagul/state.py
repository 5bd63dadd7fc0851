"""Trained state I/O shared by the adapter, the baselines and the trainer's checkpoints:
validated copies of tensors, atomic directory writes, and nested states (optimizer,
scheduler, RNG) stored as safetensors + JSON -- nothing is ever pickled."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import save_file

from .files import read_json, read_safetensors


def copy_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], owner: str):
    """Copies ``state`` into the tensors ``own`` once :func:`check_state` passes."""
    check_state(own, state, owner)
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], owner: str):
    """``state`` fits the tensors ``own``: same names, shapes and dtypes, finite values,
    else a ``ValueError`` naming ``owner`` and the tensor."""
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"{owner}: state mismatch, missing {missing}, unexpected {unexpected}")
    for name, value in state.items():
        if value.shape != own[name].shape:
            raise ValueError(
                f"{owner}: {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}"
            )
        if value.dtype != own[name].dtype:
            raise ValueError(f"{owner}: {name} has dtype {value.dtype}, expected {own[name].dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{owner}: {name} has non-finite values (NaN or inf)")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yields a new temporary directory next to ``path`` to write into; when the block
    ends without an error it takes ``path``'s place (entries of an existing ``path`` that
    were not written anew -- checkpoints, logs -- are moved over first). A kill before
    the swap leaves ``path`` as it was; a failed block removes the temporary directory."""
    path = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.isdir(path):
        os.rename(tmp, path)
        return
    for entry in os.listdir(path):
        if not os.path.lexists(os.path.join(tmp, entry)):
            os.rename(os.path.join(path, entry), os.path.join(tmp, entry))
    old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
    os.rename(path, os.path.join(old, base))
    os.rename(tmp, path)
    shutil.rmtree(old)


# ---------------------------------------------------------------------- nested states

_TENSOR, _TUPLE, _INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"


def save_nested(obj: Any, path: str) -> None:
    """Writes ``obj`` (dicts, lists, tuples, numbers, strings, ``None`` and tensors, as in
    optimizer / scheduler / RNG states) to ``path.json`` + ``path.safetensors``."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = value.detach().cpu().contiguous()
            return {_TENSOR: key}
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, int) for k in value) and value:
                return {_INT_KEYS: {str(k): encode(v) for k, v in value.items()}}
            return {str(k): encode(v) for k, v in value.items()}
        if hasattr(value, "tolist"):  # numpy arrays and scalars
            return encode(value.tolist())
        return value

    document = encode(obj)
    save_file(tensors, path + ".safetensors")
    with open(path + ".json", "w") as f:
        json.dump(document, f)


def load_nested(path: str) -> Any:
    """Reads what :func:`save_nested` wrote (no unpickling; tensors on the CPU)."""
    tensors = read_safetensors(path + ".safetensors")
    document = read_json(path + ".json")

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(decode(v) for v in value[_TUPLE])
        if _INT_KEYS in value:
            return {int(k): decode(v) for k, v in value[_INT_KEYS].items()}
        return {k: decode(v) for k, v in value.items()}

    return decode(document)
