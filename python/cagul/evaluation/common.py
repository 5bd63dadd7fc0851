"""What the protocol runners share: scoring answers with a model (greedy generations,
per-token answer statistics) and writing results (JSON + a markdown table, atomically)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data import VLMCollator
from ..files import write_text_atomic
from ..losses import answer_log_probs, target_log_probs
from .diagnostics import _answer_logits, _chunks, generate_answers

__all__ = [
    "AnswerStats",
    "absent",
    "answer_stats",
    "generate_answers",
    "markdown_table",
    "mean",
    "write_results",
]


@dataclass
class AnswerStats:
    """One answer under the model: per answer token its log-probability ``logprobs``, and the
    mean ``mu`` / std ``sigma`` of log p under the model's next-token distribution there."""

    logprobs: list[float]
    mu: list[float]
    sigma: list[float]

    @property
    def mean_nll(self) -> float:
        """The answer's mean per-token negative log-likelihood."""
        return -sum(self.logprobs) / len(self.logprobs)


@torch.no_grad()
def answer_stats(
    model, samples: Sequence[dict], collator: VLMCollator, *, batch_size: int = 8
) -> list[AnswerStats]:
    """:class:`AnswerStats` of each sample's ``answer`` (the collator's target, with eos)
    as the answer to its question."""
    out: list[AnswerStats] = []
    for chunk in _chunks(samples, batch_size):
        logits, labels = _answer_logits(model, collator, chunk)
        logp, target, row = answer_log_probs(logits, labels)
        token = target_log_probs(logp, target)
        probs = logp.exp()
        mu = (probs * logp).sum(-1)
        sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
        for b in range(len(chunk)):
            keep = row == b
            out.append(AnswerStats(token[keep].tolist(), mu[keep].tolist(), sigma[keep].tolist()))
    return out


def mean(values: Sequence[float]) -> float | None:
    """The mean, ``None`` for no values."""
    return sum(values) / len(values) if values else None


def absent(reason: str) -> dict[str, str]:
    """A metric that could not be computed, with the reason (never reported as 0)."""
    return {"absent": reason}


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "absent" in value:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, digits: int = 3
) -> str:
    """A markdown table: one line per row, ``columns`` = ``(key, header)`` pairs; absent
    values print ``n/a``, missing ones ``-``."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), digits) for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], table: str, json_path: str) -> str:
    """Writes ``results`` to ``json_path`` and ``table`` next to it (``.md``), each
    atomically; returns the markdown path."""
    write_text_atomic(json_path, json.dumps(results, indent=2) + "\n")
    md_path = os.path.splitext(json_path)[0] + ".md"
    write_text_atomic(md_path, table)
    return md_path
