"""bench/_intervals.py: the benchmarks' PSNR-of-mean-MSE intervals and gaps (delta method on top of
splitldm.eval.stats), checked against hand computations and a coverage simulation."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t

from splitldm.eval.stats import nested_interval

_spec = importlib.util.spec_from_file_location("_intervals", Path(__file__).resolve().parents[1] / "bench" / "_intervals.py")
iv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(iv)


def test_psnr_of_mse_is_the_delta_method_on_the_nested_interval():
    rng = np.random.default_rng(0)
    mse = rng.gamma(4.0, 0.05, size=(20, 3))  # 20 latents x 3 draws
    out = iv.psnr_of_mse(mse, var=2.0)
    m = mse.mean()
    assert out["mean"] == round(10 * math.log10(2.0 / m), 3)
    se = nested_interval(mse, 0.95, "draws").half_width / t.ppf(0.975, 20 * 2)
    half = t.ppf(0.975, 40) * 10 / math.log(10) * se / m
    assert out["ci95"] == [round(10 * math.log10(2.0 / m) - half, 3), round(10 * math.log10(2.0 / m) + half, 3)]
    assert out["method"] == "delta"


def test_deterministic_tables_have_zero_width_and_gaps_add_in_quadrature():
    fixed = np.full((8, 4), 0.25)  # e.g. the ideal code over AWGN: the same MSE in every draw
    assert iv.psnr_of_mse(fixed, 1.0) == {"mean": round(10 * math.log10(4), 3), "ci95": [6.021, 6.021],
                                          "half_width": 0.0, "method": "delta"}
    rng = np.random.default_rng(1)
    a, b = rng.gamma(4.0, 0.05, size=(16, 2)), rng.gamma(4.0, 0.1, size=(16, 2))
    g = iv.gap_db(a, b, 1.0)
    assert g["mean"] == round(10 * math.log10(b.mean() / a.mean()), 3)
    ha, hb = iv.psnr_of_mse(a, 1.0)["half_width"], iv.psnr_of_mse(b, 1.0)["half_width"]
    assert g["half_width"] == pytest.approx(math.hypot(ha, hb), abs=2e-3)  # same df: quadrature of the two
    g0 = iv.gap_db(fixed, b, 1.0)  # one side deterministic: the gap's interval is the other side's
    assert g0["half_width"] == pytest.approx(hb, abs=1e-3)


def test_one_draw_falls_back_to_the_items_and_bad_inputs():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    d = iv.interval_dict(x)
    half = t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert d["mean"] == 2.5 and d["ci95"] == [round(2.5 - half, 3), round(2.5 + half, 3)]
    assert d["method"] == "t"
    with pytest.raises(ValueError, match="var"):
        iv.psnr_of_mse(x, 0.0)
    with pytest.raises(ValueError, match="values"):
        iv.interval_dict(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="positive mean"):
        iv.gap_db(np.zeros((3, 2)), np.ones((3, 2)), 1.0)


def test_psnr_interval_covers_about_95_percent():
    """Coverage of the true 10 log10(var / E[MSE]) by the interval, over 400 simulated experiments."""
    rng = np.random.default_rng(2)
    level = rng.gamma(3.0, 0.1, size=(32, 1))  # fixed per-latent MSE levels (the workload)
    truth = 10 * math.log10(1.0 / level.mean())  # the noise has mean 1: E[MSE] = mean level
    hits = 0
    for _ in range(400):
        mse = level * rng.gamma(5.0, 0.2, size=(32, 4))
        lo, hi = iv.psnr_of_mse(mse, 1.0)["ci95"]
        hits += lo <= truth <= hi
    assert 0.91 <= hits / 400 <= 0.99
