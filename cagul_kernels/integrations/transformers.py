"""transformers integration: a ``"cagul"`` attention implementation, importance capture,
and visual / query token index helpers for vision-language models.

Importing this module registers ``"cagul"`` with transformers' ``AttentionInterface``
(attention through :func:`cagul_kernels.attention_with_lse`) and ``AttentionMaskInterface``
(the ``sdpa`` mask: ``None`` when a plain causal mask suffices, else a boolean
``[B, 1, Sq, Sk]`` mask with padding and sliding windows). Then::

    model = LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="cagul")
    query_index, visual_index = vlm_indices(model, inputs["input_ids"], inputs["attention_mask"])
    with capture_importance(model, layers=[2], query_index=query_index,
                            visual_index=visual_index) as cap:
        model(**inputs)
    cap.importance[2]  # [B, Nv] fp32: mean attention of the question to each visual token

The model's outputs equal ``attn_implementation="sdpa"``. Only the captured layers do
extra work: on the prefill call (query length > 1) they run
:func:`cagul_kernels.cross_modal_importance` on the layer's RoPE'd q, k and the attention's
LSE, so the ``S x S`` probabilities are never materialised. ``stop_after_last_layer=True``
ends the forward pass right after the last captured layer's attention.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..ops import attention_with_lse, cross_modal_importance

ATTN_IMPLEMENTATION = "cagul"
QUERY_POLICIES = ("question", "last", "all_text")

__all__ = [
    "ATTN_IMPLEMENTATION",
    "QUERY_POLICIES",
    "SUPPORTED_FAMILIES",
    "cagul_attention_forward",
    "capture_importance",
    "query_token_index",
    "register",
    "visual_token_importance",
    "visual_token_index",
    "vlm_indices",
]


# --------------------------------------------------------------------------- attention


def cagul_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function (the ``AttentionInterface`` signature).

    ``query [B, Hq, Sq, D]``, ``key``/``value [B, Hkv, Sk, D]`` (GQA: ``Hq % Hkv == 0``),
    ``attention_mask``: ``None`` (plain causal, or no mask for decode / non-causal
    modules) or a boolean / additive mask broadcastable to ``[B, Hq, Sq, Sk]`` as built by
    the ``sdpa`` mask function. Returns ``(attn_output [B, Sq, Hq, D], None)``.
    ``dropout > 0`` (training with attention dropout) runs transformers' sdpa attention,
    so outputs equal ``"sdpa"`` under the same seed; importance is captured without dropout.
    """
    for name in ("softcap", "s_aux", "position_bias", "cache"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"cagul attention does not support `{name}`; use attn_implementation='eager' "
                "or 'sdpa' for this model"
            )
    if kwargs.get("output_attentions"):
        warnings.warn(
            "cagul attention does not return attention probabilities (output_attentions=True); "
            "use capture_importance to get the importance of visual tokens",
            stacklevel=2,
        )
    q_len = query.shape[2]
    module_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    capturing = _ACTIVE is not None and q_len > 1 and _ACTIVE.captures(module)
    if dropout > 0.0:
        # Training with attention dropout: sdpa's own dropout path (the same output and
        # random stream as attn_implementation="sdpa"). A captured layer also needs the LSE
        # of the attention without dropout, computed below.
        attn_output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
        if not capturing:
            return attn_output, None
    # As sdpa: no mask means a plain causal mask for prefill and no mask for decode.
    causal = bool(module_causal and q_len > 1 and attention_mask is None)
    if causal and key.shape[2] > q_len:  # prefill into an empty static cache (as sdpa)
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out, lse = attention_with_lse(
        query, key, value, causal=causal, scale=scaling, attn_mask=attention_mask
    )
    if dropout == 0.0:
        attn_output = out.transpose(1, 2).contiguous()
    if capturing:
        _ACTIVE._record(module, query, key, lse, scaling, bool(module_causal), kwargs)
    return attn_output, None


