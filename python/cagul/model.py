"""``CagulModel``: a frozen VLM wrapped PEFT-style with the CAGUL discriminator and encoder.

Per sample the discriminator looks at the projected visual tokens and gates the transform.
For gated samples the cross-modal attention importance at layer L ranks the visual tokens,
the lowest ones are selected (``select_low_importance``) and the visual token encoder
rewrites them (``transform_scatter``):

- ``mode="input"``: the projector outputs are transformed; the importance comes from a
  pass that stops right after layer L's attention (in training, from the reference pass
  where there is one: ``reference_forward``), then the full model runs on the modified
  image features (passed as ``mm_encoder_outputs``, which transformers 5 VLMs accept in
  ``forward`` and ``generate``).
- ``mode="inline"``: one pass; a forward hook on decoder layer L rewrites the layer's
  output hidden states at the selected visual positions (prefill only in ``generate``).

The importance is captured through :mod:`cagul_kernels.integrations.transformers`: the
language model runs the ``"cagul"`` attention implementation (same outputs as sdpa) only
during the passes that capture importance. Samples the discriminator does not flag run
exactly the wrapped model's computation; a batch with no flagged sample is a plain call of
the wrapped model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

import cagul_kernels
from cagul_kernels.integrations import transformers as ct

from .config import CONFIG_NAME, CagulConfig, cagul_version, require_version
from .files import read_safetensors
from .modules import ForgetDiscriminator, VisualTokenEncoder
from .state import atomic_directory, copy_state

WEIGHTS_NAME = "cagul_modules.safetensors"
# The first transformers whose VLMs take encoded images as ``mm_encoder_outputs``; older
# ones accept the argument and ignore it, so the model would silently run without images.
MIN_TRANSFORMERS = "5.18"
_PIXEL_KEYS = ("pixel_values",)
# forward arguments with one entry per image (the others with a batch dimension: per sample)
PER_IMAGE_KEYS = ("image_grid_thw", "image_sizes")


@dataclasses.dataclass
class VisualInputs:
    """The wrapped model's keyword arguments with the images already encoded.

    ``kwargs``: model inputs where ``pixel_values`` is replaced by
    ``mm_encoder_outputs={"image": features}``; ``features``: the image encoder output
    (``pooler_output``: per-image ``[n_i, D]`` projected visual tokens) or ``None``;
    ``tokens [B, Nv, D]`` / ``mask [B, Nv]``: each sample's visual tokens in sequence order
    (zero / False padded); ``visual_index``, ``query_index``: ``[B, N]`` positions, -1 padded.
    """

    kwargs: dict[str, Any]
    features: Any
    tokens: torch.Tensor
    mask: torch.Tensor
    visual_index: torch.Tensor
    query_index: torch.Tensor

    @property
    def has_visual(self) -> torch.Tensor:
        return self.mask.any(dim=1)

    def image_rows(self) -> torch.Tensor:
        """``[n_images]`` the sample of each image of ``features`` (the images fill the
        samples' visual tokens in order)."""
        sizes = torch.tensor([f.shape[0] for f in self.features.pooler_output])
        starts = sizes.cumsum(0) - sizes
        sample_ends = self.mask.sum(dim=1).cumsum(0).cpu()
        return torch.searchsorted(sample_ends, starts, right=True)

    def select(self, rows: torch.Tensor) -> VisualInputs:
        """The samples where ``rows [B]`` (bool) is true, with their images and their
        per-image arguments (``image_grid_thw``, ...). Sequence and visual-token widths are
        kept, so a selected sample has the positions, padding and visual slots it has in
        the whole batch (same outputs up to rounding)."""
        rows = rows.to(self.mask.device).bool()
        b = rows.shape[0]
        no_images = torch.zeros(0, dtype=torch.bool)
        keep_image = no_images if self.features is None else rows.cpu()[self.image_rows()]
        kwargs = {}
        for name, value in self.kwargs.items():
            if name == "mm_encoder_outputs":
                if set(value) != {"image"}:
                    raise ValueError(
                        f"CagulModel: cannot split mm_encoder_outputs with {sorted(value)} by "
                        "sample (images only)"
                    )
                value = {"image": _select_images(value["image"], keep_image)}
            elif isinstance(value, torch.Tensor):
                if name in PER_IMAGE_KEYS:
                    value = value[keep_image.to(value.device)]
                elif value.dim() and value.shape[0] == b:
                    value = value[rows.to(value.device)]
                else:
                    raise ValueError(
                        f"CagulModel: cannot split the argument {name!r} of shape "
                        f"{tuple(value.shape)} by sample (batch size {b})"
                    )
            kwargs[name] = value
        features = kwargs.get("mm_encoder_outputs", {}).get("image")
        return VisualInputs(
            kwargs,
            features,
            self.tokens[rows],
            self.mask[rows],
            self.visual_index[rows],
            self.query_index[rows],
        )


class CagulModel(nn.Module):
    """A frozen VLM (LLaVA, Qwen2-VL, ... any family of ``vlm_indices``) + CAGUL modules.

    ``forward(**kwargs)`` / ``generate(**kwargs)`` take the wrapped model's arguments
    (``input_ids`` are required to locate the image tokens) and return what it returns.
    ``forget_gate``: optional ``[B]`` bool overriding the discriminator (``True`` =
    transform). Only ``encoder`` and ``discriminator`` have trainable parameters; the VLM
    stays in eval mode and frozen (``requires_grad=False``).
    """

    def __init__(self, vlm: nn.Module, config: CagulConfig):
        super().__init__()
        if not isinstance(config, CagulConfig):
            raise TypeError(
                f"CagulModel: config must be a CagulConfig, got {type(config).__name__}"
            )
        check_transformers()
        vlm_config = getattr(vlm, "config", None)
        if vlm_config is None or not hasattr(vlm_config, "get_text_config"):
            raise TypeError(f"CagulModel: expected a transformers VLM, got {type(vlm).__name__}")
        if vlm_config.model_type not in ct.SUPPORTED_FAMILIES:
            raise ValueError(
                f"CagulModel: unsupported model_type {vlm_config.model_type!r} "
                f"(supported: {ct.SUPPORTED_FAMILIES})"
            )
        text = vlm_config.get_text_config()
        hidden = text.hidden_size
        if config.hidden_size is not None and config.hidden_size != hidden:
            raise ValueError(
                f"CagulModel: the config is for hidden size {config.hidden_size} but the VLM's "
                f"text model has hidden size {hidden}"
            )
        if config.layer >= text.num_hidden_layers:
            raise ValueError(
                f"CagulModel: config.layer={config.layer} but the VLM has "
                f"{text.num_hidden_layers} decoder layers"
            )
        base = config.base_model_name_or_path or getattr(vlm_config, "_name_or_path", "") or None
        self.config = config.replace(hidden_size=hidden, base_model_name_or_path=base)
        self.vlm = vlm
        vlm.requires_grad_(False)
        vlm.eval()
        self._layer = _decoder_layers(vlm)[config.layer]
        self._attention = _attention_module(self._layer, config.layer)
        param = next(vlm.parameters())
        self.encoder = VisualTokenEncoder(hidden, config.encoder_rank, config.encoder_activation)
        self.discriminator = ForgetDiscriminator(hidden, config.discriminator_hidden)
        self.encoder.to(param.device)
        self.discriminator.to(param.device)
        self._forward_params = set(inspect.signature(vlm.forward).parameters) - {"kwargs"}

    def train(self, mode: bool = True) -> CagulModel:
        """Sets the CAGUL modules' mode; the wrapped VLM always stays in eval mode."""
        super().train(mode)
        self.vlm.eval()
        return self

    # ------------------------------------------------------------------ public API

    def forward(self, *args, forget_gate: torch.Tensor | None = None, **kwargs):
        """The wrapped model's forward with CAGUL applied to the gated samples."""
        vis = self.encode_visual(self._bind(args, kwargs))
        return self.run(vis, self.gate(vis, forget_gate))

    @torch.no_grad()
    def generate(self, *args, forget_gate: torch.Tensor | None = None, **kwargs):
        """The wrapped model's ``generate`` with CAGUL applied to the gated samples."""
        vis = self.encode_visual(self._bind(args, kwargs))
        return self.run(vis, self.gate(vis, forget_gate), generate=True)

    @torch.no_grad()
    def forget_probability(self, *args, **kwargs) -> torch.Tensor:
        """``[B]`` discriminator probability that each sample's image is in the forget set
        (0 for samples without an image)."""
        vis = self.encode_visual(self._bind(args, kwargs))
        prob = torch.sigmoid(self.discriminator(vis.tokens, vis.mask).float())
        return prob * vis.has_visual

    @torch.no_grad()
    def selected_tokens(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(importance [B, Nv] fp32, visual_index [B, Nv], slots [B, K])``: each visual
        token's importance at layer L and the slots (indices into ``Nv``, ``-1`` padded)
        that the transform rewrites when the sample is gated (inspection / plots)."""
        vis = self.encode_visual(self._bind(args, kwargs))
        importance = self.importance(vis)
        slots, _ = self._select(importance, vis.visual_index, vis.has_visual)
        return importance, vis.visual_index, slots

    @torch.no_grad()
    def importance(self, vis: VisualInputs) -> torch.Tensor:
        """``[B, Nv]`` fp32 importance of each visual token at layer L, from a pass that
        stops right after layer L's attention. A ranking: computed in the model's own
        dtype, outside autocast."""
        no_autocast = torch.autocast(vis.tokens.device.type, enabled=False)
        with no_autocast, self._cagul_attention(), self._capture(vis, True) as cap:
            self.vlm(**self._model_kwargs(vis))
        return cap.importance[self.config.layer]

    @torch.no_grad()
    def reference_forward(
        self, vis: VisualInputs, *, importance: bool = False, under_autocast: bool = False
    ):
        """``(outputs, importance)``: the wrapped model's forward on ``vis`` with the
        transform off (the reference of the training losses). ``importance=True`` also
        captures the layer-L importance in the same pass: ``[B, Nv]``, the same as
        :meth:`importance`'s, except under autocast (where it would differ from that one,
        computed outside autocast): then ``None``, unless ``under_autocast`` (the ranking
        then comes from the autocast pass)."""
        autocast = torch.is_autocast_enabled(vis.tokens.device.type)
        if not importance or (autocast and not under_autocast):
            return self.vlm(**vis.kwargs), None
        with self._cagul_attention(), self._capture(vis, stop=False) as cap:
            outputs = self.vlm(**vis.kwargs)
        return outputs, cap.importance[self.config.layer]

    def encode_visual(self, kwargs: dict[str, Any]) -> VisualInputs:
        """Runs the image encoder once (frozen, no grad) and lays out the visual tokens."""
        input_ids = kwargs.get("input_ids")
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(
                "CagulModel needs input_ids (a [B, S] tensor) to locate the image tokens; "
                "inputs_embeds alone are not supported"
            )
        if kwargs.get("pixel_values_videos") is not None:
            raise NotImplementedError("CagulModel: video inputs are not supported (images only)")
        kwargs = dict(kwargs)
        mm = dict(kwargs.pop("mm_encoder_outputs", None) or {})
        if kwargs.get("pixel_values") is not None:
            encode = self.vlm.base_model.get_image_features
            wanted = set(inspect.signature(encode).parameters) - {"kwargs"}
            enc_kwargs = {k: v for k, v in kwargs.items() if k in wanted}
            with torch.no_grad():
                mm["image"] = encode(**enc_kwargs, return_dict=True)
        for key in _PIXEL_KEYS:
            kwargs.pop(key, None)
        features = mm.get("image")
        if mm:
            kwargs["mm_encoder_outputs"] = mm
        query_index, visual_index = ct.vlm_indices(
            self.vlm, input_ids, kwargs.get("attention_mask"), query=self.config.query
        )
        mask = visual_index >= 0
        b, nv = visual_index.shape
        dim = self.config.hidden_size
        if features is None:
            if mask.any():
                raise ValueError(
                    "CagulModel: input_ids contain image tokens but no pixel_values / "
                    "mm_encoder_outputs were given"
                )
            param = self.encoder.w1
            tokens = torch.zeros(b, nv, dim, device=param.device, dtype=param.dtype)
        else:
            flat = torch.cat(list(features.pooler_output), dim=0)
            if flat.shape[0] != int(mask.sum()):
                raise ValueError(
                    f"CagulModel: {int(mask.sum())} image tokens in input_ids but the images "
                    f"gave {flat.shape[0]} visual tokens"
                )
            flat = flat.to(input_ids.device)
            tokens = flat.new_zeros(b, nv, flat.shape[-1]).masked_scatter(mask[..., None], flat)
        return VisualInputs(kwargs, features, tokens, mask, visual_index, query_index)

    def gate(self, vis: VisualInputs, forget_gate: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` bool: which samples get the transform (discriminator unless overridden)."""
        b = vis.mask.shape[0]
        if forget_gate is not None:
            forget_gate = torch.as_tensor(forget_gate, device=vis.mask.device)
            if forget_gate.shape != (b,):
                raise ValueError(
                    f"CagulModel: forget_gate must have shape ({b},), got "
                    f"{tuple(forget_gate.shape)}"
                )
            return forget_gate.bool() & vis.has_visual
        if not vis.has_visual.any():
            return vis.has_visual
        with torch.no_grad():
            prob = torch.sigmoid(self.discriminator(vis.tokens, vis.mask).float())
        return (prob >= self.config.gate_threshold) & vis.has_visual

    def run(
        self,
        vis: VisualInputs,
        gate: torch.Tensor,
        *,
        generate: bool = False,
        importance: torch.Tensor | None = None,
    ):
        """The wrapped model (``forward`` or ``generate``) with the transform on ``gate``.

        ``importance`` (``mode="input"`` only): ``[B, Nv]`` layer-L importance of the gated
        samples (:meth:`importance`, or :meth:`reference_forward`'s), which saves the pass
        that computes it."""
        call = self.vlm.generate if generate else self.vlm
        if importance is not None and self.config.mode != "input":
            raise ValueError(
                "CagulModel.run: importance is taken only in mode='input' (mode='inline' "
                "captures it in its single pass)"
            )
        if not bool(gate.any()):
            return call(**vis.kwargs)
        if self.config.mode == "input":
            mm = dict(vis.kwargs["mm_encoder_outputs"])
            mm["image"] = self._transformed_features(vis, gate, importance)
            return call(**{**vis.kwargs, "mm_encoder_outputs": mm})
        if generate and (
            vis.kwargs.get("num_beams", 1) > 1 or vis.kwargs.get("num_return_sequences", 1) > 1
        ):
            raise ValueError(
                "CagulModel.generate: mode='inline' supports num_beams=1 and "
                "num_return_sequences=1 only; use mode='input' for beam search"
            )
        with self._inline_transform(vis, gate):
            return call(**vis.kwargs)

    # ------------------------------------------------------------------ save / load

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's and discriminator's parameters (the only trained state)."""
        return {
            **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
            **{f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()},
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        copy_state(self.trainable_state_dict(), state, "CagulModel")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes ``cagul_modules.safetensors`` (encoder + discriminator) and
        ``cagul_config.json`` (stamped with ``cagul_version``) to directory ``path`` --
        never the VLM's weights. The files go to a temporary directory that replaces
        ``path`` when complete: a kill leaves the previous adapter intact."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        with atomic_directory(path) as tmp:
            save_file(state, os.path.join(tmp, WEIGHTS_NAME))
            self.config.replace(cagul_version=cagul_version()).save(os.path.join(tmp, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, vlm: nn.Module, path: str | os.PathLike, **overrides) -> CagulModel:
        """Wraps ``vlm`` with the modules saved in ``path``. ``overrides`` replace config
        fields that do not change the modules' shapes (e.g. ``gate_threshold``, ``mode``)."""
        path = os.fspath(path)
        weights = os.path.join(path, WEIGHTS_NAME)
        if not os.path.isdir(path) or not os.path.isfile(weights):
            raise FileNotFoundError(f"CagulModel.from_pretrained: no {WEIGHTS_NAME} in {path}")
        config = CagulConfig.load(os.path.join(path, CONFIG_NAME), saved=True)
        base = getattr(vlm.config, "_name_or_path", "") or None
        if config.base_model_name_or_path and base and base != config.base_model_name_or_path:
            warnings.warn(
                f"CagulModel.from_pretrained: the adapter in {path} was trained on "
                f"{config.base_model_name_or_path!r}, this VLM is {base!r}",
                stacklevel=2,
            )
        hidden = vlm.config.get_text_config().hidden_size
        if config.hidden_size != hidden:
            raise ValueError(
                f"CagulModel.from_pretrained: the modules in {path} were trained for hidden size "
                f"{config.hidden_size}, but this VLM's text model has hidden size {hidden}"
            )
        fixed = {
            "hidden_size",
            "encoder_rank",
            "discriminator_hidden",
            "encoder_activation",
            "cagul_version",
        }
        bad = sorted(fixed & overrides.keys())
        if bad:
            raise ValueError(f"CagulModel.from_pretrained: cannot override {bad} of saved modules")
        model = cls(vlm, config.replace(**overrides))
        model.load_trainable_state_dict(read_safetensors(weights, str(model.encoder.w1.device)))
        return model

    # ------------------------------------------------------------------ internals

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not args:
            return kwargs
        names = [n for n in inspect.signature(self.vlm.forward).parameters if n != "kwargs"]
        if len(args) > len(names):
            raise TypeError(f"CagulModel: too many positional arguments ({len(args)})")
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"CagulModel: got multiple values for argument {name!r}")
            kwargs[name] = value
        return kwargs

    def _model_kwargs(self, vis: VisualInputs) -> dict[str, Any]:
        """The forward arguments of ``vis.kwargs`` (no labels, no generation options)."""
        drop = {"labels", "use_cache", "past_key_values", "logits_to_keep"}
        kw = {k: v for k, v in vis.kwargs.items() if k in self._forward_params and k not in drop}
        return {**kw, "use_cache": False}

    @contextlib.contextmanager
    def _cagul_attention(self) -> Iterator[None]:
        """Runs the language model with the ``"cagul"`` attention implementation (equal to
        sdpa's outputs, and it records the importance) for the duration of the block."""
        cfg = self._attention.config
        saved = cfg._attn_implementation
        cfg._attn_implementation = ct.ATTN_IMPLEMENTATION
        try:
            yield
        finally:
            cfg._attn_implementation = saved

    def _capture(self, vis: VisualInputs, stop: bool):
        return ct.capture_importance(
            self.vlm,
            [self.config.layer],
            vis.query_index,
            vis.visual_index,
            stop_after_last_layer=stop,
            backend=self.config.backend,
        )

    def _select(self, importance: torch.Tensor, visual_index: torch.Tensor, gate: torch.Tensor):
        """``(slots, positions)`` ``[B, K]`` of the tokens to transform, -1 for ungated rows."""
        cfg = self.config
        select = cagul_kernels.select_low_importance
        if cfg.ratio is not None:
            slots, positions = select(
                importance, visual_index, ratio=cfg.ratio, backend=cfg.backend
            )
        elif bool(((visual_index >= 0).sum(1) >= cfg.k).all()):
            slots, positions = select(importance, visual_index, k=cfg.k, backend=cfg.backend)
        else:  # some sample has fewer than k visual tokens: take all of its tokens
            slots, positions = select(importance, visual_index, ratio=1.0, backend=cfg.backend)
            slots, positions = slots[:, : cfg.k], positions[:, : cfg.k]
        off = ~gate.to(slots.device)[:, None]
        return slots.masked_fill(off, -1), positions.masked_fill(off, -1)

    def _transformed_features(
        self, vis: VisualInputs, gate: torch.Tensor, importance: torch.Tensor | None
    ):
        """``mode="input"``: importance (given, or a pass stopped after layer L),
        selection, encoder."""
        if importance is None:
            importance = self.importance(vis)
        slots, _ = self._select(importance, vis.visual_index, gate)
        tokens = self.encoder(vis.tokens, slots.to(vis.tokens.device), backend=self.config.backend)
        flat = tokens[vis.mask]
        sizes = [f.shape[0] for f in vis.features.pooler_output]
        return type(vis.features)(**{**vis.features, "pooler_output": list(flat.split(sizes))})

    @contextlib.contextmanager
    def _inline_transform(self, vis: VisualInputs, gate: torch.Tensor) -> Iterator[None]:
        """``mode="inline"``: transform layer L's output at the selected visual positions of
        the prefill call (the call whose length is the prompt's)."""
        layer, seq_len = self.config.layer, vis.kwargs["input_ids"].shape[1]

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[1] != seq_len:
                return None
            importance = cap.importance.get(layer)
            if importance is None:
                raise RuntimeError("CagulModel: layer importance was not captured")
            _, positions = self._select(importance, vis.visual_index, gate)
            # Inference rewrites only the K selected rows of the fresh layer output.
            new = self.encoder(
                hidden,
                positions.to(hidden.device),
                inplace=not torch.is_grad_enabled(),
                backend=self.config.backend,
            )
            return (new, *output[1:]) if isinstance(output, tuple) else new

        with self._cagul_attention(), self._capture(vis, stop=False) as cap:
            handle = self._layer.register_forward_hook(hook)
            try:
                yield
            finally:
                handle.remove()


