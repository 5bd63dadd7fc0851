"""``CagulConfig``: every setting of the method and of its training loop, JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from cagul_kernels.ops.transform_scatter import ACTIVATIONS

MODES = ("input", "inline")
# = cagul_kernels.integrations.transformers.QUERY_POLICIES, spelled out so that the config
# does not import transformers (a test keeps the two equal)
QUERY_POLICIES = ("question", "last", "all_text")
FORGET_LOSSES = ("idk", "ga", "npo")
AUTOCAST = ("auto", "bf16", "fp16", "none")
LR_SCHEDULES = ("constant", "cosine")
CONFIG_NAME = "cagul_config.json"


@dataclasses.dataclass
class CagulConfig:
    """Settings of CAGUL (method) and of ``CagulTrainer`` (training).

    Method:
        layer: LLM layer L whose attention gives the importance of visual tokens.
        k / ratio: how many low-importance visual tokens to transform per sample: exactly
            ``k`` (capped at the sample's visual token count) or ``ceil(ratio * n_visual)``;
            set exactly one (``ratio`` is the default).
        query: query-token policy for the importance: ``"question"`` (text after the last
            image), ``"last"`` (final token) or ``"all_text"``.
        mode: ``"input"`` transforms the projected visual tokens (the LLM inputs; importance
            from a pass that stops after layer L, then a full pass) and ``"inline"`` the
            hidden states of layer L's output (one pass).
        encoder_rank, encoder_activation: visual token encoder ``D -> rank -> D``.
        discriminator_hidden: width of the forget discriminator.
        gate_threshold: a sample is transformed when ``sigmoid(logit) >= gate_threshold``.
        hidden_size: the VLM's text hidden size, filled in by ``CagulModel`` (``None`` =
            not bound yet); loading refuses a VLM with another size.
        backend: kernel backend for the ops (``None`` = default for the device).

    Training:
        forget_loss: ``"idk"`` (NLL of ``refusal``), ``"ga"`` (gradient ascent on the true
            answer, bounded: ``relu(ga_bound - NLL)``) or ``"npo"`` (NPO against the
            pass-through model, ``npo_beta``).
        retain_weight: weight of ``KL(pass-through || transformed)`` on retain answers.
        discriminator_weight: weight of the discriminator's BCE.
        lr, discriminator_lr (``None`` = ``lr``), weight_decay, warmup_steps,
        lr_schedule, max_grad_norm (``None`` = no clipping): AdamW settings.
        steps: optimizer steps; batch_size: samples per micro-batch (per process);
        grad_accum: micro-batches per optimizer step.
        autocast: ``"auto"`` (bf16 on CUDA devices that support it, else off), ``"bf16"``,
            ``"fp16"`` or ``"none"``.
        log_every, eval_every, save_every: steps between log lines, eval hook calls and
            checkpoints (0 = never; a checkpoint is always written at the end).
        prompt_template: prompt with ``{image}`` (the processor's image placeholder) and
            ``{question}``; the answer follows after a space.
        max_new_tokens: default generation length (CLI).
    """

    # method
    layer: int = 1
    k: int | None = None
    ratio: float | None = 0.5
    query: str = "question"
    mode: str = "input"
    encoder_rank: int = 64
    encoder_activation: str = "gelu"
    discriminator_hidden: int = 128
    gate_threshold: float = 0.5
    hidden_size: int | None = None
    backend: str | None = None
    # training
    forget_loss: str = "idk"
    refusal: str = "I don't know."
    retain_weight: float = 1.0
    discriminator_weight: float = 1.0
    ga_bound: float = 10.0
    npo_beta: float = 0.1
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
    prompt_template: str = "USER: {image}\n{question} ASSISTANT:"
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` / ``TypeError`` naming the first bad field."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        if (self.k is None) == (self.ratio is None):
            raise ValueError(
                f"CagulConfig: set exactly one of k and ratio, got k={self.k}, ratio={self.ratio}"
            )
        if self.k is not None and self.k < 1:
            raise ValueError(f"CagulConfig: k must be >= 1, got {self.k}")
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"CagulConfig: ratio must be in (0, 1], got {self.ratio}")
        for name, allowed in (
            ("mode", MODES),
            ("forget_loss", FORGET_LOSSES),
            ("query", QUERY_POLICIES),
            ("encoder_activation", ACTIVATIONS),
            ("autocast", AUTOCAST),
            ("lr_schedule", LR_SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"CagulConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        positive = ("encoder_rank", "discriminator_hidden", "steps", "batch_size", "grad_accum")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"CagulConfig: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("layer", "warmup_steps", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"CagulConfig: {name} must be >= 0, got {getattr(self, name)}")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"CagulConfig: hidden_size must be >= 1, got {self.hidden_size}")
        if not 0.0 < self.gate_threshold < 1.0:
            raise ValueError(
                f"CagulConfig: gate_threshold must be in (0, 1), got {self.gate_threshold}"
            )
        for name in ("lr", "npo_beta", "ga_bound"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CagulConfig: {name} must be > 0, got {getattr(self, name)}")
        if self.discriminator_lr is not None and not self.discriminator_lr > 0:
            raise ValueError(
                f"CagulConfig: discriminator_lr must be > 0, got {self.discriminator_lr}"
            )
        for name in ("retain_weight", "discriminator_weight", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CagulConfig: {name} must be >= 0, got {getattr(self, name)}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"CagulConfig: max_grad_norm must be > 0, got {self.max_grad_norm}")
        if "{question}" not in self.prompt_template or "{image}" not in self.prompt_template:
            raise ValueError(
                "CagulConfig: prompt_template must contain {image} and {question}, got "
                f"{self.prompt_template!r}"
            )

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CagulConfig:
        if not isinstance(data, dict):
            raise TypeError(f"CagulConfig: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CagulConfig: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> CagulConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"CagulConfig: invalid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON to ``path`` (a file, or a directory: ``<dir>/cagul_config.json``)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path, "w") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CagulConfig:
        """Reads a JSON file (or ``<dir>/cagul_config.json``)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CagulConfig: no config file at {path}")
        with open(path) as f:
            return cls.from_json(f.read())

    def replace(self, **changes: Any) -> CagulConfig:
        """A validated copy with ``changes`` applied."""
        return self.from_dict({**self.to_dict(), **changes})


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Checks ``value`` against a field annotation such as ``"int | None"``."""
    options = [t.strip() for t in str(annotation).split("|")]
    if value is None:
        if "None" in options:
            return
        raise TypeError(f"CagulConfig: {name} must not be None")
    for option in options:
        types = _TYPES.get(option)
        # bool is an int subclass: accept it only where bool is declared.
        if types and isinstance(value, types) and (option == "bool" or not isinstance(value, bool)):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"CagulConfig: {name} must be finite, got {value}")
            return
    raise TypeError(
        f"CagulConfig: {name} must be {annotation}, got {type(value).__name__} {value!r}"
    )
