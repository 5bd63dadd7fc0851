"""Unlearning metrics on plain numbers and strings, as the field defines them.

Every function here is pure (no model, no torch) and cites the protocol whose definition it
reproduces: MLLMU-Bench (Liu et al., 2024, ``eval.py``), FIUBench (Ma et al., 2025,
``evaluate_util.py``), TOFU (Maini et al., 2024) and open-unlearning
(``src/evals/metrics``). Per-sample metrics return one number per call; the protocol runners
(:mod:`cagul.evaluation`) average them. :data:`METRICS` maps each metric's name to its
function (:func:`get_metric` looks one up), as open-unlearning's metric registry does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

METRICS: dict[str, Callable[..., Any]] = {}

#: FIUBench's Min-K% weights for k = 10%, 20%, 30%, 40%, 50%.
FIUBENCH_MIN_K = ((0.1, 0.3), (0.2, 0.3), (0.3, 0.2), (0.4, 0.1), (0.5, 0.1))


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: adds a metric function to :data:`METRICS` under ``name``."""

    def add(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = function
        return function

    return add


def get_metric(name: str) -> Callable[..., Any]:
    """The metric function registered as ``name``."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]


@lru_cache(maxsize=2)
def _rouge_scorer(*types: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), use_stemmer=True)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _numbers(values: Any, name: str, *, empty: bool = False) -> list[float]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers") from None
    if not out and not empty:
        raise ValueError(f"{name} is empty")
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{name} contains NaN")
    return out


@register("rouge")
def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of ``prediction`` against ``reference``
    (rouge-score with the Porter stemmer), as MLLMU-Bench's generation task scores them."""
    scores = _rouge_scorer("rouge1", "rouge2", "rougeL").score(
        _text(reference, "reference"), _text(prediction, "prediction")
    )
    return {name: score.fmeasure for name, score in scores.items()}


@register("rouge_l_recall")
def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall (Porter stemmer) of ``prediction`` cut before its first ``"."``
    against ``reference``: the ROUGE metric of TOFU, FIUBench and open-unlearning."""
    cut = _text(prediction, "prediction").split(".", 1)[0]
    return _rouge_scorer("rougeL").score(_text(reference, "reference"), cut)["rougeL"].recall


@register("bleu")
def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (nltk; whitespace tokens, uniform 4-gram weights, smoothing method1)
    of ``prediction`` against the single ``reference``, as MLLMU-Bench computes it."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis = _text(prediction, "prediction").split()
    references = [_text(reference, "reference").split()]
    if not hypothesis:
        return 0.0
    return float(
        sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1)
    )


@register("cloze_correct")
def cloze_correct(generation: str, ground_truth: str) -> bool:
    """MLLMU-Bench cloze (``Mask_Task``): the ground truth occurs in the generation,
    case-insensitive."""
    return _text(ground_truth, "ground_truth").lower() in _text(generation, "generation").lower()


@register("letter_correct")
def letter_correct(generation: str, letter: str) -> bool:
    """MLLMU-Bench classification: the generation's first non-space character, upper-cased,
    is the correct option's ``letter``."""
    answer = _text(generation, "generation").strip()
    return bool(answer) and answer[0].upper() == _text(letter, "letter").strip().upper()


@register("keyword_em")
def keyword_em(generation: str, keywords: Sequence[str]) -> float:
    """FIUBench exact match: the fraction of ``keywords`` contained in the generation,
    case-insensitive (each keyword counts ``1 / len(keywords)``)."""
    if isinstance(keywords, str) or not keywords:
        raise ValueError("keywords must be a non-empty list of strings")
    text = _text(generation, "generation").lower()
    found = sum(_text(k, "keyword").lower() in text for k in keywords)
    return min(1.0, found / len(keywords))


@register("probability")
def probability(mean_nll: float) -> float:
    """The answer's probability per token, ``exp(-mean_nll)`` (TOFU / open-unlearning
    ``probability``); ``mean_nll`` is the mean per-token negative log-likelihood."""
    return math.exp(-float(mean_nll))


@register("truth_ratio")
def truth_ratio(paraphrased_loss: float, perturbed_losses: Sequence[float]) -> float:
    """TOFU / FIUBench truth ratio of one sample:
    ``r = exp(mean(perturbed_losses) - paraphrased_loss)``, each loss the mean per-token
    NLL of that answer (r > 1: the model prefers the true paraphrased answer)."""
    perturbed = _numbers(perturbed_losses, "perturbed_losses")
    return math.exp(sum(perturbed) / len(perturbed) - float(paraphrased_loss))


@register("truth_ratio_score")
def truth_ratio_score(ratios: Sequence[float], split: str) -> float:
    """Aggregate truth ratios ``r`` (TOFU): ``mean(min(r, 1/r))`` on ``"forget"`` (1 =
    true and false answers equally likely), ``mean(max(0, 1 - 1/r))`` on ``"retain"``."""
    values = _numbers(ratios, "ratios")
    if any(r <= 0 for r in values):
        raise ValueError("ratios must be positive")
    if split == "forget":
        return sum(min(r, 1 / r) for r in values) / len(values)
    if split == "retain":
        return sum(max(0.0, 1 - 1 / r) for r in values) / len(values)
    raise ValueError(f"split must be 'forget' or 'retain', got {split!r}")


@register("forget_quality")
def forget_quality(
    truth_ratios: Sequence[float], retain_model_truth_ratios: Sequence[float]
) -> float:
    """TOFU forget quality: the p-value of the two-sample Kolmogorov-Smirnov test between the
    forget-set truth ratios of the unlearned model and of the retain-only model (scipy,
    ``method="auto"``). High = indistinguishable from never having trained on the forget set."""
    from scipy.stats import ks_2samp

    model = _numbers(truth_ratios, "truth_ratios")
    reference = _numbers(retain_model_truth_ratios, "retain_model_truth_ratios")
    return float(ks_2samp(model, reference).pvalue)


def _lowest_mean(values: list[float], fraction: float) -> float:
    if not 0 < fraction <= 1:
        raise ValueError(f"k must be a fraction in (0, 1], got {fraction}")
    count = max(1, int(len(values) * fraction))
    return sum(sorted(values)[:count]) / count


@register("min_k_prob")
def min_k_prob(token_logprobs: Sequence[float], k: float = 0.2) -> float:
    """Min-K% Prob (Shi et al., 2024; open-unlearning ``mia_min_k``): the mean of the lowest
    ``k`` fraction (at least one) of the answer's token log-probabilities. Higher = more
    likely a member (open-unlearning reports its negation as the attack score)."""
    return _lowest_mean(_numbers(token_logprobs, "token_logprobs"), k)


def _standardised(
    token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float]
) -> list[float]:
    logprobs = _numbers(token_logprobs, "token_logprobs")
    means, stds = _numbers(mu, "mu"), _numbers(sigma, "sigma")
    if not len(logprobs) == len(means) == len(stds):
        raise ValueError("token_logprobs, mu and sigma must have the same length")
    if any(s <= 0 for s in stds):
        raise ValueError("sigma must be positive")
    return [(lp - m) / s for lp, m, s in zip(logprobs, means, stds, strict=True)]


