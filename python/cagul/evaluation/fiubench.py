"""FIUBench's evaluation (Ma et al., 2025, ``evaluate_util.py`` with its ``eval.yaml``) of
any VLM-like model, on the forget split and the retain eval split (``retain5``).

Per split, over the QA pairs (``task="qa"``): ``rougeL_recall`` (greedy answer, first
sentence), ``probability`` (``exp(-mean NLL)`` of the answer), ``truth_ratio`` (TOFU score
of the paraphrased vs perturbed answers; ``"forget"`` aggregation on the forget split,
``"retain"`` on the other), ``em`` (keyword EM of the answer), ``ape`` (keyword EM of the
answers to the paraphrased questions), ``min_k`` / ``min_k_plus_plus`` (FIUBench's weighted
Min-K% / Min-K%++ of the answer). Over the model: ``forget_quality`` (KS p-value of the
forget truth ratios against the ``reference`` retain-only model's) and ``model_utility``
(harmonic mean of the retain split's probability, ROUGE-L recall and truth ratio). A
metric that cannot be computed is reported ``{"absent": reason}``, never 0: ``privleak``
always is (:data:`NO_HOLDOUT`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import metrics
from ..config import CagulConfig
from ..data import VLMCollator
from .common import absent, answer_stats, generate_answers, markdown_table, mean

NO_REFERENCE = "needs --reference (the retain-only model)"
#: Why FIUBench has no privleak: an MIA AUC needs non-members of the forget set's
#: distribution, and FIUBench's official code defines none.
NO_HOLDOUT = (
    "FIUBench defines no holdout (non-member) set: its 400 people (full.json) are all "
    "finetuned on, split.json lists only forget and retain subsets of them, and its MIA "
    "metrics (Min-K%, Min-K%++) are mean scores on the forget split, not an AUC "
    "(evaluate_util.py imports roc_curve / auc but never calls them)"
)
#: FIUBench's eval.yaml: ``generation.max_new_tokens``.
MAX_NEW_TOKENS = 50
COLUMNS = (
    ("split", "Split"),
    ("rougeL_recall", "ROUGE-L"),
    ("probability", "Prob."),
    ("truth_ratio", "Truth ratio"),
    ("em", "EM"),
    ("ape", "APE"),
    ("min_k", "Min-K%"),
    ("min_k_plus_plus", "Min-K%++"),
    ("n", "n"),
)


def qa_samples(samples: Sequence[dict]) -> list[dict]:
    """The QA pairs of ``samples`` (not the multiple-choice samples)."""
    return [s for s in samples if s.get("task", "qa") == "qa" and s.get("form") != "mc"]


def truth_ratios(model, samples: list[dict], collator, batch_size: int) -> list[float]:
    """Per sample with a paraphrased answer and perturbed answers, its truth ratio."""
    usable = [s for s in samples if s.get("paraphrased_answer") and s.get("perturbed_answers")]
    paraphrased = answer_stats(
        model,
        [{**s, "answer": s["paraphrased_answer"]} for s in usable],
        collator,
        batch_size=batch_size,
    )
    expanded = [{**s, "answer": p} for s in usable for p in s["perturbed_answers"]]
    perturbed = iter(answer_stats(model, expanded, collator, batch_size=batch_size))
    ratios = []
    for s, para in zip(usable, paraphrased, strict=True):
        losses = [next(perturbed).mean_nll for _ in s["perturbed_answers"]]
        ratios.append(metrics.truth_ratio(para.mean_nll, losses))
    return ratios


def score_split(
    model,
    samples: Sequence[dict],
    collator: VLMCollator,
    kind: str,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> tuple[dict[str, Any], list[float], list]:
    """The per-split metrics of the module docstring (``kind``: ``"forget"`` or
    ``"retain"``, the truth-ratio aggregation), the per-sample truth ratios and the
    :func:`~cagul.evaluation.common.answer_stats` of the split's QA pairs."""
    qa = qa_samples(samples)
    if not qa:
        raise ValueError("FIUBench evaluation: a split has no QA samples")
    generate = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    answers = generate_answers(model, qa, collator, **generate)
    stats = answer_stats(model, qa, collator, batch_size=batch_size)
    with_keywords = [(s, a) for s, a in zip(qa, answers, strict=True) if s.get("keywords")]
    paraphrased = [
        ({**s, "question": q}, s["keywords"])
        for s in qa
        if s.get("keywords")
        for q in s.get("paraphrased_questions", ())
    ]
    ape_answers = generate_answers(model, [p for p, _ in paraphrased], collator, **generate)
    ratios = truth_ratios(model, qa, collator, batch_size)
    row: dict[str, Any] = {
        "rougeL_recall": mean(
            [metrics.rouge_l_recall(a, s["answer"]) for s, a in zip(qa, answers, strict=True)]
        ),
        "probability": mean([metrics.probability(a.mean_nll) for a in stats]),
        "truth_ratio": metrics.truth_ratio_score(ratios, kind)
        if ratios
        else absent("no paraphrased_answer + perturbed_answer in this split"),
        "em": mean([metrics.keyword_em(a, s["keywords"]) for s, a in with_keywords])
        if with_keywords
        else absent("no keywords in this split"),
        "ape": mean(
            [metrics.keyword_em(a, k) for (_, k), a in zip(paraphrased, ape_answers, strict=True)]
        )
        if paraphrased
        else absent("no paraphrased_question + keywords in this split"),
        "min_k": mean([metrics.fiubench_min_k(a.logprobs) for a in stats]),
        "min_k_plus_plus": mean(
            [metrics.fiubench_min_k_plus_plus(a.logprobs, a.mu, a.sigma) for a in stats]
        ),
        "n": len(qa),
    }
    return row, ratios, stats


