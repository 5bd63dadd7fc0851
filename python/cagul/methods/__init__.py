"""Unlearning methods, one module each, behind a registry (:mod:`cagul.methods.base`):
CAGUL (``cagul``) and the finetuning baselines ``ga``, ``graddiff``, ``kl``, ``npo``,
``idk``, ``simnpo``, ``idkdpo``, ``rmu`` (:mod:`cagul.methods.finetune`).

:func:`method_names` lists them from the package's files without importing anything (the
``cagul`` command's choices); :func:`get_method` imports one.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

# modules of this package that are not methods
SUPPORT_MODULES = ("base", "finetune")
_LAZY = ("Method", "get_method", "register_method")

__all__ = ["Method", "baseline_names", "get_method", "method_names", "register_method"]


def method_names() -> tuple[str, ...]:
    """Every method of this package, sorted, ``"cagul"`` first (nothing is imported)."""
    here = os.path.dirname(os.path.abspath(__file__))
    names = sorted(
        info.name for info in pkgutil.iter_modules([here]) if info.name not in SUPPORT_MODULES
    )
    return tuple(sorted(names, key=lambda n: n != "cagul"))


def baseline_names() -> tuple[str, ...]:
    """The finetuning baselines: every method except CAGUL."""
    return tuple(n for n in method_names() if n != "cagul")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cagul.methods' has no attribute {name!r}")
    return getattr(importlib.import_module(".base", __name__), name)
