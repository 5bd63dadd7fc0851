"""``VLMCollator`` throughput (training batches, samples/s) at real image sizes.

Processors: ``llava`` (LlavaProcessor with the CLIP-L/336 image processor, 640x480 photos
-> 576 visual tokens each) and ``qwen2_vl`` (Qwen2-VL's image processor, 1120x2016 photos
-> 2,880 visual tokens each). The tokenizer is a small word-level one built in-process
(image processing dominates the collator's time). Batches of ``--batch`` forget / retain
samples; the median over ``--repeats`` batches, interleaved with the former two-pass
collator's work (this collator plus a second processor call on the prompts alone).

    python benchmarks/bench_collator.py            # -> results/collator_<device>.{csv,json}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cagul import CagulConfig
from cagul.data import VLMCollator

from benchmarks.common import markdown_table, write_results

QUESTION = "What is the name of the person in this photo and where does this person live?"
ANSWER = "This is Ada Quill who lives in Lisbon."
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL += ["<|image_pad|>", "<|video_pad|>"]


def word_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` covering the prompts and answers."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = dict.fromkeys(SPECIAL + f"USER: ASSISTANT: I don't know. {QUESTION} {ANSWER}".split())
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens([AddedToken(w, special=True) for w in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def processors() -> dict:
    """``name -> (processor, prompt_template, photo (height, width))``."""
    from transformers import LlavaProcessor, Qwen2VLProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    clip = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    llava = LlavaProcessor(
        image_processor=clip,
        tokenizer=word_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )

    class QwenImagesOnly(Qwen2VLProcessor):  # no video processor (it needs torchvision)
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

        def check_argument_for_proper_class(self, name, arg):
            return None

    qwen = QwenImagesOnly(
        image_processor=Qwen2VLImageProcessorPil(max_pixels=1120 * 2016), tokenizer=word_tokenizer()
    )
    qwen.video_processor = None
    return {
        "llava": (llava, "USER: {image} {question} ASSISTANT:", (480, 640)),
        "qwen2_vl": (
            qwen,
            "USER: <|vision_start|>{image}<|vision_end|> {question} ASSISTANT:",
            (2016, 1120),
        ),
    }


def samples(batch: int, size: tuple[int, int]) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        {
            "image": Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)),
            "question": QUESTION,
            "answer": ANSWER,
            "is_forget": i % 2 == 0,
        }
        for i in range(batch)
    ]


def former_two_pass(collate: VLMCollator, batch: list[dict]) -> None:
    """The former collator's work: this batch, then the processor again (images included)
    on the prompts alone, to find each prompt's length."""
    collate(batch)
    collate.processor(
        images=[s["image"] for s in batch],
        text=[collate.prompt(s) for s in batch],
        padding=True,
        return_tensors="pt",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, (processor, template, size) in processors().items():
        collate = VLMCollator(processor, CagulConfig(prompt_template=template))
        batch = samples(args.batch, size)
        image_id = processor.tokenizer.convert_tokens_to_ids(collate.image_token)
        tokens = int((collate(batch[:1])["inputs"]["input_ids"] == image_id).sum())
        providers = {"single_pass": collate, "two_pass_former": partial(former_two_pass, collate)}
        times = {p: [] for p in providers}
        for _ in range(args.repeats):  # interleaved: the machine's load hits both alike
            for provider, fn in providers.items():
                start = time.perf_counter()
                fn(batch)
                times[provider].append(time.perf_counter() - start)
        for provider, seconds in times.items():
            rows.append(
                {
                    "processor": name,
                    "visual_tokens": tokens,
                    "batch": args.batch,
                    "collator": provider,
                    "seconds_per_batch": statistics.median(seconds),
                    "samples_per_s": args.batch / statistics.median(seconds),
                }
            )
    print(markdown_table(rows, list(rows[0])))
    if not args.no_write:
        write_results("collator", rows, torch.device("cpu"))


if __name__ == "__main__":
    main()
