"""One entry point for every data format the ``cagul`` command reads:
:func:`load_dataset` (``synthetic``, ``mllmu``, ``fiubench``, ``jsonl``) and
:func:`detect_format` (``auto``)."""

from __future__ import annotations

import os
from typing import Any

from .benchmark import Benchmark, load_benchmark
from .fiubench import fiubench_dir, load_fiubench
from .mllmu import is_mllmu, load_mllmu
from .samples import load_jsonl

FORMATS = ("auto", "jsonl", "synthetic", "mllmu", "fiubench")


def detect_format(path: str | os.PathLike) -> str:
    """``jsonl`` for a file; for a directory ``synthetic`` (it has meta.json),
    ``fiubench`` (full.json + split.json, or under ``dataset/``) or ``mllmu`` (a
    ``forget_5`` / ``forget_10`` / ``forget_15`` subset)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return "jsonl"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    found = [
        name
        for name, match in (
            ("synthetic", os.path.isfile(os.path.join(path, "meta.json"))),
            ("fiubench", fiubench_dir(path) is not None),
            ("mllmu", is_mllmu(path)),
        )
        if match
    ]
    if len(found) > 1:
        raise ValueError(f"{path}: looks like both {' and '.join(found)}; give the format")
    if not found:
        raise ValueError(
            f"{path}: unknown data format (no meta.json, full.json + split.json or "
            "forget_5/ forget_10/ forget_15/ subset); give the format"
        )
    return found[0]


def load_dataset(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    forget_split: str | None = None,
    strict_paths: bool = False,
) -> Benchmark:
    """The benchmark at ``path`` in ``format`` (one of :data:`FORMATS`). ``forget_split``
    picks the forget set: ``forget_5`` / ``forget_10`` / ``forget_15`` for MLLMU-Bench
    (default ``forget_5``), a key of split.json for FIUBench (default ``forget5``). A JSONL
    file's samples are grouped by their ``split`` field, else ``forget`` / ``retain``.
    ``strict_paths``: image files must lie inside the data directory (``path``, or a JSONL
    file's directory); by default a data set may name images anywhere."""
    path = os.fspath(path)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "auto":
        format = detect_format(path)
    if forget_split is not None and format not in ("mllmu", "fiubench"):
        raise ValueError(f"forget_split applies to mllmu and fiubench data, not {format}")
    options: dict[str, Any] = {"strict_paths": strict_paths}
    if forget_split is not None:
        options["forget_split"] = forget_split
    if format == "mllmu":
        return load_mllmu(path, **options)
    if format == "fiubench":
        return load_fiubench(path, **options)
    if format == "synthetic":
        return load_benchmark(path, strict_paths=strict_paths)
    splits: dict[str, list[dict]] = {}
    for sample in load_jsonl(path, strict_paths=strict_paths):
        split = sample.get("split") or ("forget" if sample["is_forget"] else "retain")
        splits.setdefault(split, []).append(sample)
    root = os.path.dirname(os.path.abspath(path))
    return Benchmark(root, {"format": "jsonl"}, [], splits, tuple(splits))
