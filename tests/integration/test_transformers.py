"""transformers integration: the "cagul" attention against sdpa, captured importance against
eager output_attentions, index helpers, early stop, generate, and bad input.

Tiny random models built from configs in-process (no downloads), one per family, with real
image-token layouts (the vision tower's token counts, several images, padding).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import pytest
import torch
from cagul_demo.tiny_vlm import TINY
from cagul_demo.toy_vlm import llava_config, text_fields, vision_fields
from transformers import (
    AttentionInterface,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SmolVLMConfig,
)
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from cagul_kernels import reference
from cagul_kernels.integrations import transformers as ct

PAD, BOS, EOS, IMG, VSTART, VEND, VIDEO = 0, 1, 2, 100, 101, 102, 103
VOCAB_SIZE = 128
# The tests' tiny architecture, wider (64: head dim 16) and with one vision layer; GQA.
ARCH = dataclasses.replace(TINY, hidden=64, vision_layers=1)
SPECIAL_IDS = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
TEXT = {**text_fields(ARCH, VOCAB_SIZE), **SPECIAL_IDS}
VISION = vision_fields(ARCH)


@dataclasses.dataclass
class Family:
    """A tiny model and how to lay out its images: ``image_tokens[kind]`` placeholder tokens
    for image kind ``kind``, wrapped in ``open``/``close`` markers; ``pixels(kinds, batch)``
    returns the vision inputs for the images in order."""

    model: torch.nn.Module
    image_tokens: list[int]
    pixels: Callable[[list[list[int]]], dict]
    open: tuple[int, ...] = ()
    close: tuple[int, ...] = ()
    extra: Callable[[torch.Tensor], dict] = lambda ids: {}


def _images(n: int, *shape) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(n))


def _tiny_llava_config(attn_implementation: str | None = None):
    """The shared toy-LLaVA config (:func:`cagul_demo.toy_vlm.llava_config`) of ``ARCH``."""
    return llava_config(
        ARCH,
        vocab_size=VOCAB_SIZE,
        image_token_id=IMG,
        attn_implementation=attn_implementation,
        **SPECIAL_IDS,
    )


def _llava() -> Family:
    model = LlavaForConditionalGeneration(_tiny_llava_config())
    return Family(
        model,
        [ARCH.visual_tokens] * 2,
        lambda kinds: {"pixel_values": _images(sum(map(len, kinds)), 3, 16, 16)},
    )


def _llava_next() -> Family:
    pinpoints = [[16, 32], [32, 16], [32, 32]]
    config = LlavaNextConfig(
        text_config=LlamaConfig(**TEXT).to_dict(),
        vision_config=CLIPVisionConfig(**VISION).to_dict(),
        image_token_id=IMG,
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaNextForConditionalGeneration(config)
    sizes = [(16, 16), (32, 16), (20, 30)]  # anyres: different token counts per image

    def pixels(kinds):
        flat = [k for row in kinds for k in row]
        patches = [image_size_to_num_patches(sizes[k], pinpoints, 16) for k in flat]
        return {
            "pixel_values": _images(len(flat), max(patches), 3, 16, 16),
            "image_sizes": torch.tensor([sizes[k] for k in flat]),
        }

    with torch.no_grad():
        feats = model.model.get_image_features(
            **pixels([[0, 1, 2]]), vision_feature_layer=-1, vision_feature_select_strategy="default"
        ).pooler_output
    return Family(model, [f.shape[0] for f in feats], pixels)


def _qwen(config_cls, model_cls, v25: bool) -> Family:
    vision = dict(depth=1, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if v25:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16)
        vision.update(fullatt_block_indexes=[0])
    else:
        vision.update(embed_dim=32, hidden_size=64)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # M-RoPE
    config = config_cls(
        text_config={**TEXT, "rope_parameters": rope},
        vision_config=vision,
        image_token_id=IMG,
        video_token_id=VIDEO,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
    )
    grids = [(1, 4, 4), (1, 4, 6), (1, 6, 4)]

    def pixels(kinds):
        flat = [grids[k] for row in kinds for k in row]
        rows = sum(t * h * w for t, h, w in flat)
        return {"pixel_values": _images(rows, 3 * 2 * 4 * 4), "image_grid_thw": torch.tensor(flat)}

    return Family(
        model_cls(config),
        [t * h * w // 4 for t, h, w in grids],
        pixels,
        open=(VSTART,),
        close=(VEND,),
        extra=lambda ids: {"mm_token_type_ids": (ids == IMG).long()},
    )


def _gemma3() -> Family:  # sliding-window layers + bidirectional attention within images
    text = {**TEXT, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8}
    text["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    config = Gemma3Config(
        text_config=text,
        vision_config=VISION,
        image_token_index=IMG,
        boi_token_index=VSTART,
        eoi_token_index=VEND,
        mm_tokens_per_image=4,
    )
    return Family(
        Gemma3ForConditionalGeneration(config),
        [4] * 2,
        lambda kinds: {"pixel_values": _images(sum(map(len, kinds)), 3, 16, 16)},
        open=(VSTART,),
        close=(VEND,),
        extra=lambda ids: {"token_type_ids": (ids == IMG).long()},
    )


def _idefics3() -> Family:
    config = Idefics3Config(
        text_config=TEXT, vision_config=VISION, image_token_id=IMG, scale_factor=2
    )

    def pixels(kinds):  # [B, max images, C, H, W] with a pixel mask for absent images
        most = max(map(len, kinds))
        values = _images(len(kinds) * most, 3, 16, 16).view(len(kinds), most, 3, 16, 16)
        mask = torch.zeros(len(kinds), most, 16, 16, dtype=torch.bool)
        for b, row in enumerate(kinds):
            mask[b, : len(row)] = True
        return {"pixel_values": values * mask[:, :, None], "pixel_attention_mask": mask}

    return Family(Idefics3ForConditionalGeneration(config), [4] * 2, pixels)


BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": lambda: _qwen(Qwen2VLConfig, Qwen2VLForConditionalGeneration, False),
    "qwen2_5_vl": lambda: _qwen(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, True),
    "gemma3": _gemma3,
    "idefics3": _idefics3,
}
_CACHE: dict[str, Family] = {}


def family(name: str) -> Family:
    if name not in _CACHE:
        torch.manual_seed(0)
        fam = BUILDERS[name]()
        fam.model.eval().set_attn_implementation("cagul")
        _CACHE[name] = fam
    return _CACHE[name]


def make_inputs(fam: Family, samples, padding: str = "left", seed: int = 0) -> dict:
    """``samples``: ``(image kinds, question length)`` per sample ->
    ``BOS t t [open IMG.. close t]* question.. EOS`` padded on ``padding``."""
    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(10, 90, (n,), generator=g).tolist()

    rows = []
    for kinds, question in samples:
        ids = [BOS, *text(2)]
        for k in kinds:
            ids += [*fam.open, *[IMG] * fam.image_tokens[k], *fam.close, *text(1)]
        rows.append(ids + text(question) + [EOS])
    s = max(map(len, rows))
    input_ids = torch.full((len(rows), s), PAD)
    attention_mask = torch.zeros(len(rows), s, dtype=torch.long)
    for b, r in enumerate(rows):
        cols = slice(s - len(r), s) if padding == "left" else slice(0, len(r))
        input_ids[b, cols] = torch.tensor(r)
        attention_mask[b, cols] = 1
    kinds = [k for k, _ in samples]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        **fam.pixels(kinds),
        **fam.extra(input_ids),
    }


@contextlib.contextmanager
def implementation(model, name: str):
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation("cagul")


FAMILIES = list(BUILDERS)
SAMPLES = [([0, 1], 5), ([1], 3), ([0, 1, 0], 2)]  # several images per sample, ragged


def eager_importance(fam, inputs, layer, query_index, visual_index, per_head=False):
    with implementation(fam.model, "eager"), torch.no_grad():
        probs = fam.model(**inputs, output_attentions=True).attentions[layer]
    if not per_head:
        return reference.importance_from_probs(probs, query_index, visual_index)
    heads = [
        reference.importance_from_probs(probs[:, h : h + 1], query_index, visual_index)
        for h in range(probs.shape[1])
    ]
    return torch.stack(heads, dim=1)


# --------------------------------------------------------------------------- attention


def test_registered_and_idempotent():
    ct.register()
    ct.register()
    assert AttentionInterface()["cagul"] is ct.cagul_attention_forward
    assert AttentionMaskInterface()["cagul"] is sdpa_mask


def test_config_attn_implementation():
    config = _tiny_llava_config(attn_implementation="cagul")
    model = LlavaForConditionalGeneration(config)
    assert model.config._attn_implementation == "cagul"
    assert model.config.text_config._attn_implementation == "cagul"
    assert model.config.vision_config._attn_implementation == "cagul"


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_logits_equal_sdpa(name, padding):
    fam = family(name)
    inputs = make_inputs(fam, SAMPLES, padding)
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        with implementation(fam.model, "sdpa"):
            want = fam.model(**inputs).logits
        got = fam.model(**inputs).logits
        with ct.capture_importance(fam.model, [1], qi, vi):
            captured = fam.model(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured, want, rtol=1e-5, atol=1e-5)


def test_no_padding_and_gradients_equal_sdpa():
    """No padding mask (the is_causal fast path), with autograd."""
    fam = family("llava")
    inputs = make_inputs(fam, [([0], 4), ([0], 4)])
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    grads = {}
    for impl in ("sdpa", "cagul"):
        capture = ct.capture_importance(fam.model, 1, qi, vi) if impl == "cagul" else None
        with implementation(fam.model, impl), capture or contextlib.nullcontext():
            fam.model.zero_grad()
            logits = fam.model(**inputs).logits
            logits.square().mean().backward()
            grads[impl] = (
                logits.detach(),
                [p.grad.clone() for p in fam.model.parameters() if p.grad is not None],
            )
    torch.testing.assert_close(grads["cagul"][0], grads["sdpa"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["cagul"][1], grads["sdpa"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    fam.model.zero_grad()
    assert capture.importance[1].shape == vi.shape


def test_torch_compile():
    """The attention function traces under torch.compile (text decoder, padded batch)."""
    fam = family("llava")
    inputs = make_inputs(fam, SAMPLES[:2])
    decoder = fam.model.get_decoder()
    embeds = decoder.embed_tokens(inputs["input_ids"]).detach()
    with torch.no_grad():
        want = decoder(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
        compiled = torch.compile(decoder, backend="aot_eager")
        got = compiled(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state)


def test_autocast():
    fam = family("qwen2_vl")
    inputs = make_inputs(fam, SAMPLES[:2])
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        with ct.capture_importance(fam.model, [1], qi, vi) as fp32:
            fam.model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with implementation(fam.model, "sdpa"):
                want = fam.model(**inputs).logits
            with ct.capture_importance(fam.model, [1], qi, vi) as bf16:
                got = fam.model(**inputs).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(bf16.importance[1], fp32.importance[1], rtol=5e-2, atol=2e-3)


# --------------------------------------------------------------------------- importance


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_capture_equals_eager(name, padding):
    fam = family(name)
    inputs = make_inputs(fam, SAMPLES, padding, seed=1)
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    assert (vi >= 0).sum(dim=1).tolist() == [
        sum(fam.image_tokens[k] for k in kinds) for kinds, _ in SAMPLES
    ]
    layers = [1] if name == "gemma3" else [0, 1]  # gemma3's layer 0 has a sliding window
    with torch.no_grad(), ct.capture_importance(fam.model, layers, qi, vi) as cap:
        fam.model(**inputs)
    assert sorted(cap.importance) == layers
    for layer in layers:
        got = cap.importance[layer]
        assert got.shape == vi.shape and got.dtype == torch.float32
        want = eager_importance(fam, inputs, layer, qi, vi)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (got[vi < 0] == 0).all()


@pytest.mark.parametrize("policy", ct.QUERY_POLICIES)
def test_capture_policies_and_per_head(policy):
    fam = family("qwen2_5_vl")
    inputs = make_inputs(fam, SAMPLES, seed=2)
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"], query=policy)
    with torch.no_grad(), ct.capture_importance(fam.model, 2, qi, vi, per_head=True) as cap:
        fam.model(**inputs)
    got = cap.importance[2]
    assert got.shape == (vi.shape[0], 4, vi.shape[1])
    want = eager_importance(fam, inputs, 2, qi, vi, per_head=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _count_layers(model):
    calls = []
    hooks = [
        layer.register_forward_pre_hook(lambda *a: calls.append(1))
        for layer in model.get_decoder().layers
    ]
    return calls, hooks


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_early_stop(name):
    fam = family(name)
    inputs = make_inputs(fam, SAMPLES, seed=3)
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    calls, hooks = _count_layers(fam.model)
    try:
        with torch.no_grad():
            with ct.capture_importance(fam.model, [1], qi, vi) as full:
                out = fam.model(**inputs)
            assert len(calls) == 3 and out.logits is not None
            calls.clear()
            reached = []
            with ct.capture_importance(
                fam.model, [0, 1], qi, vi, stop_after_last_layer=True
            ) as early:
                fam.model(**inputs)
                reached.append(True)  # not reached: the pass stops inside the model
            assert len(calls) == 2 and not reached
            calls.clear()
            imp, visual_index = ct.visual_token_importance(fam.model, inputs, 1)
            assert len(calls) == 2
            calls.clear()
            fam.model(**inputs)  # the model runs normally after an early stop
            assert len(calls) == 3
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(early.importance[1], full.importance[1], rtol=0, atol=0)
    torch.testing.assert_close(imp, full.importance[1], rtol=0, atol=0)
    assert torch.equal(visual_index, vi)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_generate(name):
    fam = family(name)
    inputs = make_inputs(fam, SAMPLES[:2], "left", seed=4)
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=PAD)
    with torch.no_grad():
        with implementation(fam.model, "sdpa"):
            want = fam.model.generate(**inputs, **kwargs)
        with ct.capture_importance(fam.model, [1], qi, vi) as gen:
            got = fam.model.generate(**inputs, **kwargs)
        with ct.capture_importance(fam.model, [1], qi, vi) as fwd:
            fam.model(**inputs)
    assert torch.equal(got, want)
    torch.testing.assert_close(gen.importance[1], fwd.importance[1], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- index helpers

SPECIAL = [BOS, EOS, 7, 8]
IDS = torch.tensor(
    [
        [1, 5, 7, 9, 9, 8, 11, 12, 7, 9, 8, 13, 14, 15, 2, 0],  # right padding, 2 images
        [0, 0, 0, 1, 7, 9, 9, 9, 8, 16, 17, 18, 2, 30, 31, 32],  # left padding, 1 image
        [1, 20, 21, 22, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no image
    ]
)
MASK = torch.tensor([[1] * 15 + [0], [0] * 3 + [1] * 13, [1] * 5 + [0] * 11])


def make_index(rows: list[list[int]]) -> torch.Tensor:
    """Ragged position lists -> ``[B, N]`` int64 index padded with -1."""
    rows = [torch.tensor(r, dtype=torch.int64) for r in rows]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=-1)


def test_visual_token_index():
    assert torch.equal(ct.visual_token_index(IDS, 9, MASK), make_index([[3, 4, 9], [5, 6, 7], []]))
    # Several placeholder ids (image + video); masked positions never count.
    mask = MASK.clone()
    mask[0, 4] = 0
    got = ct.visual_token_index(IDS, [9, 17], mask)
    assert torch.equal(got, make_index([[3, 9], [5, 6, 7, 10], []]))
    assert torch.equal(ct.visual_token_index(IDS[:1], 9), make_index([[3, 4, 9]]))


@pytest.mark.parametrize(
    "policy, special, want",
    [
        ("question", SPECIAL, [[11, 12, 13], [9, 10, 11, 12, 13, 14, 15], [1, 2, 3]]),
        ("question", SPECIAL + [30, 31, 32], [[11, 12, 13], [9, 10, 11], [1, 2, 3]]),
        ("question", [], [[10, 11, 12, 13, 14], list(range(8, 16)), [0, 1, 2, 3, 4]]),
        ("last", SPECIAL, [[14], [15], [4]]),
        ("all_text", SPECIAL, [[1, 6, 7, 11, 12, 13], [9, 10, 11, 13, 14, 15], [1, 2, 3]]),
        ("all_text", SPECIAL + [30, 31, 32], [[1, 6, 7, 11, 12, 13], [9, 10, 11], [1, 2, 3]]),
    ],
)
def test_query_token_index(policy, special, want):
    got = ct.query_token_index(IDS, MASK, 9, policy, special_token_ids=special)
    assert torch.equal(got, make_index(want))


def test_query_token_index_without_mask():
    ids = torch.tensor([[1, 9, 9, 8, 11, 12, 2]])
    assert torch.equal(
        ct.query_token_index(ids, None, 9, "question", [1, 2, 8]), make_index([[4, 5]])
    )
    assert torch.equal(ct.query_token_index(ids, None, 9, "last"), make_index([[6]]))


def _chat(config, n_img):
    """[bos] ([open] IMG*n [close] t)* question [eos] with the family's own token ids."""
    visual = config.image_token_id
    markers = {
        "qwen2_vl": ("vision_start_token_id", "vision_end_token_id"),
        "qwen2_5_vl": ("vision_start_token_id", "vision_end_token_id"),
        "gemma3": ("boi_token_id", "eoi_token_id"),
    }.get(config.model_type, ())
    opener, closer = (getattr(config, m) for m in markers) if markers else (None, None)
    text = config.get_text_config()
    eos = text.eos_token_id if isinstance(text.eos_token_id, int) else text.eos_token_id[0]
    ids = [50]
    for _ in range(n_img):
        ids += [t for t in (opener, visual, visual, closer) if t is not None] + [51]
    return ids + [52, 53, eos]


