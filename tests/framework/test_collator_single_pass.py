"""``VLMCollator`` runs the processor (and its image processing) once per training batch
and still gives, bit for bit, the batches of the former two-pass encoding (full text, then
the prompt alone through the processor), kept here as the oracle."""

from __future__ import annotations

import pytest
import torch
from cagul import CagulConfig
from cagul.data import VLMCollator
from cagul.data.samples import _expand_image_placeholders, load_image
from cagul_demo import tiny_vlm as tv

FAMILIES = {
    "llava": (tv.llava, tv.LLAVA_TEMPLATE, (16, 16, 16, 16)),
    # Qwen2-VL: the image size sets the number of visual tokens, so rows differ in length.
    "qwen2_vl": (tv.qwen2_vl, tv.QWEN_TEMPLATE, (16, 32, 24, 16)),
}


def two_pass_labels(collate: VLMCollator, samples: list[dict], inputs: dict) -> torch.Tensor:
    """The former labels: the prompt length of each row from a second processor call on
    the prompts alone (right padded)."""
    tokenizer = collate.processor.tokenizer
    saved, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        prompt_only = collate.processor(
            images=[load_image(s["image"]) for s in samples],
            text=[collate.prompt(s) for s in samples],
            padding=True,
            return_tensors="pt",
        )
    finally:
        tokenizer.padding_side = saved
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    labels = torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        n = int(prompt_only["attention_mask"][b].sum())
        assert torch.equal(ids[b, :n], prompt_only["input_ids"][b, :n])
        labels[b, n:] = torch.where(mask[b, n:].bool(), ids[b, n:], -100)
    return labels


def samples_of(sizes: tuple[int, ...]) -> list[dict]:
    """Forget and retain samples with questions of different lengths, one image each."""
    data = []
    for i, size in enumerate(sizes):
        question, _ = tv.QUESTIONS[i % len(tv.QUESTIONS)]
        data.append(
            {
                "image": tv.person_image(i, 0, size),
                "question": question,
                "answer": " ".join(tv.NAMES[i : i + 1 + i % 2]),
                "is_forget": i % 2 == 0,
            }
        )
    return data


class CountingProcessor:
    """Wraps a processor and counts the images it is given."""

    def __init__(self, processor):
        self.processor, self.images = processor, 0

    def __getattr__(self, name):
        return getattr(self.processor, name)

    def __call__(self, *, images, **kwargs):
        self.images += len(images)
        return self.processor(images=images, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", ["auto", "answer"])
def test_single_pass_batches_equal_the_two_pass_batches(family, target):
    make, template, sizes = FAMILIES[family]
    _, processor = make()
    counting = CountingProcessor(processor)
    collate = VLMCollator(counting, CagulConfig(prompt_template=template), target=target)
    samples = samples_of(sizes)
    batch = collate(samples)
    assert counting.images == len(samples)  # each image processed once
    inputs = batch["inputs"]
    lengths = inputs["attention_mask"].sum(1)
    assert lengths.unique().numel() > 1  # rows are padded
    expected = two_pass_labels(collate, samples, inputs)
    assert torch.equal(inputs["labels"], expected)
    # Left-padded prompts (generation) are unchanged: one processor call on the prompts.
    prompts = collate.prompts(samples)
    assert prompts["attention_mask"][:, 0].logical_not().any()
    for b, s in enumerate(samples):
        n = int(expected[b].ne(-100).nonzero().min())  # the prompt's length
        assert torch.equal(prompts["input_ids"][b, -n:], inputs["input_ids"][b, :n])
        assert tv.tokenizer().decode(inputs["input_ids"][b, n:][expected[b, n:] != -100]) == (
            f"{collate.target(s)} </s>"
        )


def test_placeholder_runs_take_the_lengths_of_the_image_runs():
    image = 9
    row = torch.tensor([1, 5, 9, 9, 9, 6, 9, 9, 7, 8, 0])
    expanded = _expand_image_placeholders([1, 5, 9, 6, 9, 7], row, image)
    assert expanded.tolist() == [1, 5, 9, 9, 9, 6, 9, 9, 7]
    assert _expand_image_placeholders([1, 9, 6, 9, 7, 9], row, image) is None  # 3 runs > 2
