"""The synthetic demo benchmark judged with the field's metrics: FIUBench's per-split
metrics on every evaluation split (truth ratio aggregated as ``"forget"`` on the forget
splits, ``"retain"`` on the others), forget quality / model utility as in
:mod:`.fiubench`, and the project's own metrics as extra columns renamed so that no name
collides with an official one (``mc_acc`` -> ``mc_acc_likelihood``: the option with the
highest likelihood; ``leak_rate``, ``rougeL_f_unstemmed``, ``refusal_rate``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import metrics
from ..config import CagulConfig
from ..data import VLMCollator
from .common import absent, answer_stats, generate_answers, markdown_table, mean
from .diagnostics import evaluate_splits
from .fiubench import (
    COLUMNS,
    MAX_NEW_TOKENS,
    forget_quality_against,
    qa_samples,
    score_split,
    truth_ratios,
    utility_of,
)

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
    """Every metric of the module docstring on every split of ``splits``; ``reference``
    (the retain-only model) enables forget quality."""
    collator = VLMCollator(processor, config, target="answer")
    model.eval()
    rows: dict[str, dict[str, Any]] = {}
    ratios: dict[str, list[float]] = {}
    for name, samples in splits.items():
        kind = "forget" if name.startswith("forget") else "retain"
        rows[name], ratios[name] = score_split(
            model, samples, collator, kind, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    own = evaluate_splits(
        model,
        splits,
        processor,
        config,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=False,
    )
    for name in splits:
        rows[name].update({RENAMED[k]: v for k, v in own[name].items() if k in RENAMED})
    result: dict[str, Any] = {
        "protocol": "synthetic",
        "splits": rows,
        "options": {"max_new_tokens": max_new_tokens, "decoding": "greedy"},
    }
    result["forget_quality"] = forget_quality_against(
        reference, splits.get("forget", ()), ratios.get("forget", []), collator, batch_size
    )
    result["model_utility"] = utility_of(rows.get("retain", {}))
    return result


def synthetic_table(result: dict[str, Any]) -> str:
    """The markdown table of :func:`evaluate_synthetic`'s result."""
    rows = [{"split": name, **row} for name, row in result["splits"].items()]
    extra = tuple((v, v) for v in RENAMED.values())
    summary = markdown_table(
        [result], (("forget_quality", "Forget quality"), ("model_utility", "MU"))
    )
    return markdown_table(rows, (*COLUMNS, *extra)) + "\n" + summary


def judging_inputs(
    model,
    splits: dict[str, Sequence[dict]],
    processor: Any,
    config: CagulConfig,
    *,
    max_new_tokens: int,
    batch_size: int = 8,
) -> dict[str, Any]:
    """What forget quality and model utility need from one model (the demo evaluates each
    model in its own process): the forget split's truth ratios and the retain split's
    probability, ROUGE-L recall (greedy, ``max_new_tokens``) and truth ratio."""
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
    return {"forget_truth_ratios": truth_ratios(model, forget, collator, batch_size), "retain": row}


def judge_models(inputs: dict[str, dict[str, Any]], reference: str = "retain_only"):
    """``{name: {"forget_quality", "model_utility"}}`` from each model's
    :func:`judging_inputs`; forget quality against the model ``reference`` (absent, with
    the reason, when it was not run or a model has no truth ratios)."""
    theirs = inputs.get(reference, {}).get("forget_truth_ratios")
    judged = {}
    for name, found in inputs.items():
        ours = found["forget_truth_ratios"]
        if not theirs:
            quality = absent(f"no {reference} model (the demo ran without it)")
        elif not ours:
            quality = absent("no truth ratios on the forget split")
        else:
            quality = metrics.forget_quality(ours, theirs)
        judged[name] = {"forget_quality": quality, "model_utility": utility_of(found["retain"])}
    return judged
