"""Confidence intervals of the benchmarks' figures, on top of `splitldm.eval.stats` (one place for the
benchmarks' PSNR-of-mean-MSE intervals and gaps; imported by the bench scripts as ``_intervals``).

* `psnr_of_mse(mse, var)`: a figure defined as ``10 log10(var / mean MSE)`` (dB) over a
  ``[items, draws]`` table of per-item MSEs (the items, latents or images, fixed; the channel random).
  The standard error of the mean MSE is `nested_interval(over="draws")`'s; the delta method carries
  it to dB (``se(10 log10 m) = 10 / ln 10 * se(m) / m``), Student-t quantile with ``G (D - 1)``
  degrees of freedom. (Mapping the MSE interval's ends through the log instead gives an infinite
  upper end whenever the MSE interval reaches 0, as it does when a few latents are erased in some
  draws and not in others.)
* `gap_db(base, codec, var)`: ``psnr(base) - psnr(codec)`` = ``10 log10(mean MSE_codec / mean
  MSE_base)`` for two independently simulated schemes; the same delta method, the two standard
  errors added in quadrature, Student-t quantile with the smaller of the two degrees of freedom.
* `interval_dict(values)`: mean and interval of a per-item figure (per-image PSNR, ...) from a
  ``[items, draws]`` table: over the draws when there are >= 2, else over the items (t-interval).

Each result is a dict ``{"mean", "ci95": [low, high], "half_width", "method"}`` (rounded to 3 decimals),
and `METHOD_NOTE` is the sentence a benchmark's JSON stores under ``"interval"``.
"""

from __future__ import annotations

import math

import numpy as np

from splitldm.eval.stats import Interval, nested_interval, t_interval

__all__ = ["psnr_of_mse", "gap_db", "interval_dict", "mse_interval", "METHOD_NOTE", "LEVEL"]

LEVEL = 0.95
METHOD_NOTE = ("95% confidence intervals over the channel realisations with the items (latents / images / "
               "prompts) fixed: splitldm.eval.stats.nested_interval(over='draws') (Student-t, G(D-1) degrees "
               "of freedom) on the per-item values; PSNR of a mean MSE (10 log10(var / MSE)) and gaps between two "
               "schemes: delta method on 10 log10 of each mean MSE (standard errors in quadrature, Student-t "
               "with the smaller degrees of freedom); with one draw: over the items (t)")


def _table(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"values: expected an [items, draws] table, got shape {x.shape}")
    return x


def mse_interval(mse, level: float = LEVEL) -> tuple[Interval, int]:
    """Interval of the mean of a ``[items, draws]`` MSE table and its degrees of freedom
    (``G (D - 1)`` over draws; ``G - 1`` over items with one draw; 0 when nothing varies)."""
    x = _table(mse)
    g, d = x.shape
    if d >= 2:
        return nested_interval(x, level, "draws"), g * (d - 1)
    return t_interval(x[:, 0], level), max(g - 1, 0)


def _rounded(mean: float, low: float, high: float, method: str) -> dict:
    r = (lambda v: round(float(v), 3) if math.isfinite(v) else None)
    return {"mean": r(mean), "ci95": [r(low), r(high)],
            "half_width": r((high - low) / 2) if math.isfinite(high - low) else None, "method": method}


def _log_se(iv: Interval, df: int, level: float) -> float:
    """Standard error of ``10 log10(mean)`` (dB) from the mean's interval (0 when nothing varies)."""
    from scipy.stats import t

    if df <= 0 or iv.half_width <= 0:
        return 0.0
    return 10 / math.log(10) * iv.half_width / float(t.ppf(0.5 + level / 2, df)) / iv.mean


def _db_interval(value: float, parts, level: float) -> dict:
    from scipy.stats import t

    ses = [(_log_se(iv, df, level), df) for iv, df in parts]
    ses = [(se, df) for se, df in ses if se > 0]
    if not ses:
        return _rounded(value, value, value, "delta")
    half = float(t.ppf(0.5 + level / 2, min(df for _, df in ses))) * math.sqrt(sum(se * se for se, _ in ses))
    return _rounded(value, value - half, value + half, "delta")


def psnr_of_mse(mse, var: float, level: float = LEVEL) -> dict:
    """``10 log10(var / mean(mse))`` (dB) and its delta-method interval; ``mse`` ``[items, draws]``."""
    if not var > 0:
        raise ValueError(f"var: expected a positive variance, got {var!r}")
    iv, df = mse_interval(mse, level)
    if iv.mean <= 0:
        return _rounded(math.inf, math.inf, math.inf, "delta")
    return _db_interval(10 * math.log10(var / iv.mean), [(iv, df)], level)


def gap_db(base, codec, var: float, level: float = LEVEL) -> dict:
    """``psnr(base) - psnr(codec)`` (dB; negative: the codec is better) and its delta-method interval."""
    if not var > 0:
        raise ValueError(f"var: expected a positive variance, got {var!r}")
    (ib, db_), (ic, dc) = mse_interval(base, level), mse_interval(codec, level)
    if ib.mean <= 0 or ic.mean <= 0:
        raise ValueError("base, codec: a gap needs positive mean MSEs")
    return _db_interval(10 * math.log10(ic.mean / ib.mean), [(ib, db_), (ic, dc)], level)


def interval_dict(values, level: float = LEVEL) -> dict:
    """Mean of a ``[items, draws]`` table of a per-item figure and its interval (over the draws when
    ``D >= 2``, else a t-interval over the items)."""
    iv, _ = mse_interval(values, level)
    return _rounded(iv.mean, iv.low, iv.high, iv.method)
