"""A tiny LLaVA-architecture VLM trained from scratch on the synthetic benchmark (the
"vanilla" model of ``cagul demo``), its tokenizer, and an on-disk cache.

- :func:`train_tokenizer`: byte-level BPE trained with ``tokenizers`` on the benchmark's
  questions and answers plus the prompt template and the refusal, wrapped as a
  ``PreTrainedTokenizerFast`` (``<pad>``, ``<s>``, ``</s>``, ``<image>`` special tokens).
- :func:`llava_config`: the one toy-LLaVA builder of the project (demo, tests,
  benchmarks), from the architecture fields of a :class:`ToyVLMConfig`
  (:func:`text_fields` and :func:`vision_fields`: the same as transformers config fields,
  for the other tiny VLMs); :func:`build_vlm`: ``LlavaForConditionalGeneration`` from
  :class:`ToyVLMConfig` (a CLIP vision tower, the LLaVA MLP projector, a Llama decoder) +
  its ``LlavaProcessor``.
- :func:`train_vlm`: two stages, like a LLaVA built on a pretrained vision encoder:
  (1) :func:`pretrain_vision`: the vision tower + projector learn to tell the people
  apart (person-id classification of the mean projected visual token, a linear head that
  is then dropped); (2) :class:`SupervisedMethod`: supervised training of every VLM weight
  on the questions (a :class:`cagul.methods.Method`, run by :class:`cagul.training.CagulTrainer`).
- :func:`load_or_train`: trains on the given splits until the facts are memorised, or
  loads the model saved under ``cache_dir/<name>-<key>`` where ``key`` hashes the model
  config, the benchmark config and the splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from cagul.config import CagulConfig
from cagul.data import VLMCollator
from cagul.data.benchmark import REFUSAL, Benchmark
from cagul.training.arguments import UnlearningArguments
from torch import nn

from cagul_kernels.memory import PeakMemory, mib

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")
IMAGE_TOKEN = "<image>"
CACHE_FORMAT = 1


@dataclasses.dataclass
class ToyVLMConfig:
    """Architecture and training schedule of the toy VLM.

    Vision: ``image_size / patch_size`` squared patch tokens (CLS dropped) of a CLIP
    encoder (``vision_hidden``, ``vision_layers``, ``vision_heads``); the LLaVA projector
    maps them to ``hidden``. Text: a Llama decoder (``hidden``, ``layers``, ``heads``,
    ``kv_heads``, ``intermediate``) over a BPE vocabulary of at most ``vocab_size``.
    Training: ``vision_steps`` x ``vision_batch_size`` images of vision pretraining at
    ``vision_lr``, then AdamW for ``steps`` x ``batch_size`` questions, ``lr`` with
    ``warmup_steps`` and a cosine decay, ``weight_decay``, ``seed``.
    """

    image_size: int = 48
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    vocab_size: int = 768
    vision_steps: int = 300
    vision_batch_size: int = 64
    vision_lr: float = 3e-3
    steps: int = 700
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0

    @property
    def visual_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_tokenizer(texts: Sequence[str], vocab_size: int = 768):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (exact round trip
    of any text; ``<image>`` and the other special tokens are atomic)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(list(texts), trainer)
    # lstrip: "answer </s>" (the collator's format) ends in the eos token, no space token
    special = {t: AddedToken(t, special=True, lstrip=t == "</s>") for t in SPECIAL_TOKENS}
    tk.add_special_tokens(list(special.values()))
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=special["<pad>"],
        bos_token=special["<s>"],
        eos_token=special["</s>"],
    )


def tokenizer_corpus(benchmark: Benchmark, prompt_template: str) -> list[str]:
    """Every sample of the benchmark as prompt (without the image) + answer, and the
    refusal."""
    texts = [
        f"{prompt_template.format(image='', question=s['question'])} {s['answer']}"
        for samples in benchmark.splits.values()
        for s in samples
    ]
    return [*texts, REFUSAL]


def text_fields(arch: ToyVLMConfig, vocab_size: int, max_positions: int = 256) -> dict[str, Any]:
    """The decoder of ``arch`` (``hidden``, ``layers``, ``heads``, ``kv_heads``,
    ``intermediate``) as ``LlamaConfig`` fields, which the other text configs of
    transformers (Qwen2, Gemma3, ...) share."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        max_position_embeddings=max_positions,
    )


