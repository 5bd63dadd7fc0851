"""cagul.metrics against values computed by hand."""

import math

import pytest
from cagul import metrics


def test_rouge_stems_and_scores_f_measures():
    scores = metrics.rouge("the cats sat", "the cat sat on the mat")
    # stemmed: [the cat sat] vs [the cat sat on the mat]: 3 of 3 / 3 of 6 unigrams,
    # 2 of 2 / 2 of 5 bigrams, LCS 3
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(4 / 7)
    assert scores["rougeL"] == pytest.approx(2 / 3)


def test_rouge_l_recall_cuts_at_first_period():
    assert metrics.rouge_l_recall("No. The capital is Paris", "The capital is Paris") == 0.0
    assert metrics.rouge_l_recall("The capital is Paris. No", "The capital is Paris") == 1.0
    assert metrics.rouge_l_recall("Paris is big", "Paris is the capital") == pytest.approx(0.5)


def test_bleu_smoothing_method1():
    assert metrics.bleu("a b c d", "a b c d") == pytest.approx(1.0)
    # precisions 3/4, 2/3, 1/2 and 0/1 -> 0.1 / 1 (method1, epsilon 0.1); brevity penalty 1
    assert metrics.bleu("a b c d", "a b c e") == pytest.approx((0.75 * 2 / 3 * 0.5 * 0.1) ** 0.25)
    assert metrics.bleu("", "a b") == 0.0


def test_cloze_letter_and_keywords():
    assert metrics.cloze_correct("He was born in PARIS.", "paris")
    assert not metrics.cloze_correct("He was born in Lyon.", "Paris")
    assert metrics.letter_correct("  b) Rome", "B")
    assert not metrics.letter_correct("A", "B")
    assert not metrics.letter_correct("   ", "A")
    assert metrics.keyword_em(
        "Born in PARIS in 1990", ["paris", "1990", "France"]
    ) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="keywords"):
        metrics.keyword_em("x", [])


def test_truth_ratio_and_its_scores():
    # mean perturbed loss 2, paraphrased loss 1: r = e
    r = metrics.truth_ratio(1.0, [1.0, 2.0, 3.0])
    assert r == pytest.approx(math.e)
    assert metrics.truth_ratio_score([r], "forget") == pytest.approx(1 / math.e)
    assert metrics.truth_ratio_score([r, 1 / r], "forget") == pytest.approx(1 / math.e)
    assert metrics.truth_ratio_score([r, 1 / r], "retain") == pytest.approx((1 - 1 / math.e) / 2)
    with pytest.raises(ValueError, match="split"):
        metrics.truth_ratio_score([r], "test")


def test_forget_quality_is_the_exact_ks_p_value():
    # equal samples: D = 0, p = 1; disjoint samples of 3 and 3: D = 1 and exactly 2 of the
    # C(6, 3) = 20 orderings reach it, so p = 2 / 20
    assert metrics.forget_quality([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert metrics.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)


def test_min_k_variants():
    logprobs = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert metrics.min_k_prob(logprobs, 0.4) == pytest.approx(-4.5)
    assert metrics.min_k_prob(logprobs, 0.1) == pytest.approx(-5.0)  # at least one token
    # z = (-1 + 2) / 1 = 1 and (-3 + 2) / 2 = -0.5
    assert metrics.min_k_plus_plus([-1.0, -3.0], [-2.0, -2.0], [1.0, 2.0], 0.5) == pytest.approx(
        -0.5
    )
    ten = [-float(i) for i in range(1, 11)]
    expected = (
        0.3 * math.exp(-10)
        + 0.3 * math.exp(-9.5)
        + 0.2 * math.exp(-9)
        + 0.1 * math.exp(-8.5)
        + 0.1 * math.exp(-8)
    )
    assert metrics.fiubench_min_k(ten) == pytest.approx(expected)
    # 3 tokens: int(3 k) is 0 for k <= 30% (skipped), 1 for 40% and 50%
    assert metrics.fiubench_min_k([-1.0, -2.0, -3.0]) == pytest.approx(0.2 * math.exp(-3))
    assert metrics.fiubench_min_k_plus_plus(
        [-1.0, -2.0, -3.0], [0.0] * 3, [2.0] * 3
    ) == pytest.approx(0.2 * math.exp(-1.5))
    with pytest.raises(ValueError, match="sigma"):
        metrics.min_k_plus_plus([-1.0], [0.0], [0.0])


def test_mia_auc_privleak_model_utility():
    # pairs member > nonmember: 3 > 1, 3 > 2, 4 > 1, 4 > 2, 4 > 3.5 -> 5 of 6
    assert metrics.mia_auc([3.0, 4.0], [1.0, 2.0, 3.5]) == pytest.approx(5 / 6)
    assert metrics.mia_auc([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)
    # open-unlearning / MUSE: on 1 - AUC, (0.4 - 0.5) / 0.5 and (0.1 - 0.4) / 0.4
    assert metrics.privleak(0.6, 0.5) == pytest.approx(-20.0)
    assert metrics.privleak(0.9, 0.6) == pytest.approx(-75.0)
    assert metrics.privleak(0.3, 0.6) == pytest.approx(75.0)  # over-unlearning: positive
    assert metrics.privleak(0.6, 0.6) == 0.0
    with pytest.raises(ValueError, match="retain_model_auc must be in"):
        metrics.privleak(0.5, 1.0)
    assert metrics.model_utility([0.5, 1.0]) == pytest.approx(2 / 3)
    assert metrics.model_utility([0.5, 0.0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        metrics.model_utility([-1.0, 1.0])


def test_registry_names_every_metric():
    assert metrics.get_metric("truth_ratio") is metrics.truth_ratio
    assert {"rouge", "bleu", "forget_quality", "privleak", "model_utility"} <= set(metrics.METRICS)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.get_metric("nope")
    with pytest.raises(TypeError, match="prediction"):
        metrics.rouge(None, "x")
