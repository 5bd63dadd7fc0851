"""cagul framework: config, modules, the gated model wrapper (both modes, LLaVA and
Qwen2-VL), save / load, sample format and bad input. Tiny random VLMs built in-process."""

from __future__ import annotations

import json
import os

import pytest
import torch
from cagul import CagulConfig, CagulModel, ForgetDiscriminator, VisualTokenEncoder
from cagul.config import MODES
from cagul.data import VLMCollator, load_jsonl, validate_sample
from cagul_demo import tiny_vlm as tv
from cagul_demo.tiny_vlm import FAMILIES
from cagul_demo.tiny_vlm import force_gate as gate_everything
from cagul_demo.tiny_vlm import perturb_encoder as perturb
from cagul_demo.tiny_vlm import tiny_cagul as build

# ---------------------------------------------------------------------- modules


def test_encoder_is_identity_at_init_and_touches_only_selected_rows():
    enc = VisualTokenEncoder(dim=8, rank=4)
    x = torch.randn(2, 6, 8)
    positions = torch.tensor([[1, 4], [0, -1]])
    assert torch.equal(enc(x, positions), x)
    perturb_params = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=perturb_params))
    y = enc(x, positions)
    changed = (y != x).any(-1)
    assert changed.tolist() == [[False, True, False, False, True, False], [True] + [False] * 5]
    act = torch.nn.functional.gelu
    want = x[0, 4] + act(x[0, 4] @ enc.w1 + enc.b1) @ enc.w2 + enc.b2
    torch.testing.assert_close(y[0, 4], want)


def test_discriminator_pools_only_valid_tokens():
    disc = ForgetDiscriminator(dim=8, hidden=16)
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    logits = disc(tokens, mask)
    assert logits.shape == (2,) and logits.dtype == torch.float32
    garbage = tokens.clone()
    garbage[0, 3:] = 1e3  # padding must not matter
    torch.testing.assert_close(disc(garbage, mask), logits)
    torch.testing.assert_close(disc(tokens[:1, :3], mask[:1, :3]), logits[:1])
    with pytest.raises(ValueError, match="tokens must be"):
        disc(torch.randn(2, 5, 7), mask)
    with pytest.raises(ValueError, match="mask must be"):
        disc(tokens, mask[:, :4])


# ---------------------------------------------------------------------- model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_untrained_encoder_equals_wrapped_model(family, mode):
    vlm, model, collate, data, _args = build(family, mode)
    inputs = collate(data[:4])["inputs"]
    with torch.no_grad():
        want = vlm(**inputs).logits
        got = model(**inputs, forget_gate=torch.ones(4, dtype=torch.bool)).logits
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_gate_off_is_bit_identical(family, mode):
    vlm, model, collate, data, _args = build(family, mode)
    perturb(model)
    gate_everything(model, on=False)
    inputs = collate(data[:4])["inputs"]
    with torch.no_grad():
        want = vlm(**inputs).logits
        got = model(**inputs).logits
    assert torch.equal(got, want)
    prompts = collate.prompts(data[:3])
    want = vlm.generate(**prompts, max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(**prompts, max_new_tokens=4, do_sample=False), want)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_gate_selects_samples(family, mode):
    """Gated samples change, the others keep the wrapped model's logits (exactly for
    mode="input"; in one "inline" pass the batch runs the cagul attention, equal to sdpa)."""
    vlm, model, collate, data, _args = build(family, mode)
    perturb(model)
    inputs = collate(data[:4])["inputs"]
    gate = torch.tensor([True, False, True, False])
    with torch.no_grad():
        want = vlm(**inputs).logits
        got = model(**inputs, forget_gate=gate).logits
    for b in (0, 2):
        assert (got[b] - want[b]).abs().max() > 1e-3
    if mode == "input":
        assert torch.equal(got[1::2], want[1::2])
    else:
        torch.testing.assert_close(got[1::2], want[1::2], rtol=1e-5, atol=1e-5)


def _layer_input(layer: torch.nn.Module, run) -> torch.Tensor:
    """The hidden states entering ``layer`` during ``run()``."""
    seen = []
    handle = layer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[-1]