@pytest.mark.parametrize(
    "config_cls",
    [
        LlavaConfig,
        LlavaNextConfig,
        Qwen2VLConfig,
        Qwen2_5_VLConfig,
        Idefics3Config,
        SmolVLMConfig,
        Gemma3Config,
    ],
)
def test_vlm_indices_families(config_cls):
    config = config_cls()
    assert config.model_type in ct.SUPPORTED_FAMILIES
    rows = [_chat(config, 2), _chat(config, 1)]
    s = max(map(len, rows))
    ids = torch.zeros(2, s, dtype=torch.long)
    mask = torch.zeros(2, s, dtype=torch.long)
    for b, r in enumerate(rows):  # left padding
        ids[b, s - len(r) :] = torch.tensor(r)
        mask[b, s - len(r) :] = 1
    qi, vi = ct.vlm_indices(config, ids, mask)
    for b in range(2):
        visual = (ids[b] == config.image_token_id).nonzero().flatten().tolist()
        assert vi[b][vi[b] >= 0].tolist() == visual
        # the question: the text token after the last image and the two question tokens
        question = [p for p in range(visual[-1] + 1, s) if int(ids[b, p]) in (51, 52, 53)]
        assert qi[b][qi[b] >= 0].tolist() == question


# --------------------------------------------------------------------------- bad input


