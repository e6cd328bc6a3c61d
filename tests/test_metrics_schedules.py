import itertools
import math

import pytest

from pipeline.metrics import (
    bleu4,
    distinct_verbs,
    exact_match,
    gaussian_score,
    mean_bleu4,
    mean_std,
)
from pipeline.schedules import kl_weight, teacher_forcing


def test_bleu4_identical_is_one():
    assert bleu4("abandon", "abandon") == pytest.approx(1.0)


def test_bleu4_four_grams_by_hand():
    # "abandoned" against "abandon": clipped n-gram precisions 7/9, 6/8, 5/7, 4/6; the
    # hypothesis is longer, so no brevity penalty.
    expected = math.exp(0.25 * sum(math.log(p) for p in (7 / 9, 6 / 8, 5 / 7, 4 / 6)))
    assert bleu4("abandon", "abandoned") == pytest.approx(expected, rel=1e-9)


def test_bleu4_three_letter_reference_uses_three_weights():
    # "abd" against "abc": p1 = 2/3, p2 = 1/2, p3 = 0 smoothed to 0.1/1 (method 1), weights 0.33.
    expected = math.exp(0.33 * (math.log(2 / 3) + math.log(1 / 2) + math.log(0.1)))
    assert bleu4("abc", "abd") == pytest.approx(expected, rel=1e-9)
    # With four 0.25 weights it would differ: the rule matters.
    assert (
        abs(expected - math.exp(0.25 * (math.log(2 / 3) + math.log(1 / 2) + 2 * math.log(0.1))))
        > 0.05
    )


def test_bleu4_brevity_penalty_by_hand():
    # "aban" against "abandon": precisions 1, 1, 1, 1; brevity penalty exp(1 - 7/4).
    assert bleu4("abandon", "aban") == pytest.approx(math.exp(1 - 7 / 4), rel=1e-9)


def test_mean_bleu_and_exact_match():
    assert mean_bleu4(["abc", "abandon"], ["abc", "abandon"]) == pytest.approx(1.0)
    assert exact_match(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    with pytest.raises(ValueError):
        exact_match([], [])


def test_gaussian_score_counts_each_tuple_and_reports_distinct():
    train = [("go", "goes", "going", "went"), ("walk", "walks", "walking", "walked")]
    tuples = [train[0], train[0], train[1], ("go", "goes", "going", "goed")]
    assert gaussian_score(tuples, train) == 0.75
    assert distinct_verbs(tuples, train) == 2


def test_mean_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)


def test_kl_schedules_at_chosen_steps():
    kw = {"kl_max": 0.5}
    assert kl_weight(37, 100, schedule="constant", **kw) == 0.5
    assert kl_weight(0, 100, schedule="monotonic", warmup=0.4, **kw) == 0.0
    assert kl_weight(20, 100, schedule="monotonic", warmup=0.4, **kw) == pytest.approx(0.25)
    assert kl_weight(40, 100, schedule="monotonic", warmup=0.4, **kw) == pytest.approx(0.5)
    assert kl_weight(99, 100, schedule="monotonic", warmup=0.4, **kw) == pytest.approx(0.5)
    # Four cycles of 25 steps, rising over the first half of each.
    cyc = {"schedule": "cyclical", "cycles": 4, "ratio": 0.5, **kw}
    assert kl_weight(0, 100, **cyc) == 0.0
    assert kl_weight(5, 100, **cyc) == pytest.approx(0.2)
    assert kl_weight(13, 100, **cyc) == pytest.approx(0.5)
    assert kl_weight(25, 100, **cyc) == 0.0
    assert kl_weight(30, 100, **cyc) == pytest.approx(0.2)


def test_teacher_forcing_schedules():
    assert teacher_forcing(0, 101, start=1.0, end=0.5, shape="linear") == 1.0
    assert teacher_forcing(50, 101, start=1.0, end=0.5, shape="linear") == pytest.approx(0.75)
    assert teacher_forcing(100, 101, start=1.0, end=0.5, shape="linear") == pytest.approx(0.5)
    assert teacher_forcing(50, 101, start=1.0, end=0.5, shape="cosine") == pytest.approx(0.75)
    assert teacher_forcing(25, 101, start=1.0, end=0.0, shape="cosine") == pytest.approx(
        0.8535534, rel=1e-6
    )
    assert teacher_forcing(49, 101, start=1.0, end=0.0, shape="step") == 1.0
    assert teacher_forcing(50, 101, start=1.0, end=0.0, shape="step") == 0.0
    assert teacher_forcing(70, 101, start=0.9, end=0.0, shape="constant") == 0.9


def test_learning_rate_schedules():
    from pipeline.schedules import learning_rate

    assert learning_rate(7, 100, lr=0.002, schedule="constant", floor=0.05) == 0.002
    rates = [learning_rate(s, 101, lr=0.002, schedule="cosine", floor=0.05) for s in range(101)]
    assert rates[0] == pytest.approx(0.002) and rates[-1] == pytest.approx(0.0001)
    assert rates[50] == pytest.approx(0.002 * (0.05 + 0.95 * 0.5))
    assert all(a >= b for a, b in itertools.pairwise(rates))
    with pytest.raises(ValueError, match="learning-rate schedule"):
        learning_rate(0, 10, lr=1.0, schedule="step", floor=0.0)
