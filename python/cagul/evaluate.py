"""Minimal evaluation of a ``CagulModel`` on forget / retain samples (the benchmark issue
extends it with generation-based metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .data import VLMCollator
from .model import CagulModel
from .train import answer_log_probs, to_device


def _row_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp, target, row = answer_log_probs(logits, labels)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    total = nll.new_zeros(labels.shape[0]).index_add(0, row, nll)
    return total / nll.new_zeros(labels.shape[0]).index_add(0, row, torch.ones_like(nll))


@torch.no_grad()
def evaluate(
    model: CagulModel, samples: Sequence[dict], processor: Any, *, batch_size: int = 8
) -> dict[str, float]:
    """Per split (``forget`` / ``retain``): the discriminator's accuracy and gate rate, the
    mean per-token NLL of the true answer through the plain VLM (``*_answer_nll_base``) and
    through CAGUL with the discriminator's gate (``*_answer_nll``), and on the forget split
    the NLL of the refusal through CAGUL (``forget_refusal_nll``)."""
    if not samples:
        raise ValueError("evaluate: no samples")
    device = model.encoder.w1.device
    collators = {
        "answer": VLMCollator(processor, model.config, target="answer"),
        "refusal": VLMCollator(processor, model.config, target="refusal"),
    }
    rows: dict[str, list[torch.Tensor]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        rows.setdefault(name, []).append(values.float().cpu())

    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            is_forget = torch.tensor([bool(s["is_forget"]) for s in chunk])
            add("is_forget", is_forget)
            for kind, collator in collators.items():
                batch = to_device(collator(chunk), device)
                inputs = {**batch["inputs"], "use_cache": False}
                labels = inputs.pop("labels")
                vis = model.encode_visual(inputs)
                gate = model.gate(vis)
                if kind == "answer":
                    add("gate", gate)
                    add(
                        "answer_nll_base",
                        _row_nll(model.run(vis, torch.zeros_like(gate)).logits, labels),
                    )
                add(f"{kind}_nll", _row_nll(model.run(vis, gate).logits, labels))
    finally:
        model.train(was_training)
    cat = {k: torch.cat(v) for k, v in rows.items()}
    forget = cat["is_forget"].bool()
    result: dict[str, float] = {"n_forget": float(forget.sum()), "n_retain": float((~forget).sum())}
    result["disc_acc"] = float((cat["gate"].bool() == forget).float().mean())
    for split, sel in (("forget", forget), ("retain", ~forget)):
        if not sel.any():
            continue
        result[f"gate_rate_{split}"] = float(cat["gate"][sel].mean())
        result[f"{split}_answer_nll_base"] = float(cat["answer_nll_base"][sel].mean())
        result[f"{split}_answer_nll"] = float(cat["answer_nll"][sel].mean())
    if forget.any():
        result["forget_refusal_nll"] = float(cat["refusal_nll"][forget].mean())
    return result
