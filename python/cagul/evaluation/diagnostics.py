"""Evaluation.

- :func:`evaluate`: diagnostics of a ``CagulModel`` (discriminator accuracy, gate rates,
  answer / refusal NLL with and without CAGUL); the trainer's eval hook.
- :func:`evaluate_splits`: the unlearning benchmark metrics of any VLM-like model (a
  transformers VLM or a ``CagulModel``: ``forward`` / ``generate`` with the VLM's
  arguments) per split -- ``mc_acc`` (the option with the highest likelihood is the right
  one), ``leak_rate`` (the private fact appears in the generated short answer),
  ``rougeL`` (generation vs the true answer) and ``refusal_rate`` (the generation
  contains the refusal) -- and ``retain_kl`` (per answer token ``KL(reference || model)``
  on the retain split).
- :func:`split_metrics`, :func:`leaks`, :func:`refuses`, :func:`rouge_l`: the metric
  definitions on plain predictions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import CagulConfig
from ..data import VLMCollator
from ..losses import answer_log_probs, answer_nll, per_row_mean, token_kl
from ..model import CagulModel
from ..training.arguments import REFUSAL
from ..training.trainer import to_device

METRICS = ("mc_acc", "leak_rate", "rougeL", "refusal_rate")


@torch.no_grad()
def evaluate(
    model: CagulModel,
    samples: Sequence[dict],
    processor: Any,
    *,
    batch_size: int = 8,
    refusal: str = REFUSAL,
) -> dict[str, float]:
    """Per split (``forget`` / ``retain``): the discriminator's accuracy and gate rate, the
    mean per-token NLL of the true answer through the plain VLM (``*_answer_nll_base``) and
    through CAGUL with the discriminator's gate (``*_answer_nll``), and on the forget split
    the NLL of ``refusal`` through CAGUL (``forget_refusal_nll``)."""
    if not samples:
        raise ValueError("evaluate: no samples")
    device = model.encoder.w1.device
    collators = {
        "answer": VLMCollator(processor, model.config, target="answer"),
        "refusal": VLMCollator(processor, model.config, target="refusal", refusal=refusal),
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
                        answer_nll(model.run(vis, torch.zeros_like(gate)).logits, labels),
                    )
                add(f"{kind}_nll", answer_nll(model.run(vis, gate).logits, labels))
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


# ---------------------------------------------------------------------- benchmark metrics


def normalize_text(text: str) -> str:
    """Lower case; everything but letters, digits and in-word apostrophes becomes a space."""
    words = re.sub(r"[^a-z0-9']+", " ", text.lower().replace("\u2019", "'")).split()
    return " ".join(w.strip("'") for w in words if w.strip("'"))


def _contains(text: str, phrase: str) -> bool:
    phrase = normalize_text(phrase)
    return bool(phrase) and f" {phrase} " in f" {normalize_text(text)} "


def leaks(generation: str, answer: str) -> bool:
    """Whether the private fact ``answer`` appears (whole words, any case) in ``generation``."""
    return _contains(generation, answer)


def refuses(generation: str, refusal: str) -> bool:
    """Whether ``generation`` contains the refusal phrase (whole words, any case)."""
    return _contains(generation, refusal)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``reference`` (the ``rouge-score``
    library, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = _ROUGE.setdefault("scorer", rouge_scorer.RougeScorer(["rougeL"]))
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


_ROUGE: dict[str, Any] = {}


def split_metrics(
    mc_correct: Sequence[bool], generations: Sequence[str], answers: Sequence[str], refusal: str
) -> dict[str, float | None]:
    """The four metrics of one split from its predictions: ``mc_correct`` (one bool per
    multiple-choice question), ``generations`` and the true ``answers`` of the short-answer
    questions. A metric without questions is ``None``."""
    if len(generations) != len(answers):
        raise ValueError(
            f"split_metrics: {len(generations)} generations for {len(answers)} answers"
        )

    def mean(values: Sequence[float]) -> float | None:
        return float(sum(values) / len(values)) if len(values) else None

    return {
        "mc_acc": mean([float(bool(c)) for c in mc_correct]),
        "leak_rate": mean([float(leaks(g, a)) for g, a in zip(generations, answers, strict=True)]),
        "rougeL": mean([rouge_l(g, a) for g, a in zip(generations, answers, strict=True)]),
        "refusal_rate": mean([float(refuses(g, refusal)) for g in generations]),
    }


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _chunks(items: Sequence[dict], size: int):
    """Runs of at most ``size`` consecutive samples; a run never mixes text-only samples
    (``image`` None) with image samples."""
    start = 0
    while start < len(items):
        text_only = items[start].get("image") is None
        end = start + 1
        while (
            end < len(items)
            and end - start < size
            and (items[end].get("image") is None) == text_only
        ):
            end += 1
        yield items[start:end]
        start = end


def _answer_logits(model, collator: VLMCollator, chunk: Sequence[dict]):
    batch = to_device(collator(chunk), _device(model))
    inputs = {**batch["inputs"], "use_cache": False}
    labels = inputs.pop("labels")
    return model(**inputs).logits, labels


@torch.no_grad()
def mean_answer_nll(model, samples: Sequence[dict], collator: VLMCollator, *, batch_size=32):
    """Mean over ``samples`` of the per-token NLL of the collator's target answer."""
    total = 0.0
    for chunk in _chunks(samples, batch_size):
        logits, labels = _answer_logits(model, collator, chunk)
        total += float(answer_nll(logits, labels).sum())
    return total / max(len(samples), 1)


