"""The training / evaluation sample format and its collator.

A sample is a dict (in memory) or one JSON object per line of a JSONL file:

    {"image": "people/p03_pose1.png",   # path (relative to the JSONL file), or in memory a
                                        # [3, H, W] uint8/float tensor or a PIL image
     "question": "What is the name of this person?",
     "answer": "Ada Quill",
     "is_forget": true,                 # forget set (1) or retain set (0)
     "refusal": "I don't know.",        # optional: overrides the training refusal
     "forget_loss": "npo",              # optional: overrides the training forget_loss
     "few_shot": [{"image": ..., "text": "..."}]}  # optional: turns before the question

Other keys (ids, splits, metadata) are kept and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..config import CagulConfig
from ..errors import InputError
from ..files import read_text
from ..training.arguments import FORGET_LOSSES, REFUSAL
from ._records import EncodedImage
from .paths import resolve_image_path

REQUIRED_KEYS = ("image", "question", "answer", "is_forget")
TARGETS = ("auto", "answer", "refusal", "forget_refusal")


def validate_sample(sample: Any, where: str = "sample") -> dict:
    """Checks the keys and types of one sample; returns it."""
    if not isinstance(sample, dict):
        raise TypeError(f"{where}: expected a dict, got {type(sample).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in sample]
    if missing:
        raise ValueError(f"{where}: missing keys {missing} (required: {list(REQUIRED_KEYS)})")
    for key in ("question", "answer"):
        if not isinstance(sample[key], str) or not sample[key].strip():
            raise ValueError(f"{where}: {key} must be a non-empty string")
    if not isinstance(sample["is_forget"], (bool, int)) or sample["is_forget"] not in (0, 1):
        raise ValueError(f"{where}: is_forget must be true/false, got {sample['is_forget']!r}")
    if "refusal" in sample and not isinstance(sample["refusal"], str):
        raise ValueError(f"{where}: refusal must be a string")
    if "forget_loss" in sample and sample["forget_loss"] not in FORGET_LOSSES:
        raise ValueError(
            f"{where}: forget_loss must be one of {FORGET_LOSSES}, got {sample['forget_loss']!r}"
        )
    _check_image(sample["image"], where)
    turns = sample.get("few_shot", [])
    if not isinstance(turns, list):
        raise TypeError(f"{where}: few_shot must be a list of {{'image', 'text'}} turns")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str) or not turn["text"]:
            raise ValueError(f"{where}: few_shot[{i}] needs a non-empty string 'text'")
        _check_image(turn.get("image"), f"{where}: few_shot[{i}]")
    return sample


def _check_image(image: Any, where: str) -> None:
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(
                f"{where}: an image tensor must be [3, H, W], got {tuple(image.shape)}"
            )
    elif not isinstance(image, (str, EncodedImage, type(None))) and not hasattr(image, "convert"):
        raise TypeError(
            f"{where}: image must be a path, a [3, H, W] tensor, a PIL image or None (text only)"
        )


def sample_images(sample: dict) -> list:
    """The images of a sample's prompt, in order: those of its ``few_shot`` turns, then its
    own (none for a text-only sample)."""
    turns = [*sample.get("few_shot", ()), sample]
    return [t["image"] for t in turns if t.get("image") is not None]


def load_jsonl(path: str | os.PathLike, *, strict_paths: bool = False) -> list[dict]:
    """Reads samples from a UTF-8 JSONL file; relative image paths are resolved against
    the file's directory and must exist. ``strict_paths``: image files must lie inside that
    directory (:func:`~cagul.data.paths.resolve_image_path`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_jsonl: no such file: {path}")
    base = os.path.dirname(os.path.abspath(path))
    samples = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON: {e}") from None
        validate_sample(sample, where)
        if not isinstance(sample["image"], str):
            raise ValueError(f"{where}: image must be a path string in a JSONL file")
        confine = base if strict_paths else None
        image = resolve_image_path(sample["image"], base, f"{where}: field 'image'", confine)
        samples.append({**sample, "image": image, "is_forget": bool(sample["is_forget"])})
    if not samples:
        raise ValueError(f"load_jsonl: {path} has no samples")
    return samples


def load_image(image: Any):
    """A path (opened with PIL, RGB), an :class:`EncodedImage` (decoded now), a tensor or a
    PIL image, ready for a processor. A file that is not a readable image (empty, another
    format, cut short, a decompression bomb) raises :class:`~cagul.errors.InputError`
    naming it."""
    if isinstance(image, EncodedImage):
        return image.decode()
    if isinstance(image, str):
        from PIL import Image

        if not os.path.isfile(image):
            raise FileNotFoundError(f"image file not found: {image}")
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            reason = str(e).replace(repr(image), "").replace(image, "").strip(" :")
            raise InputError(f"{image}: not a readable image ({reason})") from None
    return image


class VLMCollator:
    """Turns samples into model inputs with a transformers processor.

    ``collator(samples)`` (training): ``{"inputs": {... , "labels"}, "is_forget": [B] bool}``
    where each sequence is ``prompt + " " + target + eos`` (right padded) and ``labels`` are
    the target's token ids (``-100`` elsewhere) and ``forget_loss`` is ``[B]`` indices
    into ``FORGET_LOSSES`` (the sample's ``forget_loss``, else ``forget_loss``). The
    target is the refusal (the sample's ``refusal``, else ``refusal``) for forget samples
    whose forget loss is ``"idk"``, else the true answer.
    ``collator.prompts(samples)``: prompt-only inputs, left padded, for ``generate``.

    ``processor``: a transformers processor (``__call__(images=, text=)``, ``.tokenizer``,
    ``.image_token``). The prompt is the processor's chat template applied to one user turn
    (an image, unless the sample is text-only with ``image=None``, and the question) when the
    processor has a ``chat_template``; else ``config.prompt_template`` with ``{image}``
    replaced by the processor's image placeholder (by nothing for a text-only sample). A
    sample's ``few_shot`` turns (``{"image": image or None, "text"}``, e.g. MLLMU-Bench's
    exemplars) come first, each its own user turn: a chat-template message, or without a
    template ``prompt_template`` cut after ``{question}`` (the text after it is the
    assistant's cue) with the turn's text as the question, then a newline; the processor
    gets every image of the prompt (:func:`sample_images`). A batch is all samples with
    images or all samples without. ``target="answer"`` always uses the
    true answer (evaluation), ``"refusal"`` always the refusal, ``"forget_refusal"`` the
    refusal for every forget sample and the true answer otherwise (the IdK baseline).
    """

    def __init__(
        self,
        processor: Any,
        config: CagulConfig,
        target: str = "auto",
        *,
        refusal: str = REFUSAL,
        forget_loss: str = "idk",
    ):
        if not callable(processor) or not hasattr(processor, "tokenizer"):
            raise TypeError("VLMCollator: processor must be a transformers processor")
        if target not in TARGETS:
            raise ValueError(f"VLMCollator: target must be one of {TARGETS}, got {target!r}")
        if forget_loss not in FORGET_LOSSES:
            raise ValueError(
                f"VLMCollator: forget_loss must be one of {FORGET_LOSSES}, got {forget_loss!r}"
            )
        self.processor, self.config, self.target_kind = processor, config, target
        self.refusal, self.default_forget_loss = refusal, forget_loss
        self.image_token = getattr(processor, "image_token", None)
        if not isinstance(self.image_token, str):
            raise ValueError("VLMCollator: the processor has no image_token")

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.processor, "chat_template", None))

    def prompt(self, sample: dict) -> str:
        turns = [
            *sample.get("few_shot", ()),
            {"image": sample["image"], "text": sample["question"]},
        ]
        if self.uses_chat_template:
            messages = [
                {
                    "role": "user",
                    "content": [
                        *([{"type": "image"}] if t.get("image") is not None else []),
                        {"type": "text", "text": t["text"]},
                    ],
                }
                for t in turns
            ]
            return self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        template = self.config.prompt_template
        head, _, tail = template.rpartition("{question}")
        turn = template if "{image}" in tail else head + "{question}"
        shots = "".join(
            turn.format(image=self._placeholder(t), question=t["text"]) + "\n" for t in turns[:-1]
        )
        return shots + template.format(image=self._placeholder(sample), question=sample["question"])

    def _placeholder(self, turn: dict) -> str:
        return "" if turn.get("image") is None else self.image_token

    def target(self, sample: dict) -> str:
        refuse = {
            "auto": sample["is_forget"] and self.forget_loss(sample) == "idk",
            "answer": False,
            "refusal": True,
            "forget_refusal": bool(sample["is_forget"]),
        }[self.target_kind]
        if refuse:
            return sample.get("refusal") or self.refusal
        return sample["answer"]

    def forget_loss(self, sample: dict) -> str:
        return sample.get("forget_loss") or self.default_forget_loss

    def _encode(self, samples: Sequence[dict], texts: list[str], side: str) -> dict:
        tokenizer = self.processor.tokenizer
        images = [sample_images(s) for s in samples]
        if any(images) and not all(images):
            raise ValueError("VLMCollator: a batch mixes text-only samples with image samples")
        with _padding_side(tokenizer, side):
            out = self.processor(
                images=[load_image(im) for row in images for im in row] or None,
                text=texts,
                padding=True,
                return_tensors="pt",
            )
        return dict(out)

    def prompts(self, samples: Sequence[dict]) -> dict:
        for i, s in enumerate(samples):
            validate_sample(s, f"sample {i}")
        return self._encode(samples, [self.prompt(s) for s in samples], "left")

    def __call__(self, samples: Sequence[dict]) -> dict:
        if not samples:
            raise ValueError("VLMCollator: empty batch")
        for i, s in enumerate(samples):
            validate_sample(s, f"sample {i}")
        eos = self.processor.tokenizer.eos_token or ""
        prompts = [self.prompt(s) for s in samples]
        full = [  # the answer after a space, unless the prompt ends with one (a chat template)
            f"{p}{'' if p[-1:].isspace() else ' '}{self.target(s)}{' ' + eos if eos else ''}"
            for p, s in zip(prompts, samples, strict=True)
        ]
        inputs = self._encode(samples, full, "right")
        # The prompts alone go through the tokenizer only: the processor (and its image
        # processing) runs once per batch.
        prompt_ids = self.processor.tokenizer(prompts)["input_ids"]
        image_id = self.processor.tokenizer.convert_tokens_to_ids(self.image_token)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        labels = torch.full_like(ids, -100)
        for b in range(ids.shape[0]):
            prompt = _expand_image_placeholders(prompt_ids[b], ids[b], image_id)
            n = 0 if prompt is None else prompt.numel()
            if prompt is None or not torch.equal(ids[b, :n], prompt):
                raise ValueError(
                    f"VLMCollator: sample {b}: the tokenised prompt is not a prefix of the "
                    "tokenised prompt + answer; end prompt_template with a separator token"
                )
            labels[b, n:] = torch.where(mask[b, n:].bool(), ids[b, n:], -100)
            if not (labels[b] != -100).any():
                raise ValueError(f"VLMCollator: sample {b} has an empty target")
        inputs["labels"] = labels
        is_forget = torch.tensor([bool(s["is_forget"]) for s in samples])
        kinds = torch.tensor([FORGET_LOSSES.index(self.forget_loss(s)) for s in samples])
        return {"inputs": inputs, "is_forget": is_forget, "forget_loss": kinds}


@contextlib.contextmanager
def _padding_side(tokenizer: Any, side: str) -> Iterator[None]:
    saved = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = saved


def _expand_image_placeholders(
    prompt_ids: list[int], row: torch.Tensor, image_id: int
) -> torch.Tensor | None:
    """The prompt's token ids as the processor encodes them: each run of image placeholder
    tokens in ``prompt_ids`` (tokenizer output) replaced by the matching run of image tokens
    in ``row`` (``[S]``, the processor's encoding of prompt + answer, in order). ``None``
    when ``row`` has fewer image-token runs than the prompt has placeholder runs."""
    values, counts = torch.unique_consecutive(
        torch.tensor(prompt_ids, dtype=row.dtype), return_counts=True
    )
    row_values, row_counts = torch.unique_consecutive(row, return_counts=True)
    placeholders = values == image_id
    runs = row_counts[row_values == image_id]
    n_runs = int(placeholders.sum())
    if runs.numel() < n_runs:
        return None
    counts[placeholders] = runs[:n_runs]
    return values.repeat_interleave(counts)