def vision_fields(arch: ToyVLMConfig) -> dict[str, Any]:
    """The vision tower of ``arch`` (``vision_hidden``, ``vision_layers``,
    ``vision_heads``, ``image_size``, ``patch_size``; MLP width ``2 * vision_hidden``) as
    ``CLIPVisionConfig`` fields."""
    if arch.image_size % arch.patch_size:
        raise ValueError(
            f"ToyVLMConfig: image_size ({arch.image_size}) must be a multiple of patch_size "
            f"({arch.patch_size})"
        )
    return dict(
        hidden_size=arch.vision_hidden,
        intermediate_size=2 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
    )


def llava_config(
    arch: ToyVLMConfig,
    *,
    vocab_size: int,
    image_token_id: int,
    max_positions: int = 256,
    attn_implementation: str | None = None,
    **text: Any,
):
    """The ``LlavaConfig`` of every toy LLaVA in the project (the demo's vanilla model, the
    tests' tiny VLMs, the benchmarks) with the architecture fields of ``arch`` (its
    training fields are not read): a CLIP vision tower (:func:`vision_fields`;
    ``(image_size / patch_size) ** 2`` visual tokens per image, CLS dropped), the LLaVA
    projector and a Llama decoder (:func:`text_fields`). ``attn_implementation``: for
    every sub-model; ``text``: more ``LlamaConfig`` fields (token ids,
    ``initializer_range``, ``attention_dropout``, ...)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_fields(arch)),
        text_config=LlamaConfig(**text_fields(arch, vocab_size, max_positions), **text),
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        attn_implementation=attn_implementation,
    )


def build_vlm(
    config: ToyVLMConfig, tokenizer, *, initializer_range: float = 0.02, convert_rgb: bool = True
):
    """``(model, processor)``: a randomly initialised ``LlavaForConditionalGeneration``
    (:func:`llava_config` of ``config``, text weights drawn with std
    ``initializer_range``, seeded with ``config.seed``) and the ``LlavaProcessor`` for it
    (``convert_rgb=False`` for images given as ``[3, H, W]`` tensors)."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = tokenizer.get_vocab()
    torch.manual_seed(config.seed)
    vlm_config = llava_config(
        config,
        vocab_size=len(vocab),
        image_token_id=vocab[IMAGE_TOKEN],
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        initializer_range=initializer_range,
    )
    model = LlavaForConditionalGeneration(vlm_config)
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.generation_config.eos_token_id = vocab["</s>"]
    size = config.image_size
    images = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_convert_rgb=convert_rgb,
    )
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model.eval(), processor


class SupervisedMethod(nn.Module):
    """Supervised training of all of a VLM's weights: mean NLL of the target tokens of a
    ``VLMCollator`` batch (a :class:`cagul.methods.Method`)."""

    def __init__(self, vlm: nn.Module):
        super().__init__()
        self.vlm = vlm

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.vlm.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.vlm.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.vlm.load_state_dict(state)

    def save_pretrained(self, path: str) -> None:
        self.vlm.save_pretrained(path)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.vlm(**batch["inputs"], use_cache=False)
        return out.loss, {"loss": out.loss.item()}