def register() -> None:
    """Registers ``"cagul"`` with transformers' attention and mask interfaces (idempotent;
    importing this module already does it)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, cagul_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


register()


# --------------------------------------------------------------------------- capture


class _StopForward(BaseException):
    """Raised after the last captured layer to end an importance-only forward pass. A
    ``BaseException`` so that no ``except Exception`` inside transformers swallows it."""


_ACTIVE: capture_importance | None = None


def _attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """``layer_idx -> attention module`` of the model's language decoder."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    found: dict[int, torch.nn.Module] = {}
    for module in decoder.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and "Attention" in type(module).__name__:
            if idx in found:
                raise ValueError(
                    f"capture_importance: two attention modules have layer_idx={idx} "
                    f"({type(found[idx]).__name__}, {type(module).__name__}); pass the "
                    "language model itself"
                )
            found[idx] = module
    if not found:
        raise ValueError(
            f"capture_importance: found no attention modules with a `layer_idx` in "
            f"{type(model).__name__}"
        )
    return found


def _check_index(name: str, index) -> torch.Tensor:
    if index is None:
        raise TypeError(
            f"capture_importance: {name} is required ([B, N] positions, -1 padded); build it "
            "with vlm_indices / visual_token_index / query_token_index"
        )
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"capture_importance: {name} must be a torch.Tensor, got {type(index)}")
    if index.dim() != 2 or index.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"capture_importance: {name} must be a 2-D int32/int64 [B, N] tensor, got shape "
            f"{tuple(index.shape)} and dtype {index.dtype}"
        )
    return index


class capture_importance:
    """Context manager capturing cross-modal attention importance at chosen layers.

    Args:
        model: a transformers model running ``attn_implementation="cagul"`` (its language
            decoder at least). Layers are identified by their attention module's
            ``layer_idx``.
        layers: a layer index or a list of them.
        query_index: ``[B, Nq]`` positions of the query (text) tokens, ``-1`` = padding.
        visual_index: ``[B, Nv]`` positions of the visual tokens, ``-1`` = padding.
        per_head: capture ``[B, Hq, Nv]`` instead of the head mean ``[B, Nv]``.
        stop_after_last_layer: end the forward pass right after the last requested
            layer's attention (the exception is caught when the ``with`` block exits, so
            statements after the model call inside the block do not run, and the model's
            outputs / cache are not produced). Costs about ``(L + 1) / num_layers`` of a
            prefill.
        backend: importance backend (``None`` = default for the device).

    ``cap.importance[L]`` is fp32, padded visual slots are 0. It is recorded on prefill
    calls (query length > 1) only, so ``model.generate`` works inside the block and decode
    steps run unchanged; a later prefill inside the same block overwrites it. The prefill
    must start from an empty cache (key length == query length).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layers: int | Iterable[int],
        query_index: torch.Tensor,
        visual_index: torch.Tensor,
        *,
        per_head: bool = False,
        stop_after_last_layer: bool = False,
        backend: str | None = None,
    ):
        modules = _attention_modules(model)
        layers = [layers] if isinstance(layers, int) else list(layers)
        if not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers):
            raise TypeError(
                f"capture_importance: layers must be an int or a list of ints (not bools), "
                f"got {layers}"
            )
        if not layers:
            raise ValueError("capture_importance: layers must be a non-empty list of ints")
        unknown = sorted(set(layers) - modules.keys())
        if unknown:
            raise ValueError(
                f"capture_importance: unknown layers {unknown}; the model has attention layers "
                f"{min(modules)}..{max(modules)}"
            )
        impl = modules[layers[0]].config._attn_implementation
        if impl != ATTN_IMPLEMENTATION:
            raise ValueError(
                f"capture_importance: the model runs attn_implementation={impl!r}; load it with "
                "attn_implementation='cagul' or call model.set_attn_implementation('cagul')"
            )
        self.query_index = _check_index("query_index", query_index)
        self.visual_index = _check_index("visual_index", visual_index)
        if query_index.shape[0] != visual_index.shape[0]:
            raise ValueError(
                f"capture_importance: query_index {tuple(query_index.shape)} and visual_index "
                f"{tuple(visual_index.shape)} must have the same batch size"
            )
        self.layers = sorted(set(layers))
        self.per_head = per_head
        self.stop_after_last_layer = stop_after_last_layer
        self.backend = backend
        self.importance: dict[int, torch.Tensor] = {}
        self._layer_of = {id(modules[layer]): layer for layer in self.layers}

    def __enter__(self) -> capture_importance:
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("capture_importance: captures cannot be nested")
        _ACTIVE = self
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _ACTIVE
        _ACTIVE = None
        return exc_type is _StopForward

    def captures(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` is the attention of a requested layer."""
        return id(module) in self._layer_of

    def _record(self, module, query, key, lse, scaling, causal, kwargs) -> None:
        layer = self._layer_of[id(module)]
        b, _, s, _ = query.shape
        if key.shape[2] != s:
            raise ValueError(
                f"capture_importance: layer {layer} saw {s} queries but {key.shape[2]} keys; "
                "importance needs a prefill from an empty (dynamic) cache"
            )
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        if window is not None and s > window:
            raise ValueError(
                f"capture_importance: layer {layer} is a sliding-window layer (window {window}) "
                f"and the sequence has {s} tokens; capture a full-attention layer"
            )
        if self.query_index.shape[0] != b:
            raise ValueError(
                f"capture_importance: the indices have batch size {self.query_index.shape[0]} "
                f"but the model ran a batch of {b}"
            )
        self.importance[layer] = cross_modal_importance(
            query,
            key,
            lse,
            self.query_index.to(query.device),
            self.visual_index.to(query.device),
            scale=scaling,
            causal=causal,
            per_head=self.per_head,
            backend=self.backend,
        )
        if self.stop_after_last_layer and layer == self.layers[-1]:
            raise _StopForward