def test_capture_bad_input():
    fam = family("llava")
    inputs = make_inputs(fam, SAMPLES[:2])
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    with pytest.raises(ValueError, match=r"unknown layers \[7\]"):
        ct.capture_importance(fam.model, [1, 7], qi, vi)
    with pytest.raises(ValueError, match="non-empty list"):
        ct.capture_importance(fam.model, [], qi, vi)
    with pytest.raises(TypeError, match="query_index is required"):
        ct.capture_importance(fam.model, 1, None, vi)
    with pytest.raises(TypeError, match="visual_index is required"):
        ct.capture_importance(fam.model, 1, qi, None)
    with pytest.raises(ValueError, match="2-D int32/int64"):
        ct.capture_importance(fam.model, 1, qi[0], vi)
    with pytest.raises(ValueError, match="2-D int32/int64"):
        ct.capture_importance(fam.model, 1, qi, vi.float())
    with pytest.raises(ValueError, match="same batch size"):
        ct.capture_importance(fam.model, 1, qi[:1], vi)
    with (
        pytest.raises(RuntimeError, match="nested"),
        ct.capture_importance(fam.model, 1, qi, vi),
        ct.capture_importance(fam.model, 0, qi, vi),
    ):
        pass
    assert ct._ACTIVE is None
    # Batch size or positions that do not fit the model's input.
    with (
        pytest.raises(ValueError, match="batch size 1"),
        torch.no_grad(),
        ct.capture_importance(fam.model, 1, qi[:1], vi[:1]),
    ):
        fam.model(**inputs)
    too_far = vi.clone()
    too_far[0, 0] = inputs["input_ids"].shape[1]
    with (
        pytest.raises(ValueError, match="visual_index entries"),
        torch.no_grad(),
        ct.capture_importance(fam.model, 1, qi, too_far),
    ):
        fam.model(**inputs)
    assert ct._ACTIVE is None
    with (
        implementation(fam.model, "sdpa"),
        pytest.raises(ValueError, match="attn_implementation='cagul'"),
    ):
        ct.capture_importance(fam.model, 1, qi, vi)


