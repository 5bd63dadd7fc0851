"""Checks the ``cagul`` command runs on its flags before any work starts; each failure is a
:class:`~cagul.errors.UsageError` naming the flag."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from .errors import UsageError
from .files import check_safetensors, read_json

# What reading a bad input raises: a bad value or file format (ValueError, TypeError), a
# missing or unreadable file (OSError), a missing optional reader (ImportError).
INPUT_ERRORS = (ValueError, TypeError, OSError, ImportError)


@contextlib.contextmanager
def reading_inputs() -> Iterator[None]:
    """Marks the part of a command that reads its inputs (config, data, model, adapter):
    the errors of :data:`INPUT_ERRORS` raised there are user errors (a
    :class:`UsageError` with the same message). After it, the same exceptions are bugs and
    keep their traceback."""
    try:
        yield
    except (UsageError, ModuleNotFoundError):
        raise  # a missing module: the command names the extra to install
    except INPUT_ERRORS as e:
        raise UsageError(str(e) or type(e).__name__) from e


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _check_writable_parent(flag: str, path: str) -> None:
    parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {parent}")


def check_output_file(flag: str, path: str) -> None:
    """``path`` can be written as a file: it is not a directory, and it (or the directory
    it will be created in) is writable. Missing parent directories are created later."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory, expected a file path")
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")
    _check_writable_parent(flag, path)


def check_output_dir(flag: str, path: str) -> None:
    """``path`` can hold the command's output files: an existing writable directory, or a
    path that can be created as one."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: directory not writable")
    _check_writable_parent(flag, path)


def check_adapter_files(flag: str, path: str) -> None:
    """Parses the JSON files and checks the safetensors headers of adapter directory
    ``path`` (a CAGUL or a peft adapter), so a damaged file is named before the VLM loads;
    what they hold is checked when the adapter loads."""
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: not a directory")
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        if name.endswith(".json"):
            read_json(file)
        elif name.endswith(".safetensors"):
            check_safetensors(file)


def check_device(flag: str, name: str | None) -> torch.device | None:
    """``torch.device(name)`` (``None`` stays ``None``: the default device) if it is the
    CPU or an available accelerator such as ``cuda``, ``cuda:1`` or ``mps``."""
    import torch

    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {name!r}: not a device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise UsageError(f"{flag} {name}: {device.type} is not available on this machine")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise UsageError(f"{flag} {name}: this machine has {count} {device.type} device(s)")
    return device


def one_line(message: str) -> str:
    """``message`` with its lines joined by ``"; "`` (the command's errors are one line)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())