def pretrain_vision(
    vlm: nn.Module, processor: Any, samples: Sequence[dict], config: ToyVLMConfig, *, progress: bool
) -> list[float]:
    """Stage 1: trains the vision tower and the projector to classify which person
    (``sample["person"]``) each distinct image shows. Returns the loss per step."""
    from tqdm.auto import tqdm

    images: dict[int, tuple[Any, int]] = {}
    for s in samples:  # Benchmark.samples shares one image object per file
        images.setdefault(id(s["image"]), (s["image"], s["person"]))
    people = sorted({p for _, p in images.values()})
    label = {p: i for i, p in enumerate(people)}
    pixels = processor.image_processor([im for im, _ in images.values()], return_tensors="pt")
    pixels = pixels["pixel_values"].to(vlm.device)
    targets = torch.tensor([label[p] for _, p in images.values()], device=vlm.device)
    head = nn.Linear(vlm.config.text_config.hidden_size, len(people)).to(vlm.device)
    encoder = [vlm.model.vision_tower, vlm.model.multi_modal_projector]
    params = [p for m in [*encoder, head] for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    bar = tqdm(range(config.vision_steps), desc="vision pretrain", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(targets), (config.vision_batch_size,), generator=gen)
        feats = vlm.model.get_image_features(
            pixel_values=pixels[idx.to(pixels.device)], return_dict=True
        )
        pooled = torch.stack([f.mean(0) for f in feats.pooler_output])
        loss = nn.functional.cross_entropy(head(pooled), targets[idx.to(targets.device)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3g}")
    return losses


#: The ``UnlearningArguments`` fields that :class:`ToyVLMConfig` sets under the same name.
SCHEDULE_FIELDS = ("steps", "batch_size", "lr", "warmup_steps", "weight_decay", "seed")


def training_config(config: ToyVLMConfig) -> UnlearningArguments:
    """The ``CagulTrainer`` schedule for training the toy VLM: :data:`SCHEDULE_FIELDS` of
    ``config``, a cosine decay, fp32, a log line every tenth of the steps."""
    return UnlearningArguments(
        **{name: getattr(config, name) for name in SCHEDULE_FIELDS},
        lr_schedule="cosine",
        log_every=max(1, config.steps // 10),
        autocast="none",
    )


def train_vlm(
    config: ToyVLMConfig,
    benchmark: Benchmark,
    splits: Sequence[str],
    prompt_template: str,
    *,
    progress: bool = True,
):
    """``(model, processor, info)``: a toy VLM trained from scratch on ``splits``;
    ``info``: ``train_seconds`` and ``peak_memory_mb`` (both training stages)."""
    from cagul.training import CagulTrainer

    tokenizer = train_tokenizer(tokenizer_corpus(benchmark, prompt_template), config.vocab_size)
    vlm, processor = build_vlm(config, tokenizer)
    vlm.requires_grad_(True).train()
    samples = benchmark.samples(*splits)
    schedule = training_config(config)
    prompt = CagulConfig(prompt_template=prompt_template)
    start = time.perf_counter()
    with PeakMemory(vlm.device) as peak:
        pretrain_vision(vlm, processor, samples, config, progress=progress)
        trainer = CagulTrainer(
            SupervisedMethod(vlm),
            samples,
            VLMCollator(processor, prompt, target="answer"),
            schedule,
            progress=progress,
        )
        trainer.train()
    info = {
        "train_seconds": time.perf_counter() - start,
        "peak_memory_mb": mib(peak.bytes),
    }
    vlm.requires_grad_(False)
    return vlm.eval(), processor, info


def cache_key(config: ToyVLMConfig, benchmark: Benchmark, splits: Sequence[str], prompt: str):
    """A short hash of everything the trained model depends on."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": config.to_dict(),
            "data": benchmark.config.to_dict(),
            "splits": list(splits),
            "prompt": prompt,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train(
    config: ToyVLMConfig,
    benchmark: Benchmark,
    splits: Sequence[str],
    prompt_template: str,
    cache_dir: str,
    name: str,
    *,
    progress: bool = True,
):
    """``(model, processor, info)``: the toy VLM trained on ``splits``, loaded from
    ``cache_dir/<name>-<key>`` when present, else trained and saved there. ``info``:
    ``{"path", "cached", "train_seconds", "peak_memory_mb"}`` (of the original training;
    ``peak_memory_mb`` is ``None`` in entries written before it was recorded)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = os.path.join(
        cache_dir, f"{name}-{cache_key(config, benchmark, splits, prompt_template)}"
    )
    info_path = os.path.join(path, "cagul_train_info.json")
    if os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        vlm = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(path)
        info = {"peak_memory_mb": None, **info, "path": path, "cached": True}
        return vlm.eval().requires_grad_(False), processor, info
    vlm, processor, info = train_vlm(config, benchmark, splits, prompt_template, progress=progress)
    os.makedirs(path, exist_ok=True)
    vlm.save_pretrained(path)
    processor.save_pretrained(path)
    info = {**info, "splits": list(splits), "config": config.to_dict()}
    with open(info_path, "w") as f:  # written last: marks a complete entry
        json.dump(info, f, indent=2)
    return vlm, processor, {**info, "path": path, "cached": False}