def visual_token_importance(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    layer: int,
    query: str = "question",
    *,
    per_head: bool = False,
    special_token_ids: Iterable[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance of every visual token at ``layer`` in one early-stopped pass (FastV-style).

    ``inputs``: the processor's output (``input_ids``, ``attention_mask``,
    ``pixel_values``, ...). Indices come from :func:`vlm_indices` with the ``query`` policy.
    Returns ``(importance [B, Nv] (or [B, Hq, Nv]) fp32, visual_index [B, Nv])``.
    """
    if "input_ids" not in inputs:
        raise ValueError("visual_token_importance: inputs must contain input_ids")
    query_index, visual_index = vlm_indices(
        model,
        inputs["input_ids"],
        inputs.get("attention_mask"),
        query=query,
        special_token_ids=special_token_ids,
    )
    kwargs = {"use_cache": False, **inputs}
    with (
        torch.no_grad(),
        capture_importance(
            model,
            [layer],
            query_index,
            visual_index,
            per_head=per_head,
            stop_after_last_layer=True,
        ) as cap,
    ):
        model(**kwargs)
    return cap.importance[layer], visual_index


# --------------------------------------------------------------------------- indices


def _ids_set(ids: int | Iterable[int] | None) -> list[int]:
    if ids is None:
        return []
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids if i is not None]


def _valid_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, fn: str):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"{fn}: input_ids must be a [B, S] tensor, got {getattr(input_ids, 'shape', input_ids)}"
        )
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"{fn}: attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    return attention_mask.to(input_ids.device).bool()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` bool -> ``[B, N]`` int64 ascending positions of the True entries, -1 padded."""
    b, s = mask.shape
    width = int(mask.sum(dim=1).max()) if b and s else 0
    pos = torch.arange(s, device=mask.device).expand(b, s)
    ordered = torch.where(mask, pos, s).sort(dim=1).values[:, :width]
    return torch.where(ordered < s, ordered, -1)


def _isin(input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return torch.isin(input_ids, torch.tensor(ids, dtype=input_ids.dtype, device=input_ids.device))


def visual_token_index(
    input_ids: torch.Tensor,
    image_token_id: int | Iterable[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, Nv]`` int64 positions of the visual tokens (any number of images), -1 padded.

    ``image_token_id``: the id (or ids, e.g. image and video) of the placeholder tokens the
    model replaces by visual features. Positions where ``attention_mask`` is 0 are skipped.
    """
    ids = _ids_set(image_token_id)
    if not ids:
        raise ValueError("visual_token_index: image_token_id is required")
    valid = _valid_mask(input_ids, attention_mask, "visual_token_index")
    return _positions(_isin(input_ids, ids) & valid)


def query_token_index(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_token_id: int | Iterable[int],
    policy: str = "question",
    special_token_ids: Iterable[int] = (),
) -> torch.Tensor:
    """``[B, Nq]`` int64 positions of the query tokens, -1 padded.

    Policies (padding, ``attention_mask == 0``, is never a query token):
      - ``"question"``: the tokens after the last visual token, with the leading and
        trailing runs of ``special_token_ids`` stripped (e.g. ``<|vision_end|>`` before
        the question, ``<|im_end|>`` / eos / the assistant prompt after it). With no
        image, the whole (stripped) sequence.
      - ``"last"``: the last non-padding token (the one that predicts the next token).
      - ``"all_text"``: every non-visual token not in ``special_token_ids``.

    Raises ``ValueError`` when a sample has no query token.
    """
    if policy not in QUERY_POLICIES:
        raise ValueError(
            f"query_token_index: policy must be one of {QUERY_POLICIES}, got {policy!r}"
        )
    ids = _ids_set(image_token_id)
    if not ids:
        raise ValueError("query_token_index: image_token_id is required")
    valid = _valid_mask(input_ids, attention_mask, "query_token_index")
    visual = _isin(input_ids, ids) & valid
    special = (
        _isin(input_ids, _ids_set(list(special_token_ids)))
        if special_token_ids
        else torch.zeros_like(valid)
    )
    b, s = input_ids.shape
    pos = torch.arange(s, device=input_ids.device).expand(b, s)
    if policy == "last":
        last = torch.where(valid, pos, -1).max(dim=1, keepdim=True).values
        chosen = (pos == last) & valid
    elif policy == "all_text":
        chosen = valid & ~visual & ~special
    else:
        last_visual = torch.where(visual, pos, -1).max(dim=1, keepdim=True).values
        text = valid & ~visual & (pos > last_visual)
        core = text & ~special
        first = torch.where(core, pos, s).min(dim=1, keepdim=True).values
        last = torch.where(core, pos, -1).max(dim=1, keepdim=True).values
        chosen = text & (pos >= first) & (pos <= last)
    empty = (~chosen.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"query_token_index: samples {empty} have no query token for policy {policy!r}"
        )
    return _positions(chosen)


# Per model_type: config attributes holding the visual placeholder ids, and the marker
# tokens around them (stripped from the question like eos / bos / pad).
_FAMILY_VISUAL = {
    "llava": ("image_token_id",),
    "llava_next": ("image_token_id",),
    "qwen2_vl": ("image_token_id", "video_token_id"),
    "qwen2_5_vl": ("image_token_id", "video_token_id"),
    "idefics3": ("image_token_id",),
    "smolvlm": ("image_token_id",),
    "gemma3": ("image_token_id",),
}
_FAMILY_MARKERS = {
    "qwen2_vl": ("vision_start_token_id", "vision_end_token_id"),
    "qwen2_5_vl": ("vision_start_token_id", "vision_end_token_id"),
    "gemma3": ("boi_token_id", "eoi_token_id"),
}
SUPPORTED_FAMILIES = tuple(_FAMILY_VISUAL)


def _family_tokens(model_or_config) -> tuple[list[int], list[int]]:
    """``(visual ids, special ids)`` of a supported VLM family from its config."""
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(
            "vlm_indices: expected a transformers model or config, got "
            f"{type(model_or_config).__name__}"
        )
    family = config.model_type
    if family not in _FAMILY_VISUAL:
        raise ValueError(
            f"vlm_indices: unsupported model_type {family!r} (supported: {SUPPORTED_FAMILIES}); "
            "use visual_token_index / query_token_index with the image token id"
        )
    visual = [getattr(config, a, None) for a in _FAMILY_VISUAL[family]]
    special = [getattr(config, a, None) for a in _FAMILY_MARKERS.get(family, ())]
    text = config.get_text_config()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        special += _ids_set(getattr(text, attr, None))
    return _ids_set(visual), _ids_set(special)


def vlm_indices(
    model_or_config,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    query: str = "question",
    special_token_ids: Iterable[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(query_index [B, Nq], visual_index [B, Nv])`` for a supported VLM family.

    The family (``config.model_type``: LLaVA 1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
    Idefics3, SmolVLM, Gemma 3) gives the visual placeholder ids (image, and video for
    Qwen) and the special tokens stripped from the question: vision start/end markers
    (Qwen), begin/end-of-image (Gemma 3), and the text config's bos / eos / pad.
    ``special_token_ids`` adds more (e.g. ``<|im_end|>``, the assistant prompt's ids).
    """
    visual_ids, special = _family_tokens(model_or_config)
    special += _ids_set(list(special_token_ids))
    visual_index = visual_token_index(input_ids, visual_ids, attention_mask)
    query_index = query_token_index(input_ids, attention_mask, visual_ids, query, special)
    return query_index, visual_index
