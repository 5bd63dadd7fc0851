"""The "cagul" attention in train mode with attention dropout (issue 15 item 14) and the
capture's ``layers`` argument (item 7c), on the shared tiny LLaVA (no downloads)."""

import pytest
import torch
from cagul_demo.tiny_vlm import BOS, EOS, PAD, VOCAB, llava
from transformers import LlavaForConditionalGeneration

from cagul_kernels.integrations import transformers as ct

IMG = VOCAB.index("<image>")
IMAGE_TOKENS = 16  # (16 / 4)^2 patches, CLS dropped


def _tiny_llava(dropout: float, vision_dropout: float | None = None):
    """The shared tiny LLaVA (2 text layers) rebuilt with attention dropout."""
    config = llava(layers=2)[0].config
    config.text_config.attention_dropout = dropout
    config.vision_config.attention_dropout = dropout if vision_dropout is None else vision_dropout
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config)


def _inputs() -> dict:
    words = [VOCAB.index(word) for word in ("What", "is", "the", "job")]
    rows = [
        [BOS, *words[:2], *[IMG] * IMAGE_TOKENS, *words, EOS],
        [BOS, *[IMG] * IMAGE_TOKENS, words[-1], EOS],
    ]
    width = max(map(len, rows))
    input_ids = torch.full((2, width), PAD)
    attention_mask = torch.zeros(2, width, dtype=torch.long)
    for b, row in enumerate(rows):  # left padding
        input_ids[b, width - len(row) :] = torch.tensor(row)
        attention_mask[b, width - len(row) :] = 1
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}


def _logits(model, implementation: str, seed: int, inputs: dict) -> torch.Tensor:
    model.set_attn_implementation(implementation)
    torch.manual_seed(seed)
    return model(**inputs).logits


def test_train_mode_dropout_equals_sdpa_under_the_same_seed():
    model, inputs = _tiny_llava(dropout=0.5).train(), _inputs()
    want = _logits(model, "sdpa", 0, inputs)
    got = _logits(model, "cagul", 0, inputs)
    assert torch.equal(got, want)
    assert not torch.equal(_logits(model, "cagul", 1, inputs), got)  # dropout did run
    got.sum().backward()
    assert all(p.grad is not None for p in model.model.multi_modal_projector.parameters())


def test_capture_in_train_mode_needs_no_dropout():
    # Text attention dropout only: layer 0's q and k do not depend on any dropout, so its
    # importance in train mode must equal eval mode's, while the outputs equal sdpa's.
    model, inputs = _tiny_llava(dropout=0.5, vision_dropout=0.0), _inputs()
    model.set_attn_implementation("cagul")
    qi, vi = ct.vlm_indices(model, inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        with ct.capture_importance(model.eval(), [0], qi, vi) as eval_capture:
            model(**inputs)
        want = _logits(model.train(), "sdpa", 0, inputs)
        model.set_attn_implementation("cagul")
        with ct.capture_importance(model, [0], qi, vi) as train_capture:
            torch.manual_seed(0)
            got = model(**inputs).logits
    assert torch.equal(got, want)
    assert torch.equal(train_capture.importance[0], eval_capture.importance[0])


@pytest.mark.parametrize("layers", [[True], True, [1.0], ["1"]])
def test_capture_layers_must_be_ints(layers):
    model, inputs = _tiny_llava(dropout=0.0), _inputs()
    model.set_attn_implementation("cagul")
    qi, vi = ct.vlm_indices(model, inputs["input_ids"], inputs["attention_mask"])
    with pytest.raises(TypeError, match="layers must be an int or a list of ints"):
        ct.capture_importance(model, layers, qi, vi)
