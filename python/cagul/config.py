"""``CagulConfig``: what a trained CAGUL adapter is (saved next to its weights), and the
type checks every settings dataclass of the framework shares (:func:`check_fields`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import string
import types
import typing
from importlib import metadata
from typing import Any

from cagul_kernels.ops._backend import BACKENDS
from cagul_kernels.ops.transform_scatter import ACTIVATIONS

from .files import read_json

MODES = ("input", "inline")
# = cagul_kernels.integrations.transformers.QUERY_POLICIES, spelled out so that the config
# does not import transformers (a test keeps the two equal)
QUERY_POLICIES = ("question", "last", "all_text")
PROMPT_FIELDS = ("image", "question")
CONFIG_NAME = "cagul_config.json"
# Fields of the first adapter format (training settings, saved with the adapter until the
# training arguments moved to cagul.training.arguments): ignored when an old adapter loads.
LEGACY_TRAINING_FIELDS = (
    "autocast", "batch_size", "discriminator_lr", "discriminator_weight", "eval_every",
    "forget_loss", "ga_bound", "grad_accum", "log_every", "lr", "lr_schedule", "max_grad_norm",
    "max_new_tokens", "npo_beta", "refusal", "retain_weight", "save_every", "seed", "steps",
    "warmup_steps", "weight_decay",
)  # fmt: skip


def cagul_version() -> str:
    """The installed ``cagul-kernels`` version (``"0+unknown"`` when not installed)."""
    try:
        return metadata.version("cagul-kernels")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def require_version(purpose: str, name: str, have: str, need: str, why: str = "") -> None:
    """A ``RuntimeError`` "``<purpose> needs <name>>=<need>[ (<why>)], this is <name>
    <have>``" when version ``have`` is older than ``need`` (release numbers compared, so a
    dev build of ``need`` passes)."""
    from packaging.version import Version

    if Version(have).release < Version(need).release:
        reason = f" ({why})" if why else ""
        raise RuntimeError(f"{purpose} needs {name}>={need}{reason}, this is {name} {have}")


class Settings:
    """JSON round-trip of a settings dataclass (validated in its ``__post_init__``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """A validated instance; unknown fields are a ``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown} (known: {sorted(known)})")
        return cls(**data)

    def replace(self, **changes: Any):
        """A validated copy with ``changes`` applied."""
        return self.from_dict({**self.to_dict(), **changes})


@dataclasses.dataclass
class CagulConfig(Settings):
    """What a trained CAGUL adapter is: everything that changes its behaviour.

    layer: LLM layer L whose attention gives the importance of visual tokens.
    k / ratio: how many low-importance visual tokens to transform per sample: exactly ``k``
        (capped at the sample's visual token count) or ``ceil(ratio * n_visual)``; set
        exactly one (``ratio`` is the default).
    query: query-token policy for the importance: ``"question"`` (text after the last
        image), ``"last"`` (final token) or ``"all_text"``.
    mode: ``"input"`` transforms the projected visual tokens (the LLM inputs; importance from
        a pass that stops after layer L, then a full pass) and ``"inline"`` the hidden states
        of layer L's output (one pass).
    encoder_rank, encoder_activation: visual token encoder ``D -> rank -> D``.
    discriminator_hidden: width of the forget discriminator.
    gate_threshold: a sample is transformed when ``sigmoid(logit) >= gate_threshold``.
    hidden_size: the VLM's text hidden size, filled in by ``CagulModel`` (``None`` = not
        bound yet); loading refuses a VLM with another size.
    backend: kernel backend for the ops (``None`` = default for the device).
    prompt_template: prompt with ``{image}`` (the processor's image placeholder) and
        ``{question}``; the answer follows after a space.
    base_model_name_or_path: the VLM the adapter was trained on (filled in by
        ``CagulModel``); loading onto another one warns.
    cagul_version: the version that saved the adapter (``None`` before the first save, and
        for adapters saved before versions were recorded).

    Training settings (schedule, objective) are :class:`cagul.training.UnlearningArguments`.
    """

    layer: int = 1
    k: int | None = None
    ratio: float | None = 0.5
    query: str = "question"
    mode: str = "input"
    encoder_rank: int = 16
    encoder_activation: str = "gelu"
    discriminator_hidden: int = 32
    gate_threshold: float = 0.5
    hidden_size: int | None = None
    backend: str | None = None
    prompt_template: str = "USER: {image}\n{question} ASSISTANT:"
    base_model_name_or_path: str | None = None
    cagul_version: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` / ``TypeError`` naming the first bad field."""
        check_fields(self)
        if (self.k is None) == (self.ratio is None):
            raise ValueError(
                f"CagulConfig: set exactly one of k and ratio, got k={self.k}, ratio={self.ratio}"
            )
        if self.k is not None and self.k < 1:
            raise ValueError(f"CagulConfig: k must be >= 1, got {self.k}")
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"CagulConfig: ratio must be in (0, 1], got {self.ratio}")
        check_choices(
            self,
            mode=MODES,
            query=QUERY_POLICIES,
            encoder_activation=ACTIVATIONS,
            backend=(None, *BACKENDS),
        )
        check_at_least(self, 1, "encoder_rank", "discriminator_hidden")
        check_at_least(self, 0, "layer")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"CagulConfig: hidden_size must be >= 1, got {self.hidden_size}")
        if not 0.0 < self.gate_threshold < 1.0:
            raise ValueError(
                f"CagulConfig: gate_threshold must be in (0, 1), got {self.gate_threshold}"
            )
        check_prompt_template(self.prompt_template, "CagulConfig: prompt_template")

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, saved: bool = False) -> CagulConfig:
        """A validated config from ``data``. ``saved=True`` reads a saved adapter's config:
        every behaviour-changing field must be present (no silent default), and the
        training fields of the first adapter format are ignored."""
        if saved and isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in LEGACY_TRAINING_FIELDS}
            optional = {"base_model_name_or_path", "cagul_version"}
            required = {f.name for f in dataclasses.fields(cls)} - optional
            missing = sorted(required - data.keys())
            if missing:
                raise ValueError(f"CagulConfig: the saved config has no {missing}")
        return super().from_dict(data)

    @classmethod
    def from_json(cls, text: str, *, saved: bool = False) -> CagulConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"CagulConfig: invalid JSON: {e}") from None
        return cls.from_dict(data, saved=saved)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON to ``path`` (a file, or a directory: ``<dir>/cagul_config.json``)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path, "w") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, *, saved: bool = False) -> CagulConfig:
        """Reads a JSON file (or ``<dir>/cagul_config.json``); ``saved``: see
        :meth:`from_dict`."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CagulConfig: no config file at {path}")
        data = read_json(path)  # an InputError naming path:line for bad UTF-8 / JSON
        try:
            return cls.from_dict(data, saved=saved)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from None


# ---------------------------------------------------------------------- shared checks


def check_fields(settings: Any) -> None:
    """Checks every field of the dataclass instance ``settings`` against its type hint
    (``int``, ``float``, ``str``, ``bool`` and their ``| None`` unions): a ``TypeError``
    naming the field, or a ``ValueError`` for a non-finite float."""
    owner = type(settings).__name__
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        _check_type(owner, f.name, getattr(settings, f.name), hints[f.name])


def _check_type(owner: str, name: str, value: Any, hint: Any) -> None:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    if value is None:
        if type(None) in options:
            return
        raise TypeError(f"{owner}: {name} must not be None")
    for option in options:
        # bool is an int subclass: accept it only where bool is declared
        if isinstance(value, bool) != (option is bool):
            continue
        if option is float and isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError(f"{owner}: {name} must be finite, got {value}")
            return
        if option in (int, str, bool) and isinstance(value, option):
            return
    expected = hint.__name__ if isinstance(hint, type) else str(hint)
    raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")


def check_choices(settings: Any, **allowed: tuple) -> None:
    """``ValueError`` naming the first field of ``settings`` whose value is not allowed."""
    for name, choices in allowed.items():
        if getattr(settings, name) not in choices:
            raise ValueError(
                f"{type(settings).__name__}: {name} must be one of {choices}, got "
                f"{getattr(settings, name)!r}"
            )


def check_at_least(settings: Any, low: float, *names: str) -> None:
    """``ValueError`` naming the first of ``names`` whose value is below ``low``."""
    for name in names:
        if not getattr(settings, name) >= low:
            raise ValueError(
                f"{type(settings).__name__}: {name} must be >= {low}, got {getattr(settings, name)}"
            )


def check_prompt_template(template: str, what: str) -> None:
    """``ValueError`` unless ``template`` has ``{image}`` and ``{question}`` and no other
    placeholder (``{{`` / ``}}`` are literal braces)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{what}: {e} in {template!r}") from None
    unknown = sorted(set(fields) - set(PROMPT_FIELDS))
    if unknown:
        raise ValueError(
            f"{what} has unknown placeholders {unknown} (allowed: {{image}}, {{question}}): "
            f"{template!r}"
        )
    missing = [name for name in PROMPT_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"{what} must contain {{image}} and {{question}}, got {template!r}")