@pytest.mark.parametrize("mode", MODES)
def test_transform_touches_only_selected_visual_tokens(mode):
    """k tokens per sample are rewritten, all of them image tokens: in the LLM inputs
    (mode="input": layer 0's input) or in layer L's output (layer L + 1's input)."""
    vlm, model, collate, data, _args = build("llava", mode, k=3, ratio=None)
    perturb(model)
    inputs = collate(data[:2])["inputs"]
    layers = vlm.model.language_model.layers
    layer = layers[0] if mode == "input" else layers[model.config.layer + 1]
    gate = torch.ones(2, dtype=torch.bool)
    transformed = _layer_input(layer, lambda: model(**inputs, forget_gate=gate))
    plain = _layer_input(layer, lambda: vlm(**inputs))
    changed = (transformed != plain).any(-1)
    image = inputs["input_ids"] == vlm.config.image_token_id
    assert changed.sum(1).tolist() == [3, 3]
    assert not (changed & ~image).any()


def test_vlm_is_frozen_and_stays_in_eval_mode():
    vlm, model, _, _, _args = build("llava")
    assert not any(p.requires_grad for p in vlm.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("encoder.", "discriminator.")) for n in trainable)
    model.train()
    assert model.encoder.training and not vlm.training
    assert not any(m.training for m in vlm.modules())


