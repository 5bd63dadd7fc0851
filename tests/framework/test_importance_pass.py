"""``mode="input"``'s importance pass stops right after layer L's attention: layers below L
run twice (importance pass + full pass), layer L's attention twice and its MLP once, the
deeper layers and the LM head once; ``mode="inline"`` runs every module once. Tiny LLaVA
and Qwen2-VL, left-padded batches of different image sizes (Qwen2-VL) or questions."""

from __future__ import annotations

import collections

import pytest
import torch
from cagul import CagulConfig, CagulModel
from cagul.data import VLMCollator
from cagul_demo import tiny_vlm as tv

FAMILIES = {
    "llava": (tv.llava, tv.LLAVA_TEMPLATE, (16, 16, 16)),
    "qwen2_vl": (tv.qwen2_vl, tv.QWEN_TEMPLATE, (16, 32, 24)),
}
LAYERS, LAYER = 4, 1


def count_calls(vlm) -> tuple[collections.Counter, list]:
    """Counts the forward calls (started) of every decoder layer's attention and MLP and of the LM
    head (``"layer.<i>.attn"``, ``"layer.<i>.mlp"``, ``"lm_head"``)."""
    calls = collections.Counter()
    handles = []
    modules = {"lm_head": vlm.get_output_embeddings()}
    for i, layer in enumerate(vlm.get_decoder().layers):
        modules[f"layer.{i}.attn"] = layer.self_attn
        modules[f"layer.{i}.mlp"] = layer.mlp
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda *_, name=name: calls.update([name])))
    return calls, handles


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["input", "inline"])
def test_importance_pass_stops_after_layer_attention(family, mode):
    make, template, sizes = FAMILIES[family]
    vlm, processor = make(layers=LAYERS)
    model = CagulModel(vlm, CagulConfig(mode=mode, layer=LAYER, prompt_template=template))
    questions = ["What is", "Where does this person live?", "What is the job"]
    samples = [
        {"image": tv.person_image(i, 0, size), "question": q, "answer": "n1", "is_forget": True}
        for i, (size, q) in enumerate(zip(sizes, questions, strict=True))
    ]
    inputs = VLMCollator(processor, model.config).prompts(samples)
    assert inputs["attention_mask"][:, 0].logical_not().any()  # left padding
    calls, handles = count_calls(vlm)
    try:
        out = model(**inputs, forget_gate=torch.ones(len(samples), dtype=torch.bool))
    finally:
        for handle in handles:
            handle.remove()
    assert torch.isfinite(out.logits).all()
    twice = set() if mode == "inline" else {f"layer.{i}.attn" for i in range(LAYER + 1)}
    twice |= set() if mode == "inline" else {f"layer.{i}.mlp" for i in range(LAYER)}
    expected = {name: 2 if name in twice else 1 for name in calls}
    assert set(calls) == {"lm_head"} | {
        f"layer.{i}.{part}" for i in range(LAYERS) for part in ("attn", "mlp")
    }
    assert dict(calls) == expected
