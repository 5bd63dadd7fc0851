"""cagul: the CAGUL unlearning framework built on ``cagul_kernels``.

- :class:`CagulConfig`: method + training settings (JSON round-trip).
- :class:`VisualTokenEncoder`, :class:`ForgetDiscriminator`: the trainable modules.
- :class:`CagulModel`: a frozen VLM wrapped PEFT-style (``forward`` / ``generate`` /
  ``save_pretrained`` / ``from_pretrained``).
- :class:`CagulTrainer`, :class:`CagulMethod`, :class:`Method`: the training loop.
- :class:`UnlearningBaseline`: the finetuning baselines (GA, GradDiff, KL, NPO, IdK).
- :mod:`cagul.data`: the sample format and collator, the synthetic benchmark, the
  MLLMU-Bench / FIUBench readers; :mod:`cagul.cli`: the ``cagul`` command.
"""

from .baselines import UnlearningBaseline
from .config import CagulConfig
from .model import CagulModel
from .modules import ForgetDiscriminator, VisualTokenEncoder
from .train import CagulMethod, CagulTrainer, Method

__all__ = [
    "CagulConfig",
    "CagulMethod",
    "CagulModel",
    "CagulTrainer",
    "ForgetDiscriminator",
    "Method",
    "UnlearningBaseline",
    "VisualTokenEncoder",
]
