"""The collator's prompts go through the processor's chat template when it has one (tiny
LLaVA and Qwen2-VL processors given a template), else through ``prompt_template``."""

from __future__ import annotations

import pytest
import torch
from cagul.config import CagulConfig
from cagul.data import VLMCollator
from cagul_demo import tiny_vlm as tv

# one user turn: "USER: " + the image placeholder (if any) + the text; then " ASSISTANT:"
TEMPLATE = (
    "{% for m in messages %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image }} {% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
PLACEHOLDERS = {"llava": "<image>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_collator_uses_the_chat_template(family):
    _, processor = getattr(tv, family)(layers=1)
    config = CagulConfig(prompt_template="no template: {image} {question}")
    plain = VLMCollator(processor, config, target="answer")
    assert not plain.uses_chat_template
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    sample = {"image": image, "question": "What is the job", "answer": "n3", "is_forget": True}
    assert plain.prompt(sample) == f"no template: {processor.image_token} What is the job"

    processor.chat_template = TEMPLATE.replace("{{ image }}", PLACEHOLDERS[family])
    collator = VLMCollator(processor, config, target="answer")
    assert collator.uses_chat_template
    assert collator.prompt(sample) == f"USER: {PLACEHOLDERS[family]} What is the job ASSISTANT:"
    text_only = {**sample, "image": None}
    assert collator.prompt(text_only) == "USER: What is the job ASSISTANT:"

    batch = collator([sample, sample])
    labels = batch["inputs"]["labels"][0]
    target = processor.tokenizer.convert_tokens_to_ids(["n3", "</s>"])
    assert labels[labels != -100].tolist() == target
    assert "pixel_values" in collator.prompts([sample])
    assert "pixel_values" not in collator.prompts([text_only])
    with pytest.raises(ValueError, match="mixes text-only samples with image samples"):
        collator([sample, text_only])
