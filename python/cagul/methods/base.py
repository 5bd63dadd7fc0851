"""The ``Method`` protocol and the registry of unlearning methods.

Every method is one module of this package, named like the method (``ga.py`` is ``"ga"``),
whose class is decorated with :func:`register_method`; :func:`get_method` imports one
(:func:`cagul.methods.method_names` lists them without importing). Adding a method is
adding one file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from . import method_names

_REGISTRY: dict[str, type] = {}


@runtime_checkable
class Method(Protocol):
    """What the trainer trains (implemented by ``nn.Module`` subclasses).

    - ``forward(batch) -> (loss, metrics)``: scalar loss of one micro-batch and float
      metrics with the same keys on every call (they are averaged across processes).
    - ``trainable_parameters()``: parameters or AdamW param-group dicts; nothing else of
      the module is trained (nor synchronised under DDP).
    - ``trainable_state_dict()`` / ``load_trainable_state_dict(state)``: the trained state
      (checkpoints).
    - ``save_pretrained(path)``: the final artefact (an adapter, a finetuned model, ...).
    """

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...

    def trainable_parameters(self) -> Sequence[nn.Parameter] | Sequence[dict]: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def save_pretrained(self, path: str) -> None: ...


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: registers the method class under ``name`` (its module's name)."""

    def register(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"register_method: {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def get_method(name: str) -> type:
    """The class of method ``name`` (imports its module)."""
    names = method_names()
    if name not in names:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(names)})")
    importlib.import_module(f"{__package__}.{name}")
    return _REGISTRY[name]
