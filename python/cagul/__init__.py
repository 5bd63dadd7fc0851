"""cagul: the CAGUL unlearning framework built on ``cagul_kernels``.

- :class:`CagulConfig`: method + training settings (JSON round-trip).
- :class:`VisualTokenEncoder`, :class:`ForgetDiscriminator`: the trainable modules.
- :class:`CagulModel`: a frozen VLM wrapped PEFT-style (``forward`` / ``generate`` /
  ``save_pretrained`` / ``from_pretrained``).
- :class:`CagulTrainer`, :class:`CagulMethod`, :class:`Method`: the training loop.
- :class:`UnlearningBaseline`: the finetuning baselines (GA, GradDiff, KL, NPO, IdK).
- :mod:`cagul.data`: the sample format and collator, the benchmark readers (synthetic,
  MLLMU-Bench, FIUBench); :mod:`cagul.cli`: the ``cagul`` command.

The names are imported on first use, so ``import cagul`` (and ``cagul --help``) does not
import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CagulConfig": ".config",
    "CagulMethod": ".train",
    "CagulModel": ".model",
    "CagulTrainer": ".train",
    "ForgetDiscriminator": ".modules",
    "Method": ".train",
    "UnlearningBaseline": ".baselines",
    "VisualTokenEncoder": ".modules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cagul' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
