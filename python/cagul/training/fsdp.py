"""FSDP2 for :class:`~cagul.training.CagulTrainer`: the method is sharded with
``torch.distributed.fsdp.fully_shard`` before the engine sees it, the same way on every
device (gloo on CPU, nccl on GPUs).

accelerate's own FSDP plugin is not used: it enables FSDP on GPUs only, its
``fsdp2_prepare_model`` cannot shard a method that registers a module twice (CagulModel
keeps layer L's attention as ``_attention``: the root unit would shard those parameters a
second time), and it requires every configured layer class to exist in the model.

The FSDP config file (``UnlearningArguments.fsdp_config``, e.g.
``examples/fsdp_config.json``) is a JSON object with

- ``transformer_layer_cls_to_wrap``: class names of the modules that each become one FSDP
  unit (decoder layers, vision blocks); names that are not in the model are skipped, so
  one file serves several model families;
- ``reshard_after_forward`` (default ``true``): free each unit's gathered weights after its
  forward pass (ZeRO-3) rather than keeping them until its backward pass (ZeRO-2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ..config import require_version
from ..errors import InputError, MissingInputError
from ..files import read_json

#: The first transformers whose Trainer takes a model sharded before it sees it
#: (``is_distributed_loading_by_transformers``: no DDP wrap, the trainable parameters
#: broadcast and their gradients averaged); torch's for ``fully_shard(ignored_params=)``.
MIN_TRANSFORMERS = "5.24"
MIN_TORCH = "2.7"
LAYER_CLASSES_KEY = "transformer_layer_cls_to_wrap"
RESHARD_KEY = "reshard_after_forward"


@dataclasses.dataclass(frozen=True)
class FsdpSettings:
    """What an FSDP config file says: the class names of the unit modules and whether a
    unit reshards after its forward pass."""

    layer_classes: tuple[str, ...]
    reshard_after_forward: bool = True


def check_fsdp_support() -> None:
    """A ``RuntimeError`` naming the installed and the needed version when this torch or
    transformers cannot run :func:`shard_method` under the Trainer (the rest of the
    framework works with older ones)."""
    import transformers

    for name, have, need in (
        ("transformers", transformers.__version__, MIN_TRANSFORMERS),
        ("torch", torch.__version__, MIN_TORCH),
    ):
        require_version("fsdp_config: FSDP training", name, have, need)


def read_fsdp_config(path: str | os.PathLike) -> FsdpSettings:
    """The :class:`FsdpSettings` of JSON file ``path``; a missing or bad file is an
    :class:`~cagul.errors.InputError` / ``MissingInputError`` naming it (and the key)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(f"fsdp_config: no file {path}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    unknown = sorted(set(data) - {LAYER_CLASSES_KEY, RESHARD_KEY})
    if unknown:
        raise InputError(
            f"{path}: unknown keys {unknown} (known: {LAYER_CLASSES_KEY}, {RESHARD_KEY})"
        )
    classes = data.get(LAYER_CLASSES_KEY)
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise InputError(f"{path}: {LAYER_CLASSES_KEY} must be a non-empty list of class names")
    reshard = data.get(RESHARD_KEY, True)
    if not isinstance(reshard, bool):
        raise InputError(f"{path}: {RESHARD_KEY} must be true or false, got {reshard!r}")
    return FsdpSettings(tuple(classes), reshard)


def shard_method(method: nn.Module, settings: FsdpSettings, device: torch.device) -> None:
    """Shards the frozen weights of ``method`` in place over all processes (a
    one-dimensional mesh on ``device``'s type): one FSDP unit per module whose class is
    named in ``settings`` (innermost first), then ``method`` itself as the root unit (the
    other frozen weights: embeddings, head, norms, projector). Each frozen parameter
    becomes a DTensor sharded on dim 0 across the ranks.

    The trainable parameters stay whole on every rank (moved to ``device``), as under
    DDP: the engine broadcasts them from rank 0 and averages their gradients
    (transformers' support for a model that owns its sharding). They are small for an
    adapter, and code outside the method's ``forward`` (``save_pretrained``, the
    checkpoints) reads them as they are -- FSDP2 hands a module's state dict out sharded.
    Needs an initialised process group."""
    layers = [m for m in method.modules() if type(m).__name__ in settings.layer_classes]
    if not layers:
        raise ValueError(
            f"FSDP: no module of {type(method).__name__} is one of the layer classes "
            f"{list(settings.layer_classes)} ({LAYER_CLASSES_KEY})"
        )
    trainable = {p for p in method.parameters() if p.requires_grad}
    for param in trainable:  # fully_shard moves only what it shards
        param.data = param.data.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in reversed(layers):  # pre-order reversed: inner units before outer ones
        fully_shard(
            module,
            mesh=mesh,
            reshard_after_forward=settings.reshard_after_forward,
            ignored_params=trainable,
        )
    # A parameter the root reaches outside its unit (a module registered a second time,
    # as CagulModel does with layer L's attention) stays in that unit.
    sharded = {p for p in method.parameters() if isinstance(p, DTensor)}
    fully_shard(method, mesh=mesh, ignored_params=trainable | sharded)


@contextlib.contextmanager
def root_unsharded(method: nn.Module) -> Iterator[None]:
    """The root unit's weights of a sharded ``method`` gathered for the block, for code
    that calls its modules outside its ``forward`` (an eval hook); the layer units gather
    themselves when called. A collective: every rank enters it."""
    method.unshard()
    try:
        yield
    finally:
        method.reshard()
