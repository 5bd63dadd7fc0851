"""Training: :class:`UnlearningArguments` (schedule and objective) and
:class:`CagulTrainer` (the loop every method trains in)."""

from .arguments import UnlearningArguments
from .trainer import CagulTrainer, distributed_context, seed_everything, to_device

__all__ = [
    "CagulTrainer",
    "UnlearningArguments",
    "distributed_context",
    "seed_everything",
    "to_device",
]
