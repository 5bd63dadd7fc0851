"""MLLMU-Bench's evaluation (Liu et al., 2024, ``eval.py``) of any VLM-like model on the
sets forget, test (``forget_test``: the forget people on ``Test_Set`` images), retain and
celebrity (``retain_celebrity``), each question type (``Image_Textual``, ``Pure_Text``)
reported on its own row:

- ``classification_acc`` (%): the model generates after the few-shot prompt; correct when
  the first non-space character is the right letter (:func:`cagul.metrics.letter_correct`).
- ``cloze_acc`` (%): few-shot, with the official ``[Blank]`` instruction; correct when the
  generation contains the ground truth (:func:`cagul.metrics.cloze_correct`).
- ``rouge1`` / ``rouge2`` / ``rougeL`` / ``bleu``: the generation task, zero-shot.

Few-shot prompts as ``eval.py`` builds them (its LLaVA setting; :func:`mllmu_prompts`):

- the exemplars of a task are every question of that task of ``shots[task]`` profiles
  (classification 1, cloze 2) drawn from the evaluated set's profiles (for test: from the
  forget set's, as ``eval.py``'s ``id_list``), read from their ``Full_Set`` rows (the
  ``few_shot`` context, ``eval.py``'s ``--few_shot_data``); each exemplar is its own user
  turn with the profile's ``Full_Set`` image (``Image_Textual``) or no image
  (``Pure_Text``), and a question sees the exemplars of its own question type;
- the drawn profiles' own questions (same task, type and index) are skipped, on the test
  set too; classification prompts show their exemplars on forget, test and retain, not on
  celebrity; cloze prompts on all four, but ``Full_Set`` has no celebrity, so none there;
- the draws (few-shot profiles, then one ``Test_Set`` image per row and task) come from one
  ``random.Random(seed)`` in ``eval.py``'s order of calls, so ``seed`` gives the draws of
  ``eval.py`` run after ``random.seed(seed)`` (``eval.py`` itself never seeds).

Without ``Full_Set`` the exemplars come from the evaluated rows (the forget rows for the
test set) and none are shown on the celebrity set. Text-only (``Pure_Text``) questions have
no image: CAGUL's gate stays off for them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .. import metrics
from ..config import CagulConfig
from ..data import VLMCollator
from ..data.mllmu import FEW_SHOT, QUESTION_TYPES
from ..errors import InputError
from .common import generate_answers, markdown_table, mean

#: ``eval.py``'s ``max_new_tokens`` (every task, LLaVA).
MAX_NEW_TOKENS = 50
SETS = ("forget", "forget_test", "retain", "retain_celebrity")
#: ``eval.py``'s order of tasks per set (its ``main``), which orders its random draws.
TASK_ORDER = {
    "forget": ("cloze", "classification", "generation"),
    "forget_test": ("classification", "cloze", "generation"),
    "retain": ("cloze", "classification", "generation"),
    "retain_celebrity": ("cloze", "classification", "generation"),
}
#: The set whose profiles the few-shot profiles are drawn from, when not the set itself.
ID_SOURCE = {"forget_test": "forget"}
#: Without ``Full_Set``: the set whose rows give the exemplars (``Full_Set`` has no celebrity).
FALLBACK_POOL = {"forget": "forget", "forget_test": "forget", "retain": "retain"}
#: The sets whose classification prompts show exemplars (``eval.py``'s modes forget, test,
#: retain_shared).
CLASSIFICATION_SHOTS_ON = ("forget", "forget_test", "retain")
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


def _exemplar_text(sample: dict) -> str:
    if sample["task"] == "classification":
        return f"Question: {sample['question']}\nCorrect Answer: {sample['letter']}"
    return f"{sample['question']}\nCorrect Answer: {sample['answer']}"


def _question_text(sample: dict) -> str:
    if sample["task"] == "classification":
        return f"{sample['question']}\n{LETTER_INSTRUCTION}"
    if sample["task"] == "cloze":
        return sample["question"]
    return f"{sample['question']}\n{GENERATION_INSTRUCTION[sample['question_type']]}"


def _people(samples: Sequence[dict]) -> list[str]:
    """The profiles of ``samples`` in order of first appearance (the rows' order)."""
    return list(dict.fromkeys(s["person"] for s in samples))


def _key(sample: dict) -> tuple:
    return sample["person"], sample["question_type"], sample["index"]


def mllmu_prompts(
    splits: dict[str, Sequence[dict]], *, seed: int = 0, shots: dict[str, int] | None = None
) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """``(prompts, draws)``: per set of :data:`SETS` in ``splits`` the samples asked, in
    ``eval.py``'s order of tasks, each with its full question text (instruction included),
    its ``few_shot`` exemplar turns and, on the test set, the image ``eval.py`` would draw;
    ``draws``: ``few_shot_people`` (set -> task -> profiles) and ``test_images``
    (profile -> task -> index into the row's ``image_choices``). The exemplars come from
    ``splits["few_shot"]`` (``Full_Set``) when present (module docstring)."""
    shots = {**DEFAULT_SHOTS, **(shots or {})}
    full_set = splits.get(FEW_SHOT)
    rng = random.Random(seed)
    prompts: dict[str, list[dict]] = {}
    draws: dict[str, Any] = {"few_shot_people": {}, "test_images": {}}
    for name in (s for s in SETS if s in splits):
        ids = _people(splits.get(ID_SOURCE.get(name, name)) or splits[name])
        rows = {}  # Test_Set rows (one per profile) -> their candidate images
        for s in splits[name]:
            if name == "forget_test" and s.get("image_choices"):
                rows.setdefault(s["person"], s["image_choices"])
        asked = prompts[name] = []
        for task in TASK_ORDER[name]:
            samples = [s for s in splits[name] if s["task"] == task]
            exemplars: list[dict] = []
            if task != "generation":
                if shots[task] > len(ids):
                    raise ValueError(
                        f"MLLMU-Bench: {shots[task]} few-shot profiles requested for {task} "
                        f"on {name}, {len(ids)} exist"
                    )
                drawn = rng.sample(ids, shots[task])
                draws["few_shot_people"].setdefault(name, {})[task] = drawn
                pool = full_set if full_set is not None else splits.get(FALLBACK_POOL.get(name))
                exemplars = [e for e in pool or () if e["task"] == task and e["person"] in drawn]
                skipped = {_key(e) for e in exemplars}
                samples = [s for s in samples if _key(s) not in skipped]
                if task == "classification" and name not in CLASSIFICATION_SHOTS_ON:
                    exemplars = []
            picks = {}
            for person, choices in rows.items():  # eval.py: random.choice(row["images"])
                picks[person] = rng.randrange(len(choices))
                draws["test_images"].setdefault(person, {})[task] = picks[person]
            for s in samples:
                image = s["image"]
                if image is not None and s["person"] in picks:
                    image = rows[s["person"]][picks[s["person"]]]
                turns = [
                    {"image": e["image"], "text": _exemplar_text(e)}
                    for e in exemplars
                    if e["question_type"] == s["question_type"]
                ]
                asked.append(
                    {**s, "image": image, "question": _question_text(s), "few_shot": turns}
                )
    return prompts, draws


def _without_shot_images(prompts: list[dict]) -> list[dict]:
    return [{**p, "few_shot": [{**t, "image": None} for t in p["few_shot"]]} for p in prompts]


def several_images_failure(model, collator: VLMCollator, prompts: Sequence[dict]) -> str | None:
    """``None`` if the processor and the model take a prompt with several images (the
    first prompt of ``prompts`` whose exemplars carry images: encoded and one token
    generated), else why not; ``None`` when no prompt has exemplar images."""
    probe = next((p for p in prompts if any(t["image"] is not None for t in p["few_shot"])), None)
    if probe is None:
        return None
    try:
        generate_answers(model, [probe], collator, max_new_tokens=1)
    except InputError:
        raise  # a bad image is the data's fault, not a one-image processor
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        return f"{type(e).__name__}: {e}"
    return None


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
    """MLLMU-Bench's table (module docstring) of ``model`` on the sets of ``splits``
    (``splits["few_shot"]``: the ``Full_Set`` rows, the exemplars). When the processor or
    the model cannot take a prompt with several images, the exemplars go without their
    images (``options.few_shot_images`` false, with the reason)."""
    shots = {**DEFAULT_SHOTS, **(shots or {})}
    if not any(s in splits for s in SETS):
        raise ValueError(f"MLLMU-Bench evaluation: none of the sets {SETS} in {sorted(splits)}")
    collator = VLMCollator(processor, config, target="answer")
    model.eval()
    prompts, draws = mllmu_prompts(splits, seed=seed, shots=shots)
    failure = several_images_failure(model, collator, [p for v in prompts.values() for p in v])
    rows: list[dict[str, Any]] = []
    for name, asked in prompts.items():
        if failure is not None:
            asked = _without_shot_images(asked)
        answers = generate_answers(
            model, asked, collator, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        rows += [_row(name, kind, asked, answers) for kind in QUESTION_TYPES]
    return {
        "protocol": "mllmu",
        "rows": rows,
        "options": {
            "seed": seed,
            "shots": shots,
            **draws,
            "few_shot_source": "Full_Set" if FEW_SHOT in splits else "evaluated sets (no Full_Set)",
            "few_shot_images": failure is None,
            **({} if failure is None else {"few_shot_images_off": failure}),
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