def test_refuses_a_transformers_that_would_drop_the_images(monkeypatch):
    """transformers 5.17 accepts ``mm_encoder_outputs`` and ignores it: the images would be
    silently dropped (gate-off outputs then differ from the VLM's), so it is refused."""
    import transformers

    vlm, _ = tv.llava()
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(
        RuntimeError, match=r"needs transformers>=5\.18.*this is transformers 5\.17"
    ):
        CagulModel(vlm, CagulConfig(layer=1))
    monkeypatch.setattr(transformers, "__version__", "5.18.0.dev0")
    CagulModel(vlm, CagulConfig(layer=1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_generate_batch_with_padding(family, mode):
    """Left-padded prompts of different lengths, batch > 1, mixed gates: each sample
    generates as when alone. (ratio=1: the selection must not hinge on near-ties of the
    importance, which padding perturbs at rounding level.)"""
    _, model, collate, data, _args = build(family, mode, ratio=1.0)
    perturb(model)
    samples = [data[0], {**data[5], "question": "What is the job"}, data[8]]
    prompts = collate.prompts(samples)
    assert (prompts["attention_mask"] == 0).any()  # there is padding
    gate = torch.tensor([True, False, True])
    out = model.generate(**prompts, forget_gate=gate, max_new_tokens=5, do_sample=False)
    width = prompts["input_ids"].shape[1]
    assert out.shape == (3, width + 5)
    for b, sample in enumerate(samples):
        alone = collate.prompts([sample])
        one = model.generate(
            **alone, forget_gate=gate[b : b + 1], max_new_tokens=5, do_sample=False
        )
        new = one[0, alone["input_ids"].shape[1] :]  # may stop early at eos
        assert torch.equal(out[b, width : width + len(new)], new), b
        assert (out[b, width + len(new) :] == tv.PAD).all()


def test_forget_probability_and_text_only_samples():
    vlm, model, collate, data, _args = build("llava")
    prompts = collate.prompts(data[:2])
    prob = model.forget_probability(**prompts)
    assert prob.shape == (2,) and ((prob > 0) & (prob < 1)).all()
    tok = collate.processor.tokenizer
    text = tok(["USER: What is the job ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        want = vlm(**text).logits
        got = model(**text, forget_gate=torch.tensor([True])).logits
    assert torch.equal(got, want)  # no image: never transformed
    assert model.forget_probability(**text).tolist() == [0.0]


# ---------------------------------------------------------------------- save / load


@pytest.mark.parametrize("mode", MODES)
def test_save_load_round_trip(tmp_path, mode):
    vlm, model, collate, data, _args = build(
        "llava", mode, k=4, ratio=None, gate_threshold=0.3, encoder_rank=8, discriminator_hidden=16
    )
    perturb(model)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["cagul_config.json", "cagul_modules.safetensors"]
    module_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    vlm_bytes = sum(p.numel() * p.element_size() for p in vlm.parameters())
    size = os.path.getsize(tmp_path / "cagul_modules.safetensors")
    assert module_bytes <= size < module_bytes + 4096 and size < vlm_bytes / 10

    vlm2, _ = FAMILIES["llava"][0](seed=0)
    loaded = CagulModel.from_pretrained(vlm2, tmp_path)
    assert loaded.config == model.config.replace(cagul_version=loaded.config.cagul_version)
    assert loaded.config.cagul_version  # stamped by save_pretrained
    inputs = collate(data[:4])["inputs"]
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
        gate = torch.ones(4, dtype=torch.bool)
        assert torch.equal(
            model(**inputs, forget_gate=gate).logits, loaded(**inputs, forget_gate=gate).logits
        )
    assert (
        CagulModel.from_pretrained(vlm2, tmp_path, gate_threshold=0.9).config.gate_threshold == 0.9
    )


def test_load_rejects_mismatched_hidden_size_and_bad_dirs(tmp_path):
    _, model, _, _, _args = build("llava")
    model.save_pretrained(tmp_path)
    bigger, _ = tv.llava(hidden=64)
    with pytest.raises(ValueError, match=r"hidden size 48.*hidden size 64"):
        CagulModel.from_pretrained(bigger, tmp_path)
    vlm, _ = tv.llava()
    with pytest.raises(FileNotFoundError, match=r"no cagul_modules\.safetensors"):
        CagulModel.from_pretrained(vlm, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cannot override"):
        CagulModel.from_pretrained(vlm, tmp_path, encoder_rank=8)
    with pytest.raises(ValueError, match="hidden size 48"):
        CagulModel(bigger, model.config)
    state = model.trainable_state_dict()
    with pytest.raises(ValueError, match="missing"):
        model.load_trainable_state_dict({k: v for k, v in state.items() if "w1" not in k})
    with pytest.raises(ValueError, match="shape"):
        model.load_trainable_state_dict({**state, "encoder.b1": torch.zeros(3)})


# ---------------------------------------------------------------------- bad input


def test_model_bad_input():
    vlm, model, collate, data, _args = build("llava")
    with pytest.raises(TypeError, match="CagulConfig"):
        CagulModel(vlm, {"layer": 1})
    with pytest.raises(TypeError, match="transformers VLM"):
        CagulModel(torch.nn.Linear(2, 2), CagulConfig())
    with pytest.raises(ValueError, match="decoder layers"):
        CagulModel(vlm, CagulConfig(layer=3))
    inputs = collate(data[:2])["inputs"]
    with pytest.raises(ValueError, match="needs input_ids"):
        model(inputs_embeds=torch.zeros(2, 4, 48))
    no_pixels = {k: v for k, v in inputs.items() if k != "pixel_values"}
    with pytest.raises(ValueError, match="no pixel_values"):
        model(**no_pixels)
    with pytest.raises(ValueError, match="image tokens"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:1]})
    with pytest.raises(ValueError, match="forget_gate must have shape"):
        model(**inputs, forget_gate=torch.ones(3, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="video"):
        model(**inputs, pixel_values_videos=torch.zeros(1))


def test_sample_format_and_jsonl(tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "a.png")
    rows = [
        {"image": "a.png", "question": "What is the job?", "answer": "n1", "is_forget": True},
        {"image": "a.png", "question": "Q?", "answer": "n2", "is_forget": 0, "id": 7},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples = load_jsonl(tmp_path / "d.jsonl")
    assert [s["is_forget"] for s in samples] == [True, False] and samples[1]["id"] == 7
    assert samples[0]["image"] == str(tmp_path / "a.png")
    _, _, collate, _, _args = build("llava")
    batch = collate(samples)  # paths are loaded with PIL
    assert batch["is_forget"].tolist() == [True, False]

    def write(text):
        (tmp_path / "bad.jsonl").write_text(text)
        return tmp_path / "bad.jsonl"

    with pytest.raises(FileNotFoundError, match="no such file"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: invalid JSON"):
        load_jsonl(write("{not json\n"))
    with pytest.raises(ValueError, match=r"missing keys \['answer'\]"):
        load_jsonl(write(json.dumps({"image": "a.png", "question": "q", "is_forget": 1})))
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_jsonl(write(json.dumps({**rows[0], "image": "b.png"})))
    with pytest.raises(ValueError, match="has no samples"):
        load_jsonl(write("\n"))
    with pytest.raises(ValueError, match="is_forget"):
        validate_sample({**rows[0], "is_forget": "yes"})
    with pytest.raises(ValueError, match="answer must be"):
        validate_sample({**rows[0], "answer": " "})
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        validate_sample({**rows[0], "image": torch.zeros(16, 16)})


def test_collator_labels_cover_the_target_only():
    _, model, collate, data, _args = build("llava")
    batch = collate([data[0], data[-1]])  # forget (refusal target), retain (answer)
    ids, labels = batch["inputs"]["input_ids"], batch["inputs"]["labels"]
    tok = collate.processor.tokenizer
    for b, want in enumerate(["I don't know. </s>", data[-1]["answer"] + " </s>"]):
        assert tok.decode(ids[b][labels[b] != -100]) == want
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="target must be"):
        VLMCollator(collate.processor, model.config, target="both")