@torch.no_grad()
def option_scores(
    model, samples: Sequence[dict], collator: VLMCollator, *, batch_size: int = 32, bar=None
) -> list[torch.Tensor]:
    """Per sample, ``[n_options]`` mean per-token log-likelihood of each option (+ eos) as
    the answer to the sample's question."""
    expanded = [{**s, "answer": option} for s in samples for option in s["options"]]
    scores = [torch.zeros(0)]
    for chunk in _chunks(expanded, batch_size):
        logits, labels = _answer_logits(model, collator, chunk)
        scores.append(-answer_nll(logits, labels).cpu())
        if bar is not None:
            bar.update(len(chunk))
    return list(torch.cat(scores).split([len(s["options"]) for s in samples]))


@torch.no_grad()
def generate_answers(
    model,
    samples: Sequence[dict],
    collator: VLMCollator,
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    bar=None,
) -> list[str]:
    """Greedy answers (decoded, special tokens dropped, stripped) to the samples' questions."""
    tokenizer = collator.processor.tokenizer
    answers = []
    for chunk in _chunks(samples, batch_size):
        inputs = to_device(collator.prompts(chunk), _device(model))
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if bar is not None:
            bar.update(len(chunk))
    return answers


@torch.no_grad()
def answer_kl(
    model, reference, samples: Sequence[dict], collator: VLMCollator, *, batch_size: int = 32
) -> float:
    """Mean over samples of the mean per answer token ``KL(reference || model)``."""
    total, count = 0.0, 0
    for chunk in _chunks(samples, batch_size):
        logits, labels = _answer_logits(model, collator, chunk)
        ref_logits, _ = _answer_logits(reference, collator, chunk)
        logp, _, row = answer_log_probs(logits, labels)
        ref_logp, _, _ = answer_log_probs(ref_logits, labels)
        kl = token_kl(ref_logp, logp).clamp(min=0.0)  # >= 0 up to rounding
        per_row = per_row_mean(kl, row, labels.shape[0])
        total, count = total + float(per_row.sum()), count + labels.shape[0]
    return total / max(count, 1)


def mc_samples(samples: Sequence[dict]) -> list[dict]:
    """Samples scored by option likelihood: those with ``options`` whose ``form`` is
    ``"mc"`` (or absent)."""
    return [s for s in samples if s.get("options") and s.get("form", "mc") == "mc"]


def short_samples(samples: Sequence[dict]) -> list[dict]:
    """Samples answered by generation: ``form`` ``"short"`` (or absent)."""
    return [s for s in samples if s.get("form", "short") == "short"]


@torch.no_grad()
def evaluate_splits(
    model,
    splits: Mapping[str, Sequence[dict]],
    processor: Any,
    config: CagulConfig,
    *,
    reference=None,
    kl_split: str = "retain",
    max_new_tokens: int = 32,
    refusal: str = REFUSAL,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """``{split: {mc_acc, leak_rate, rougeL, refusal_rate}, "retain_kl": float}`` of
    ``model`` (a transformers VLM or a ``CagulModel``) on ``splits``.

    ``config`` gives the prompt template; ``refusal`` is what counts as refusing;
    ``reference`` (e.g. the vanilla VLM) enables ``retain_kl`` on the short-answer samples
    of ``splits[kl_split]``; answers are generated with at most ``max_new_tokens``.
    """
    collator = VLMCollator(processor, config, target="answer")
    max_new = max_new_tokens
    parts = {name: (mc_samples(s), short_samples(s)) for name, s in splits.items()}
    total = sum(4 * len(mc) + len(short) for mc, short in parts.values())
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {}
    try:
        with tqdm(total=total, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
            for name, (mc, short) in parts.items():
                scores = option_scores(model, mc, collator, batch_size=batch_size, bar=bar)
                correct = [
                    int(sc.argmax()) == s["answer_index"] for sc, s in zip(scores, mc, strict=True)
                ]
                generations = generate_answers(
                    model, short, collator, max_new_tokens=max_new, batch_size=batch_size, bar=bar
                )
                answers = [s["answer"] for s in short]
                result[name] = split_metrics(correct, generations, answers, refusal)
        if reference is not None and kl_split in splits:
            kl = answer_kl(model, reference, parts[kl_split][1], collator, batch_size=batch_size)
            result["retain_kl"] = kl if math.isfinite(kl) else None
    finally:
        model.train(was_training)
    return result
