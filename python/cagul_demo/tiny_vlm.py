"""Tiny random VLMs (LLaVA, Qwen2-VL) with real processors and a word-level tokenizer,
built in-process (no downloads), and a small generated forget / retain VQA set: the
fixtures of the framework tests and of the DDP worker."""

from __future__ import annotations

import dataclasses

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .toy_vlm import ToyVLMConfig, build_vlm, text_fields

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL += ["<|video_pad|>", "<|image_pad|>"]
WORDS = ["USER:", "ASSISTANT:", "I", "don't", "know.", "What", "is", "the", "job", "city"]
WORDS += ["name", "of", "this", "person?", "Where", "does", "live?"]
NAMES = [f"n{i}" for i in range(24)]
VOCAB = SPECIAL + WORDS + NAMES
PAD, BOS, EOS = 0, 1, 2
SPECIAL_IDS = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
LLAVA_TEMPLATE = "USER: {image} {question} ASSISTANT:"
QWEN_TEMPLATE = "USER: <|vision_start|>{image}<|vision_end|> {question} ASSISTANT:"
HIDDEN = 48


def tokenizer() -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens([AddedToken(w, special=True) for w in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


#: The architecture of the tiny VLMs (LLaVA and Qwen2-VL; ToyVLMConfig's defaults for the
#: rest: 2 vision layers, 3 decoder layers, 4 heads over 2 kv heads): 16x16 images in 4x4
#: patches, a 32-wide vision tower, a 48-wide decoder.
TINY = ToyVLMConfig(
    image_size=16, patch_size=4, vision_hidden=32, vision_heads=2, hidden=HIDDEN, intermediate=96
)
#: The std of the tiny VLMs' text weights: large enough that the logits are not
#: near-uniform (the model is steerable).
INITIALIZER_RANGE = 0.15


def llava(seed: int = 0, layers: int = 3, hidden: int = HIDDEN):
    """``(model, processor)``: :data:`TINY` with ``layers`` and ``hidden`` as a LLaVA: CLIP
    16x16 images, patch 4 -> 16 visual tokens per image
    (:func:`cagul_demo.toy_vlm.build_vlm` with the word-level tokenizer)."""
    config = dataclasses.replace(TINY, layers=layers, hidden=hidden, seed=seed)
    return build_vlm(config, tokenizer(), initializer_range=INITIALIZER_RANGE, convert_rgb=False)


class _QwenProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor (which needs torchvision)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def check_argument_for_proper_class(self, name, arg):
        return None


def qwen2_vl(seed: int = 0, layers: int = 3):
    """``(model, processor)``: patch 4, merge 2 -> (H/8) * (W/8) visual tokens per image."""
    torch.manual_seed(seed)
    arch = dataclasses.replace(TINY, layers=layers)
    text = {**text_fields(arch, len(VOCAB)), **SPECIAL_IDS, "initializer_range": INITIALIZER_RANGE}
    rope = {"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 1e4}  # M-RoPE
    config = Qwen2VLConfig(
        vision_config=dict(
            depth=arch.vision_layers,
            embed_dim=arch.vision_hidden,
            num_heads=arch.vision_heads,
            patch_size=arch.patch_size,
            hidden_size=arch.hidden,  # the merger's output: the decoder's width
            mlp_ratio=2,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        text_config={**text, "rope_parameters": rope},
        image_token_id=VOCAB.index("<|image_pad|>"),
        video_token_id=VOCAB.index("<|video_pad|>"),
        vision_start_token_id=VOCAB.index("<|vision_start|>"),
        vision_end_token_id=VOCAB.index("<|vision_end|>"),
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    images = Qwen2VLImageProcessorPil(
        min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2, temporal_patch_size=2
    )
    processor = _QwenProcessor(image_processor=images, tokenizer=tokenizer())
    processor.video_processor = None
    return model, processor


def person_image(person: int, pose: int, size: int = 16) -> torch.Tensor:
    """A uint8 ``[3, size, size]`` picture of a fictitious person: a per-person colour and
    stripe pattern with per-pose noise."""
    g = torch.Generator().manual_seed(1000 * person + pose)
    colour = torch.tensor([(37 * person) % 256, (91 * person + 50) % 256, (151 * person) % 256])
    img = colour[:, None, None].float().expand(3, size, size).clone()
    stripes = torch.arange(size)[None, :] % (2 + person % 3) == 0
    img[:, stripes.expand(size, size)] = 255.0 - img[:, stripes.expand(size, size)]
    img += 25 * torch.randn(3, size, size, generator=g)
    return img.clamp(0, 255).to(torch.uint8)


QUESTIONS = [("What is the name of this person?", 0), ("Where does this person live?", 1)]


def dataset(n_people: int = 6, n_forget: int = 3, poses: int = 2, size: int = 16) -> list[dict]:
    """Samples in the cagul format: people ``0..n_forget-1`` are the forget set."""
    samples = []
    for person in range(n_people):
        for pose in range(poses):
            for question, fact in QUESTIONS:
                samples.append(
                    {
                        "image": person_image(person, pose, size),
                        "question": question,
                        "answer": NAMES[(2 * person + fact) % len(NAMES)],
                        "is_forget": person < n_forget,
                    }
                )
    return samples


FAMILIES = {
    "llava": (llava, LLAVA_TEMPLATE, 16),
    "qwen2_vl": (qwen2_vl, QWEN_TEMPLATE, 24),
}


def tiny_cagul(family: str, mode: str = "input", seed: int = 0, **settings):
    """``(vlm, CagulModel, collator, samples, UnlearningArguments)`` for the tiny VLM of
    ``family`` (a key of :data:`FAMILIES`); ``settings``: more ``CagulConfig`` and
    ``UnlearningArguments`` fields. The collator is CAGUL's."""
    from cagul import CagulModel
    from cagul.data import VLMCollator
    from cagul.training.arguments import parse_settings

    make, template, size = FAMILIES[family]
    defaults = {"mode": mode, "prompt_template": template, "layer": 1}
    config, args = parse_settings({**defaults, **settings})
    vlm, processor = make(seed=seed)
    model = CagulModel(vlm, config)
    collator = VLMCollator(processor, model.config, forget_loss=args.forget_loss)
    return vlm, model, collator, dataset(size=size), args


def perturb_encoder(model, seed: int = 1) -> None:
    """Non-zero encoder weights (as after training) for a ``CagulModel``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def force_gate(model, on: bool) -> None:
    """Makes a ``CagulModel``'s discriminator say forget (``on``) or not for every image."""
    with torch.no_grad():
        model.discriminator.head[-1].bias.fill_(100.0 if on else -100.0)
        model.discriminator.head[-1].weight.zero_()
