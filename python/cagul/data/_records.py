"""Reading the rows of benchmark files (parquet, JSON, JSONL) with errors that name the
file, the row and the field."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import InputError
from ..files import read_text
from .paths import resolve_image_path

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")


class Where:
    """A location in a file for error messages: ``Where(file, row).at("a").at(2)`` reads
    ``file: row 3: field 'a[2]'`` (rows counted from 1)."""

    def __init__(self, file: str, row: int | None = None, field: str = ""):
        self.file, self.row, self.field = file, row, field

    def at(self, key: str | int) -> Where:
        if isinstance(key, int):
            return Where(self.file, self.row, f"{self.field}[{key}]")
        return Where(self.file, self.row, f"{self.field}.{key}" if self.field else key)

    def __str__(self) -> str:
        text = self.file if self.row is None else f"{self.file}: row {self.row + 1}"
        return f"{text}: field {self.field!r}" if self.field else text


def field(record: Any, key: str, where: Where, kind: type | tuple[type, ...] = object) -> Any:
    """``record[key]``, checked to be a ``kind``; ``ValueError`` naming ``where.at(key)``."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record or record[key] is None:
        raise ValueError(f"{where.at(key)}: missing")
    return check(record[key], where.at(key), kind)


def check(value: Any, where: Where, kind: type | tuple[type, ...]) -> Any:
    """``value`` if it is a ``kind`` (a ``str`` must be non-empty), else ``ValueError``."""
    names = {str: "a string", list: "a list", dict: "an object", Mapping: "an object"}
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(names.get(k, k.__name__) for k in kinds)
        raise ValueError(f"{where}: expected {expected}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{where}: empty string")
    return value


def table_files(directory: str) -> list[str]:
    """The parquet / JSON / JSONL files of ``directory`` (sorted); at least one."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no such directory: {directory}")
    files = sorted(f for f in os.listdir(directory) if f.endswith(TABLE_SUFFIXES))
    if not files:
        raise FileNotFoundError(
            f"{directory}: no data files ({', '.join('*' + s for s in TABLE_SUFFIXES)})"
        )
    return [os.path.join(directory, f) for f in files]


def read_rows(path: str) -> list[dict]:
    """The rows of a parquet file (needs pyarrow), a JSON file (a list of objects, or one
    object a line) or a JSONL file (one object a line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                f"{path}: reading parquet files needs pyarrow (pip install pyarrow), or "
                "convert the files to JSON / JSONL"
            ) from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises its own error types for bad files
            raise ValueError(f"{path}: not a readable parquet file: {e}") from None
    text = read_text(path)
    try:
        rows = json.loads(text) if path.endswith(".json") else None
    except json.JSONDecodeError:
        rows = None  # a .json file may hold JSON lines too
    if rows is None:
        rows = []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON: {e}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of objects, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{Where(path, i)}: expected an object, got {type(row).__name__}")
    return rows


class EncodedImage:
    """An image of a data set, verified when the data set is loaded and decoded only when a
    batch needs it (:meth:`decode`): ``data`` (the encoded bytes) or ``path`` (a file).
    ``where`` names the file, row and field for errors."""

    __slots__ = ("data", "path", "where")

    def __init__(self, where: Where, *, data: bytes | None = None, path: str | None = None):
        if (data is None) == (path is None):
            raise ValueError("EncodedImage: give exactly one of data and path")
        self.data, self.path, self.where = data, path, where
        with self._open() as im:
            im.verify()

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        from PIL import Image, UnidentifiedImageError

        source = io.BytesIO(self.data) if self.data is not None else self.path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(source) as im:
                    yield im
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise InputError(f"{self.where}: image too large (decompression bomb?): {e}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            if self.data is not None and not self.data:
                raise InputError(f"{self.where}: empty image data (0 bytes)") from None
            raise InputError(f"{self.where}: not a readable image: {e}") from None

    def decode(self):
        """The image as an RGB PIL image."""
        with self._open() as im:
            return im.convert("RGB")

    def __repr__(self) -> str:
        size = f"{len(self.data)} bytes" if self.data is not None else self.path
        return f"EncodedImage({size}, at {self.where})"


def image_field(value: Any, where: Where, base: str, confine: str | None = None) -> EncodedImage:
    """An image field, verified now and decoded later (:class:`EncodedImage`):
    ``{"bytes": ...}`` (raw bytes, or base64 text in JSON), or ``{"path": ...}`` or a path
    string (relative to ``base``) of an existing file; ``confine``: see
    :func:`~cagul.data.paths.resolve_image_path`."""
    if isinstance(value, Mapping) and value.get("bytes") is not None:
        where, data = where.at("bytes"), value["bytes"]
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except binascii.Error:
                raise ValueError(f"{where}: not base64 image data") from None
        if not isinstance(data, bytes):
            raise ValueError(f"{where}: expected bytes, got {type(data).__name__}")
        return EncodedImage(where, data=data)
    if isinstance(value, Mapping):
        where, value = where.at("path"), value.get("path")
        if value is None:
            raise ValueError(f"{where}: missing (an image needs bytes or a path)")
    path = resolve_image_path(check(value, where, str), base, where, confine)
    return EncodedImage(where, path=path)


def with_options(question: str, options: list[str]) -> str:
    """``question`` followed by its options on lines ``A: ...``, ``B: ...``."""
    return "\n".join([question, *(f"{chr(65 + i)}: {o}" for i, o in enumerate(options))])