def test_sliding_window_layer_raises():
    fam = family("gemma3")
    inputs = make_inputs(fam, SAMPLES)
    qi, vi = ct.vlm_indices(fam.model, inputs["input_ids"], inputs["attention_mask"])
    with (
        pytest.raises(ValueError, match="sliding-window layer"),
        torch.no_grad(),
        ct.capture_importance(fam.model, 0, qi, vi),
    ):
        fam.model(**inputs)


def test_index_helpers_bad_input():
    with pytest.raises(ValueError, match="policy must be one of"):
        ct.query_token_index(IDS, MASK, 9, "first")
    with pytest.raises(ValueError, match=r"input_ids must be a \[B, S\]"):
        ct.visual_token_index(IDS[0], 9)
    with pytest.raises(ValueError, match="attention_mask must have input_ids' shape"):
        ct.query_token_index(IDS, MASK[:, :4], 9)
    with pytest.raises(ValueError, match="image_token_id is required"):
        ct.visual_token_index(IDS, [])
    with pytest.raises(ValueError, match=r"samples \[0\] have no query token"):
        ct.query_token_index(
            torch.tensor([[1, 9, 9, 2], [9, 5, 6, 2]]), None, 9, special_token_ids=[1, 2]
        )
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        ct.vlm_indices(LlamaConfig(), IDS, MASK)
    with pytest.raises(TypeError, match="transformers model or config"):
        ct.vlm_indices(object(), IDS, MASK)
    with pytest.raises(ValueError, match="must contain input_ids"):
        ct.visual_token_importance(family("llava").model, {}, 1)
