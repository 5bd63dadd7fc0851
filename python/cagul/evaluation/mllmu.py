"""MLLMU-Bench's evaluation (Liu et al., 2024, ``eval.py``) of any VLM-like model on the
sets forget, test (``forget_test``: the forget people on ``Test_Set`` images), retain and
celebrity (``retain_celebrity``), each question type (``Image_Textual``, ``Pure_Text``)
reported on its own row:

- ``classification_acc`` (%): the model generates after the few-shot prompt; correct when
  the first non-space character is the right letter (:func:`cagul.metrics.letter_correct`).
- ``cloze_acc`` (%): few-shot, with the official ``[Blank]`` instruction; correct when the
  generation contains the ground truth (:func:`cagul.metrics.cloze_correct`).
- ``rouge1`` / ``rouge2`` / ``rougeL`` / ``bleu``: the generation task, zero-shot.

Few-shot exemplars are every question of ``shots`` profiles drawn with
``random.Random(seed)`` from the evaluated set (for test: from the forget set, the same
people on their training image); those profiles' own questions are then skipped. As in
``eval.py`` the classification prompt has exemplars on forget / test / retain (not
celebrity) with 1 profile, the cloze prompt with 2 (its LLaVA setting). Unlike ``eval.py``
the exemplars are text inside the one user turn, without their images (one image per
prompt). Text-only (``Pure_Text``) questions have no image: CAGUL's gate stays off.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .. import metrics
from ..config import CagulConfig
from ..data import VLMCollator
from ..data.mllmu import QUESTION_TYPES
from .common import generate_answers, markdown_table, mean

#: ``eval.py``'s ``max_new_tokens`` (every task, LLaVA).
MAX_NEW_TOKENS = 50
SETS = ("forget", "forget_test", "retain", "retain_celebrity")
#: Sets whose classification / cloze prompts have few-shot exemplars, and their source set.
FEW_SHOT_SOURCE = {"forget": "forget", "forget_test": "forget", "retain": "retain"}
DEFAULT_SHOTS = {"classification": 1, "cloze": 2}
LETTER_INSTRUCTION = "Just give ONE letter representing the answer directly."
GENERATION_INSTRUCTION = {
    "Image_Textual": "Answer the question based on your trained knowledge in one sentence "
    "accurately in ENGLISH.",
    "Pure_Text": "Answer the question based on your trained knowledge in one sentence in ENGLISH.",
}
COLUMNS = (
    ("set", "Set"),
    ("question_type", "Questions"),
    ("classification_acc", "Classification acc (%)"),
    ("cloze_acc", "Cloze acc (%)"),
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rougeL", "ROUGE-L"),
    ("bleu", "BLEU"),
)


def _exemplar(sample: dict) -> str:
    if sample["task"] == "classification":
        return f"Question: {sample['question']}\nCorrect Answer: {sample['letter']}\n"
    return f"{sample['question']}\nCorrect Answer: {sample['answer']}\n"


def _prompt_text(sample: dict, exemplars: Sequence[dict]) -> str:
    shots = "".join(
        _exemplar(e) for e in exemplars if e["question_type"] == sample["question_type"]
    )
    if sample["task"] == "classification":
        return f"{shots}{sample['question']}\n{LETTER_INSTRUCTION}"
    if sample["task"] == "cloze":
        return f"{shots}{sample['question']}"
    return f"{sample['question']}\n{GENERATION_INSTRUCTION[sample['question_type']]}"


def few_shot_people(samples: Sequence[dict], count: int, seed: int) -> list[str]:
    """``count`` profiles drawn from those of ``samples`` with ``random.Random(seed)``."""
    people = sorted({s["person"] for s in samples})
    if count > len(people):
        raise ValueError(f"MLLMU-Bench: {count} few-shot profiles requested, {len(people)} exist")
    return random.Random(seed).sample(people, count)


def evaluate_mllmu(
    model,
    splits: dict[str, Sequence[dict]],
    processor: Any,
    config: CagulConfig,
    *,
    seed: int = 0,
    shots: dict[str, int] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> dict[str, Any]:
    """MLLMU-Bench's table (module docstring) of ``model`` on the sets of ``splits``."""
    shots = {**DEFAULT_SHOTS, **(shots or {})}
    present = [s for s in SETS if s in splits]
    if not present:
        raise ValueError(f"MLLMU-Bench evaluation: none of the sets {SETS} in {sorted(splits)}")
    collator = VLMCollator(processor, config, target="answer")
    model.eval()
    rows: list[dict[str, Any]] = []
    few_shot: dict[str, dict[str, list[str]]] = {}
    for name in present:
        prompts, tasks = [], []
        for task in ("classification", "cloze", "generation"):
            samples = [s for s in splits[name] if s["task"] == task]
            exemplars: list[dict] = []
            source = FEW_SHOT_SOURCE.get(name)
            if task != "generation" and source in splits:
                pool = [s for s in splits[source] if s["task"] == task]
                people = few_shot_people(pool, shots[task], seed)
                few_shot.setdefault(name, {})[task] = people
                exemplars = [s for s in pool if s["person"] in people]
                samples = [s for s in samples if s["person"] not in people]
            prompts += [{**s, "question": _prompt_text(s, exemplars)} for s in samples]
            tasks += samples
        answers = generate_answers(
            model, prompts, collator, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        rows += [_row(name, kind, tasks, answers) for kind in QUESTION_TYPES]
    return {
        "protocol": "mllmu",
        "rows": rows,
        "options": {
            "seed": seed,
            "shots": shots,
            "few_shot_people": few_shot,
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "prompt": "chat template" if collator.uses_chat_template else config.prompt_template,
        },
    }


def _row(name: str, kind: str, samples: list[dict], answers: list[str]) -> dict[str, Any]:
    def of(task: str) -> list[tuple[dict, str]]:
        return [
            (s, a)
            for s, a in zip(samples, answers, strict=True)
            if s["task"] == task and s["question_type"] == kind
        ]

    def percent(values: list[bool]) -> float | None:
        return None if not values else 100.0 * sum(values) / len(values)

    generation = of("generation")
    rouge = [metrics.rouge(a, s["answer"]) for s, a in generation]
    return {
        "set": name,
        "question_type": kind,
        "classification_acc": percent(
            [metrics.letter_correct(a, s["letter"]) for s, a in of("classification")]
        ),
        "cloze_acc": percent([metrics.cloze_correct(a, s["answer"]) for s, a in of("cloze")]),
        **{k: mean([r[k] for r in rouge]) for k in ("rouge1", "rouge2", "rougeL")},
        "bleu": mean([metrics.bleu(a, s["answer"]) for s, a in generation]),
        "n": {t: len(of(t)) for t in ("classification", "cloze", "generation")},
    }


def mllmu_table(result: dict[str, Any]) -> str:
    """The markdown table of :func:`evaluate_mllmu`'s result (one row per set and question
    type; ``Pure_Text`` rows have no image, so CAGUL's gate is off for them)."""
    return markdown_table(result["rows"], COLUMNS, digits=3) + (
        "\nPure_Text questions carry no image: CAGUL's discriminator gate stays off for them.\n"
    )
