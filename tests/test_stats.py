"""Confidence intervals (splitldm.eval.stats): coverage, known values, nested tables, bad inputs."""

import math

import numpy as np
import pytest

from splitldm.eval.stats import Interval, bootstrap_interval, nested_interval, t_interval


def test_t_interval_matches_the_textbook_formula():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    iv = t_interval(x)
    # mean 3, s = sqrt(2.5), t_{0.975, 4} = 2.7764451
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert iv.mean == 3.0 and iv.n == 5 and iv.method == "t"
    assert iv.low == pytest.approx(3 - half, rel=1e-6) and iv.high == pytest.approx(3 + half, rel=1e-6)
    assert iv.half_width == pytest.approx(half, rel=1e-6)
    assert iv.to_dict()["half_width"] == pytest.approx(half, rel=1e-6)


@pytest.mark.parametrize("make", [lambda x: t_interval(x), lambda x: bootstrap_interval(x, resamples=400)])
def test_coverage_is_near_the_level(make):
    rng = np.random.default_rng(0)
    trials, hits = 200, 0
    for _ in range(trials):
        iv = make(rng.normal(2.0, 3.0, size=40))
        hits += iv.low <= 2.0 <= iv.high
    assert 0.88 <= hits / trials <= 0.99  # 95 % nominal; binomial spread of 200 trials is ~1.5 %


def test_bootstrap_is_seeded():
    x = np.random.default_rng(1).exponential(size=30)
    assert bootstrap_interval(x, seed=3) == bootstrap_interval(x, seed=3)


def test_no_spread_gives_a_zero_width_interval():
    for iv in (t_interval([2.5]), bootstrap_interval([2.5, 2.5, 2.5])):
        assert iv.low == iv.high == iv.mean == 2.5


def test_nested_over_draws_ignores_the_spread_between_prompts():
    rng = np.random.default_rng(2)
    prompts = rng.normal(0, 10.0, size=(12, 1))  # large prompt effects
    table = prompts + rng.normal(0, 0.5, size=(12, 8))  # small channel noise
    draws = nested_interval(table, over="draws")
    across = nested_interval(table, over="prompts")
    assert draws.mean == pytest.approx(table.mean()) == across.mean
    assert draws.half_width < 0.5 < across.half_width  # only the channel's randomness vs both
    # the formula: sqrt(sum s_g^2 / D) / G with df G (D - 1)
    from scipy.stats import t
    se = math.sqrt(table.var(axis=1, ddof=1).sum() / 8) / 12
    assert draws.half_width == pytest.approx(t.ppf(0.975, 12 * 7) * se)
    # a prompt-free table (all rows the same distribution): both agree roughly
    flat = rng.normal(0, 1.0, size=(30, 30))
    a, b = nested_interval(flat, over="draws"), nested_interval(flat, over="prompts")
    assert 0.5 < a.half_width / b.half_width < 2.0


@pytest.mark.parametrize("call, exc, match", [
    (lambda: t_interval([]), ValueError, "samples: empty"),
    (lambda: t_interval([1.0, float("inf")]), ValueError, "samples: contains NaN or inf"),
    (lambda: t_interval([[1.0, 2.0]]), ValueError, "samples: expected a 1-D array"),
    (lambda: t_interval(["a"]), TypeError, "samples: expected numbers"),
    (lambda: t_interval([1.0], level=1.0), ValueError, "level:"),
    (lambda: bootstrap_interval([1.0, 2.0], resamples=10), ValueError, "resamples:"),
    (lambda: bootstrap_interval([1.0, 2.0], seed=-1), ValueError, "seed:"),
    (lambda: nested_interval([1.0, 2.0]), ValueError, "values: expected a 2-D array"),
    (lambda: nested_interval([[1.0], [2.0]], over="draws"), ValueError, "values: an interval over channel draws"),
    (lambda: nested_interval([[1.0, 2.0]], over="prompts"), ValueError, "values: an interval over prompts"),
    (lambda: nested_interval([[1.0, 2.0]], over="both"), ValueError, "over:"),
])
def test_bad_inputs_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_interval_str():
    assert str(Interval(25.0, 24.8, 25.2, 10, 0.95, "t")) == "25.00 +- 0.20"
