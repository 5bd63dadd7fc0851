"""cagul: the CAGUL unlearning framework built on ``cagul_kernels``.

- :class:`CagulConfig`: what a trained adapter is (JSON round-trip, saved with it).
- :class:`VisualTokenEncoder`, :class:`ForgetDiscriminator`: the trainable modules.
- :class:`CagulModel`: a frozen VLM wrapped PEFT-style (``forward`` / ``generate`` /
  ``save_pretrained`` / ``from_pretrained``).
- :mod:`cagul.methods`: one module per unlearning method behind a registry
  (:func:`get_method`): :class:`CagulMethod` and the finetuning baselines (GA, GradDiff,
  KL, NPO, IdK, SimNPO, IdkDPO, RMU); :class:`Method`: what a method implements.
- :mod:`cagul.training`: :class:`UnlearningArguments` (schedule, objective) and
  :class:`CagulTrainer` (the loop every method trains in).
- :mod:`cagul.data`: the sample format and collator, the benchmark readers (synthetic,
  MLLMU-Bench, FIUBench); :mod:`cagul.evaluation`; :mod:`cagul.cli`: the ``cagul``
  command; :class:`UsageError`: a user's mistake (exit status 2).

The names are imported on first use, so ``import cagul`` (and ``cagul --help``) does not
import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CagulConfig": ".config",
    "CagulMethod": ".methods.cagul",
    "CagulModel": ".model",
    "CagulTrainer": ".training",
    "ForgetDiscriminator": ".modules",
    "Method": ".methods.base",
    "UnlearningArguments": ".training",
    "UsageError": ".errors",
    "VisualTokenEncoder": ".modules",
    "get_method": ".methods.base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cagul' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
