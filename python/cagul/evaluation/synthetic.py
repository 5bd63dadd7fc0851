"""The synthetic demo benchmark judged with the field's metrics: FIUBench's per-split
metrics on every evaluation split (truth ratio aggregated as ``"forget"`` on the forget
splits, ``"retain"`` on the others), forget quality / model utility as in
:mod:`.fiubench`, ``mia_auc`` / ``privleak`` as open-unlearning computes them (Min-K% Prob
with k = 0.4 on the answers, members = the forget split's QA pairs, non-members = the
``holdout`` context: the strangers' true facts, never trained on), and the project's own
metrics as extra columns renamed so that no name collides with an official one
(``mc_acc`` -> ``mc_acc_likelihood``: the option with the highest likelihood;
``leak_rate``, ``rougeL_f_unstemmed``, ``refusal_rate``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import metrics
from ..config import CagulConfig
from ..data import VLMCollator
from ..data.benchmark import HOLDOUT
from .common import absent, answer_stats, generate_answers, markdown_table, mean
from .diagnostics import evaluate_splits
from .fiubench import (
    COLUMNS,
    MAX_NEW_TOKENS,
    NO_REFERENCE,
    forget_quality_against,
    qa_samples,
    score_split,
    truth_ratios,
    utility_of,
)

#: open-unlearning's privleak attack: Min-K% Prob with k = 0.4 (its ``mia_min_k`` config).
MIA_K = 0.4
NO_HOLDOUT = "no holdout (the benchmark has no strangers, whose true facts are the non-members)"

#: The project's metric names -> their names in the protocol output.
RENAMED = {
    "mc_acc": "mc_acc_likelihood",
    "leak_rate": "leak_rate",
    "rougeL": "rougeL_f_unstemmed",
    "refusal_rate": "refusal_rate",
}


def evaluate_synthetic(
    model,
    splits: dict[str, Sequence[dict]],
    processor: Any,
    config: CagulConfig,
    *,
    reference=None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Every metric of the module docstring on every split of ``splits`` but the
    ``holdout`` (the MIA's non-members); ``reference`` (the retain-only model) enables
    forget quality and privleak."""
    collator = VLMCollator(processor, config, target="answer")
    model.eval()
    scored = {name: samples for name, samples in splits.items() if name != HOLDOUT}
    rows: dict[str, dict[str, Any]] = {}
    ratios: dict[str, list[float]] = {}
    stats: dict[str, list] = {}
    for name, samples in scored.items():
        kind = "forget" if name.startswith("forget") else "retain"
        rows[name], ratios[name], stats[name] = score_split(
            model, samples, collator, kind, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    own = evaluate_splits(
        model,
        scored,
        processor,
        config,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=False,
    )
    for name in scored:
        rows[name].update({RENAMED[k]: v for k, v in own[name].items() if k in RENAMED})
    result: dict[str, Any] = {
        "protocol": "synthetic",
        "splits": rows,
        "options": {
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "mia": {
                "score": "min_k_prob",
                "k": MIA_K,
                "members": "forget QA pairs",
                "nonmembers": f"{HOLDOUT} (the strangers' true facts)",
            },
        },
    }
    result["forget_quality"] = forget_quality_against(
        reference, splits.get("forget", ()), ratios.get("forget", []), collator, batch_size
    )
    forget, holdout = qa_samples(splits.get("forget", ())), qa_samples(splits.get(HOLDOUT, ()))
    # the forget split's answer statistics are score_split's (one pass over those samples)
    result["mia_auc"] = mia_auc_of(model, stats.get("forget", []), holdout, collator, batch_size)
    if reference is None:
        result["privleak"] = absent(NO_REFERENCE)
    else:
        reference.eval()
        reference_stats = answer_stats(reference, forget, collator, batch_size=batch_size)
        result["reference_mia_auc"] = mia_auc_of(
            reference, reference_stats, holdout, collator, batch_size
        )
        result["privleak"] = privleak_of(result["mia_auc"], result["reference_mia_auc"])
    result["model_utility"] = utility_of(rows.get("retain", {}))
    return result


def mia_auc_of(
    model, member_stats: Sequence, nonmembers: Sequence[dict], collator, batch_size: int
) -> float | dict[str, str]:
    """The membership-inference AUC of ``model`` (open-unlearning's privleak attack: Min-K%
    Prob of each answer, k = :data:`MIA_K`) with the members -- given as their
    :func:`~cagul.evaluation.common.answer_stats` under ``model``, which the caller has
    already computed -- against the samples ``nonmembers``, or absent with the reason."""
    if not nonmembers:
        return absent(NO_HOLDOUT)
    if not member_stats:
        return absent("no QA pairs on the forget split")
    nonmember_stats = answer_stats(model, nonmembers, collator, batch_size=batch_size)
    return metrics.mia_auc(
        [metrics.min_k_prob(a.logprobs, MIA_K) for a in member_stats],
        [metrics.min_k_prob(a.logprobs, MIA_K) for a in nonmember_stats],
    )


def privleak_of(auc: Any, reference_auc: Any) -> float | dict[str, str]:
    """:func:`cagul.metrics.privleak` of two :func:`mia_auc_of` results, or absent with the
    reason (an AUC absent, or the reference's AUC 1, where privleak divides by 0)."""
    for value in (auc, reference_auc):
        if isinstance(value, dict):
            return absent(value["absent"])
    if reference_auc >= 1.0:
        return absent("the retain-only model's MIA AUC is 1 (privleak divides by 1 - AUC)")
    return metrics.privleak(auc, reference_auc)


def synthetic_table(result: dict[str, Any]) -> str:
    """The markdown table of :func:`evaluate_synthetic`'s result."""
    rows = [{"split": name, **row} for name, row in result["splits"].items()]
    extra = tuple((v, v) for v in RENAMED.values())
    summary = markdown_table(
        [result],
        (
            ("forget_quality", "Forget quality"),
            ("mia_auc", "MIA AUC"),
            ("privleak", "PrivLeak"),
            ("model_utility", "MU"),
        ),
    )
    notes = "".join(
        f"- {key}: absent ({result[key]['absent']})\n"
        for key in ("forget_quality", "mia_auc", "privleak", "model_utility")
        if isinstance(result[key], dict)
    )
    return (
        markdown_table(rows, (*COLUMNS, *extra)) + "\n" + summary + (f"\n{notes}" if notes else "")
    )


def judging_inputs(
    model,
    splits: dict[str, Sequence[dict]],
    processor: Any,
    config: CagulConfig,
    *,
    max_new_tokens: int,
    holdout: Sequence[dict] = (),
    batch_size: int = 8,
) -> dict[str, Any]:
    """What forget quality, model utility and privleak need from one model (the demo
    evaluates each model in its own process): the forget split's truth ratios, the retain
    split's probability, ROUGE-L recall (greedy, ``max_new_tokens``) and truth ratio, and
    the MIA AUC of the forget split's QA pairs against ``holdout`` (:func:`mia_auc_of`)."""
    collator = VLMCollator(processor, config, target="answer")
    forget, retain = qa_samples(splits["forget"]), qa_samples(splits["retain"])
    answers = generate_answers(
        model, retain, collator, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    stats = answer_stats(model, retain, collator, batch_size=batch_size)
    retain_ratios = truth_ratios(model, retain, collator, batch_size)
    row = {
        "probability": mean([metrics.probability(a.mean_nll) for a in stats]),
        "rougeL_recall": mean(
            [metrics.rouge_l_recall(a, s["answer"]) for s, a in zip(retain, answers, strict=True)]
        ),
        "truth_ratio": metrics.truth_ratio_score(retain_ratios, "retain")
        if retain_ratios
        else None,
    }
    holdout = qa_samples(holdout)
    forget_stats = answer_stats(model, forget, collator, batch_size=batch_size) if holdout else []
    return {
        "forget_truth_ratios": truth_ratios(model, forget, collator, batch_size),
        "retain": row,
        "mia_auc": mia_auc_of(model, forget_stats, holdout, collator, batch_size),
    }


def judge_models(inputs: dict[str, dict[str, Any]], reference: str = "retain_only"):
    """``{name: {"forget_quality", "model_utility", "mia_auc", "privleak"}}`` from each
    model's :func:`judging_inputs`; forget quality and privleak against the model
    ``reference`` (absent, with the reason, when it was not run or a model has no truth
    ratios / MIA AUC)."""
    theirs = inputs.get(reference, {}).get("forget_truth_ratios")
    their_auc = inputs.get(reference, {}).get("mia_auc")
    judged = {}
    for name, found in inputs.items():
        ours = found["forget_truth_ratios"]
        if not theirs:
            quality = absent(f"no {reference} model (the demo ran without it)")
        elif not ours:
            quality = absent("no truth ratios on the forget split")
        else:
            quality = metrics.forget_quality(ours, theirs)
        if their_auc is None:
            leak = absent(f"no {reference} model (the demo ran without it)")
        else:
            leak = privleak_of(found["mia_auc"], their_auc)
        judged[name] = {
            "forget_quality": quality,
            "model_utility": utility_of(found["retain"]),
            "mia_auc": found["mia_auc"],
            "privleak": leak,
        }
    return judged