def check_transformers() -> None:
    """A ``RuntimeError`` naming both versions when transformers is older than
    :data:`MIN_TRANSFORMERS`."""
    import transformers

    why = "it passes the encoded images as mm_encoder_outputs, which older versions ignore: "
    why += "the images would be dropped"
    require_version("CagulModel", "transformers", transformers.__version__, MIN_TRANSFORMERS, why)


def _select_images(features: Any, keep: torch.Tensor) -> Any:
    """The image encoder output ``features`` (``pooler_output``: per-image visual tokens,
    a list or a ``[n_images, ...]`` tensor) of the images where ``keep [n_images]`` holds."""
    tokens = features.pooler_output
    if isinstance(tokens, torch.Tensor):
        kept = tokens[keep.to(tokens.device)]
    else:
        kept = [t for t, k in zip(tokens, keep.tolist(), strict=True) if k]
    return type(features)(**{**features, "pooler_output": kept})


def _decoder_layers(vlm: nn.Module) -> nn.ModuleList:
    decoder = vlm.get_decoder() if hasattr(vlm, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"CagulModel: cannot find the decoder layers of {type(vlm).__name__}")
    return layers


def _attention_module(layer: nn.Module, idx: int) -> nn.Module:
    for module in layer.modules():
        if getattr(module, "layer_idx", None) == idx and "Attention" in type(module).__name__:
            return module
    raise ValueError(f"CagulModel: decoder layer {idx} has no attention module with layer_idx")
