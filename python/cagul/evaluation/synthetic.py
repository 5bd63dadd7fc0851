"""The synthetic demo benchmark judged with the field's metrics: FIUBench's per-split
metrics on every evaluation split (truth ratio aggregated as ``"forget"`` on the forget
splits, ``"retain"`` on the others), forget quality / model utility as in
:mod:`.fiubench`, and the project's own metrics as extra columns renamed so that no name
collides with an official one (``mc_acc`` -> ``mc_acc_likelihood``: the option with the
highest likelihood; ``leak_rate``, ``rougeL_f_unstemmed``, ``refusal_rate``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import CagulConfig
from ..data import VLMCollator
from ..evaluate import evaluate_splits
from .common import markdown_table
from .fiubench import COLUMNS, MAX_NEW_TOKENS, forget_quality_against, score_split, utility_of

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
