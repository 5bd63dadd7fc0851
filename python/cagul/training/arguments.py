"""``UnlearningArguments``: how a method is trained (schedule and objective), apart from
what the trained adapter is (:class:`cagul.config.CagulConfig`)."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import CagulConfig, Settings, check_at_least, check_choices, check_fields

# CAGUL's forget losses (per sample: a sample's "forget_loss" field picks one): the NLL of
# the refusal, bounded gradient ascent relu(ascent_bound - NLL) on the true answer, NPO
REFUSAL = "I don't know."
FORGET_LOSSES = ("idk", "bounded_ga", "npo")
AUTOCAST = ("auto", "bf16", "fp16", "none")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class UnlearningArguments(Settings):
    """Training arguments shared by every method (``cagul train --lr 1e-3``, ``--set
    lr=1e-3`` or a ``--config`` JSON file).

    Objective:
        forget_loss: CAGUL's forget loss: ``"idk"`` (NLL of ``refusal``), ``"bounded_ga"``
            (``relu(ascent_bound - NLL)`` of the true answer) or ``"npo"``.
        refusal: the answer taught on forget samples (CAGUL ``idk``, IdK, IdkDPO).
        retain_weight: weight of the retain term (CAGUL: ``KL(pass-through || adapted)``;
            baselines: their retain loss).
        discriminator_weight: weight of CAGUL's discriminator BCE.
        ascent_bound: CAGUL ``bounded_ga``'s bound on the answer NLL.
        npo_beta: NPO's and IdkDPO's inverse temperature ``beta``.
        simnpo_beta, simnpo_gamma: SimNPO's ``beta`` and reward margin ``gamma``.
        rmu_layer, rmu_steering: RMU's steered decoder layer and the norm of its target
            direction ``c * u``.
        reference_cache_mb: CAGUL: MiB of CPU memory for each sample's reference (the
            frozen VLM's answer log-probs and importance, which never change), so that a
            sample seen again (the next epoch) skips its reference pass; 0 = off. Keyed by
            the sample's exact inputs: augmented samples miss, never go stale
            (:mod:`cagul.training.reference_cache`). Not with ``fsdp_config``.
    Schedule:
        seed; lr, discriminator_lr (``None`` = ``lr``), weight_decay, warmup_steps,
        lr_schedule, max_grad_norm (``None`` = no clipping): AdamW settings.
        steps: optimizer steps; batch_size: samples per micro-batch (per process);
        grad_accum: micro-batches per optimizer step.
        autocast: ``"auto"`` (bf16 on CUDA devices that support it, else off), ``"bf16"``,
            ``"fp16"`` or ``"none"``.
        log_every, eval_every, save_every: steps between log lines, eval hook calls and
            checkpoints (0 = never; a checkpoint is always written at the end).
        gradient_checkpointing: recompute the wrapped VLM's activations in the backward
            pass (less memory, one more forward).
        fsdp_config: path of an FSDP config JSON file (e.g. ``examples/fsdp_config.json``,
            :mod:`cagul.training.fsdp`): shard the frozen weights with FSDP2 across the
            processes of ``torchrun`` (GPUs with nccl, or CPU with gloo).
    """

    forget_loss: str = "idk"
    refusal: str = REFUSAL
    retain_weight: float = 1.0
    discriminator_weight: float = 1.0
    ascent_bound: float = 10.0
    npo_beta: float = 0.1
    simnpo_beta: float = 2.5
    simnpo_gamma: float = 0.0
    rmu_layer: int = 1
    rmu_steering: float = 10.0
    reference_cache_mb: int = 0
    seed: int = 0
    lr: float = 1e-3
    discriminator_lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    autocast: str = "auto"
    log_every: int = 10
    eval_every: int = 0
    save_every: int = 0
    gradient_checkpointing: bool = False
    fsdp_config: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        check_choices(self, forget_loss=FORGET_LOSSES, autocast=AUTOCAST, lr_schedule=LR_SCHEDULES)
        check_at_least(self, 1, "steps", "batch_size", "grad_accum")
        check_at_least(
            self,
            0,
            "seed",
            "rmu_layer",
            "warmup_steps",
            "log_every",
            "eval_every",
            "save_every",
            "retain_weight",
            "discriminator_weight",
            "weight_decay",
            "simnpo_gamma",
            "reference_cache_mb",
        )
        for name in ("lr", "npo_beta", "ascent_bound", "simnpo_beta", "rmu_steering"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"UnlearningArguments: {name} must be > 0, got {getattr(self, name)}"
                )
        for name in ("discriminator_lr", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"UnlearningArguments: {name} must be > 0, got {value}")
        if not self.refusal.strip():
            raise ValueError("UnlearningArguments: refusal must not be empty")
        if self.reference_cache_mb and self.fsdp_config is not None:
            raise ValueError(
                "UnlearningArguments: reference_cache_mb cannot be used with fsdp_config (under "
                "FSDP every rank must run the reference pass on every micro-batch)"
            )


def parse_settings(values: dict) -> tuple[CagulConfig, UnlearningArguments]:
    """``(CagulConfig, UnlearningArguments)`` from ``values``, one JSON object (or
    ``--set`` list) mixing the fields of both, through ``transformers.HfArgumentParser``;
    an unknown key is a ``ValueError`` naming it."""
    from transformers import HfArgumentParser

    if not isinstance(values, dict):
        raise TypeError(f"settings must be a JSON object, got {type(values).__name__}")
    return HfArgumentParser((CagulConfig, UnlearningArguments)).parse_dict(values)


def settings_flags(*settings: type) -> argparse.ArgumentParser:
    """A parser (no ``--help``: the parent of a subcommand) with one flag per field of the
    dataclasses ``settings``, made by ``transformers.HfArgumentParser`` and listed under
    one heading per dataclass: ``--lr 1e-3``, ``--encoder_rank 32`` (or
    ``--encoder-rank``), ``--gradient_checkpointing``. A flag not given is absent from the
    parsed namespace, so what it would override (a ``--config`` file) is kept; the
    dataclass validates the values."""
    from transformers import HfArgumentParser

    parser = argparse.ArgumentParser(add_help=False)
    for cls in settings:
        group = parser.add_argument_group(f"{cls.__name__} fields")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for action in HfArgumentParser(cls, add_help=False)._actions:
            action.help = f"default: {defaults[action.dest]!r}".replace("%", "%%")
            action.default = argparse.SUPPRESS
            group._add_action(action)
    return parser