@register("min_k_plus_plus")
def min_k_plus_plus(
    token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float], k: float = 0.2
) -> float:
    """Min-K%++ (Zhang et al., 2024; open-unlearning ``mia_min_k_plus_plus``): Min-K% on
    ``(log p - mu) / sigma`` per token, ``mu`` / ``sigma`` the mean / std of log p under the
    model's next-token distribution at that position."""
    return _lowest_mean(_standardised(token_logprobs, mu, sigma), k)


def _fiubench_weighted(values: list[float]) -> float:
    total = 0.0
    for fraction, weight in FIUBENCH_MIN_K:
        count = int(len(values) * fraction)
        if count:  # FIUBench drops a k whose token count rounds to 0 (its mean is NaN)
            total += weight * math.exp(sum(sorted(values)[:count]) / count)
    return total


@register("fiubench_min_k")
def fiubench_min_k(token_logprobs: Sequence[float]) -> float:
    """FIUBench's Min-K%: ``sum_k w_k * exp(mean of the lowest k% log-probs)`` over k = 10..50%
    with weights 0.3, 0.3, 0.2, 0.1, 0.1 (:data:`FIUBENCH_MIN_K`; ``int(n * k)`` tokens, a k
    with none is skipped)."""
    return _fiubench_weighted(_numbers(token_logprobs, "token_logprobs"))


@register("fiubench_min_k_plus_plus")
def fiubench_min_k_plus_plus(
    token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float]
) -> float:
    """FIUBench's Min-K%++: :func:`fiubench_min_k` on ``(log p - mu) / sigma``."""
    return _fiubench_weighted(_standardised(token_logprobs, mu, sigma))


@register("mia_auc")
def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of a membership-inference attack whose score is higher for members: the
    Mann-Whitney probability ``P(member > nonmember) + P(tie) / 2`` (open-unlearning's
    ``mia_auc``: 1 when the forget data is far more likely than the holdout data)."""
    from scipy.stats import mannwhitneyu

    members = _numbers(member_scores, "member_scores")
    nonmembers = _numbers(nonmember_scores, "nonmember_scores")
    statistic = mannwhitneyu(members, nonmembers, alternative="two-sided").statistic
    return float(statistic) / (len(members) * len(nonmembers))


@register("privleak")
def privleak(auc: float, retain_model_auc: float) -> float:
    """MUSE / open-unlearning privleak of the MIA AUCs (:func:`mia_auc`: 1 = the forget data
    far more likely than the holdout) of the model and of the retain-only model:
    ``(a - a_retain) / a_retain * 100`` on MUSE's AUC ``a = 1 - auc`` (open-unlearning's
    ``privleak`` flips both AUCs so), i.e. ``(retain_model_auc - auc) / (1 - retain_model_auc)
    * 100``. 0 = as private as never training on the forget set; negative = the forget set
    still recognisable (under-unlearning), positive = over-unlearning."""
    auc, reference = float(auc), float(retain_model_auc)
    if not 0 <= auc <= 1:
        raise ValueError(f"auc must be in [0, 1], got {auc}")
    if not 0 <= reference < 1:
        raise ValueError(f"retain_model_auc must be in [0, 1), got {reference}")
    return ((1 - auc) - (1 - reference)) / (1 - reference) * 100


@register("model_utility")
def model_utility(values: Sequence[float]) -> float:
    """TOFU / open-unlearning model utility: the harmonic mean of the retain metrics
    (0 when any of them is 0)."""
    numbers = _numbers(values, "values")
    if any(v < 0 for v in numbers):
        raise ValueError("model utility needs non-negative values")
    if any(v == 0 for v in numbers):
        return 0.0
    return len(numbers) / sum(1 / v for v in numbers)
