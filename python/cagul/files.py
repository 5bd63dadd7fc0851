"""Reading the project's input files (text, JSON, safetensors) with errors that name the
file and, for text, the line; writing output files atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .errors import InputError


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark is dropped). Bytes that are
    not UTF-8 raise :class:`InputError` naming ``path:line``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column "
            f"{e.start - line_start + 1})"
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``; bad UTF-8 or JSON (e.g. a file cut short) raises
    :class:`InputError` naming ``path:line``."""
    path = os.fspath(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None


@contextlib.contextmanager
def _safetensors_errors(path: str) -> Iterator[None]:
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``path`` on ``device``; a damaged file (e.g. cut
    short) raises :class:`InputError` naming it."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    with _safetensors_errors(path):
        return load_file(path, device=device)


def check_safetensors(path: str | os.PathLike) -> None:
    """Checks that safetensors file ``path`` is whole (its header parses and covers the
    file) without reading the tensors, for files another library loads; else
    :class:`InputError` naming it."""
    from safetensors import safe_open

    path = os.fspath(path)
    with _safetensors_errors(path), safe_open(path, framework="pt"):
        pass


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same directory and a
    rename, so ``path`` holds either its old content or all of ``text``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
