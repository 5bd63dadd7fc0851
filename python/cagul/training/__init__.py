"""Training: :class:`UnlearningArguments` (schedule and objective) and
:class:`CagulTrainer` (a ``transformers.Trainer`` every method trains in, DDP or FSDP:
:mod:`cagul.training.fsdp`). The trainer's names are imported on first use, so the
arguments do not import transformers."""

from __future__ import annotations

import importlib
from typing import Any

from .arguments import UnlearningArguments

_TRAINER_EXPORTS = (
    "CagulTrainer",
    "distributed_context",
    "seed_everything",
    "to_device",
    "training_arguments",
)

__all__ = ["UnlearningArguments", *_TRAINER_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _TRAINER_EXPORTS:
        raise AttributeError(f"module 'cagul.training' has no attribute {name!r}")
    return getattr(importlib.import_module(".trainer", __name__), name)