def forget_quality_against(
    reference, forget_samples: Sequence[dict], ratios: list[float], collator, batch_size: int
) -> float | dict[str, str]:
    """Forget quality of the forget-set truth ``ratios`` against those of ``reference``
    (the retain-only model), or absent with the reason."""
    if reference is None:
        return absent(NO_REFERENCE)
    if not ratios:
        return absent("no truth ratios on the forget split")
    reference.eval()
    theirs = truth_ratios(reference, qa_samples(forget_samples), collator, batch_size)
    return metrics.forget_quality(ratios, theirs)


def utility_of(retain: dict[str, Any]) -> float | dict[str, str]:
    """Model utility: the harmonic mean of the retain split's probability, ROUGE-L recall
    and truth ratio, or absent with the reason."""
    values = [retain.get(k) for k in ("probability", "rougeL_recall", "truth_ratio")]
    if not all(isinstance(v, float) for v in values):
        return absent("a retain metric (probability, ROUGE-L recall, truth ratio) is absent")
    return metrics.model_utility(values)


def evaluate_fiubench(
    model,
    splits: dict[str, Sequence[dict]],
    processor: Any,
    config: CagulConfig,
    *,
    forget_split: str = "forget",
    retain_split: str = "retain5",
    reference=None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> dict[str, Any]:
    """FIUBench's metrics of ``model`` on ``splits[forget_split]`` and
    ``splits[retain_split]``; ``reference`` (the retain-only model) enables forget
    quality."""
    for name in (forget_split, retain_split):
        if name not in splits:
            raise ValueError(f"FIUBench evaluation: no split {name!r} (have {sorted(splits)})")
    collator = VLMCollator(processor, config, target="answer")
    model.eval()
    forget, forget_ratios, _ = score_split(
        model,
        splits[forget_split],
        collator,
        "forget",
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    retain, _, _ = score_split(
        model,
        splits[retain_split],
        collator,
        "retain",
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    result: dict[str, Any] = {
        "protocol": "fiubench",
        "splits": {forget_split: forget, retain_split: retain},
        "options": {
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "prompt": "chat template" if collator.uses_chat_template else config.prompt_template,
            "forget_split": forget_split,
            "retain_split": retain_split,
        },
    }
    result["forget_quality"] = forget_quality_against(
        reference, splits[forget_split], forget_ratios, collator, batch_size
    )
    result["privleak"] = absent(NO_HOLDOUT)
    result["model_utility"] = utility_of(retain)
    return result


def fiubench_table(result: dict[str, Any]) -> str:
    """The markdown table of :func:`evaluate_fiubench`'s result (FIUBench's columns)."""
    rows = [{"split": name, **row} for name, row in result["splits"].items()]
    table = markdown_table(rows, COLUMNS)
    summary = markdown_table(
        [result],
        (("forget_quality", "Forget quality"), ("privleak", "PrivLeak"), ("model_utility", "MU")),
    )
    notes = "".join(
        f"- {key}: absent ({result[key]['absent']})\n"
        for key in ("forget_quality", "privleak", "model_utility")
        if isinstance(result[key], dict)
    )
    return f"{table}\n{summary}" + (f"\n{notes}" if notes else "")
