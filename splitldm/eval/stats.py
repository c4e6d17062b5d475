"""Confidence intervals for every reported figure: one `Interval` type, three ways to get one.

A figure such as "image PSNR at 5 dB SNR" is a mean over images (prompts) and, per image, over
independent channel realisations (draws). Its 95 % confidence interval depends on which of the two
is treated as random, so every interval says how it was made (``method``) and over what (``over``):

* `t_interval(samples)`: Student-t interval of the mean of i.i.d. samples (``df = n - 1``).
* `bootstrap_interval(samples)`: bias-corrected and accelerated (BCa) bootstrap of the mean, through
  `scipy.stats.bootstrap` (seeded, so the same samples give the same interval); for skewed samples
  such as per-image PSNR with a few deep fades.
* `nested_interval(values)` for a ``[prompts, draws]`` table:

  - ``over="draws"`` (prompts fixed, the channel random): the prompt set is the experiment's fixed
    workload and the interval covers only the channel's randomness. Standard error
    ``sqrt(sum_g s_g^2 / D) / G`` from the within-prompt variances ``s_g^2`` (``G`` prompts, ``D``
    draws each), t quantile with ``G (D - 1)`` degrees of freedom. This is what shrinks as draws are
    added, and what answers "is the difference between two SNR points real for these prompts".
  - ``over="prompts"`` (prompts and channel random): the t-interval of the ``G`` per-prompt means
    (``df = G - 1``); it includes the spread between prompts, so it only shrinks with more prompts.

Units are those of the samples (dB for PSNR). Non-finite samples (an identical image's +inf PSNR)
are refused: cap them first, as `splitldm.eval.evaluate` does (100 dB).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Interval", "t_interval", "bootstrap_interval", "nested_interval", "METHODS"]

METHODS = ("t", "bootstrap", "nested-draws", "nested-prompts")


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval ``[low, high]`` at ``level``.

    Attributes:
        mean: the sample mean (units of the samples).
        low, high: interval ends; equal to ``mean`` when there is no spread to measure
            (a single sample, or identical samples).
        n: number of samples (``G * D`` for a nested table).
        level: confidence level, e.g. 0.95.
        method: one of `METHODS`.
    """

    mean: float
    low: float
    high: float
    n: int
    level: float
    method: str

    @property
    def half_width(self) -> float:
        """``(high - low) / 2``: the "+-" of the figure."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields plus ``half_width``."""
        return {**asdict(self), "half_width": self.half_width}

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.half_width:.2f}"


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level: expected a confidence level in (0, 1), got {level!r}")
    return float(level)


def _samples(samples, name: str = "samples", ndim: int = 1) -> np.ndarray:
    try:
        x = np.asarray(samples, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected numbers, got {type(samples).__name__}") from exc
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf (cap infinite PSNRs before averaging)")
    return x


def _t_quantile(level: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def t_interval(samples: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of i.i.d. ``samples`` (1-D); ``n = 1`` gives a zero-width interval."""
    level = _check_level(level)
    x = _samples(samples)
    m = float(x.mean())
    if x.size == 1:
        return Interval(m, m, m, 1, level, "t")
    half = _t_quantile(level, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(m, m - half, m + half, int(x.size), level, "t")


def bootstrap_interval(samples: Sequence[float], level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Interval:
    """BCa bootstrap interval of the mean (`scipy.stats.bootstrap`, ``resamples`` resamples, seeded)."""
    level = _check_level(level)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples: expected an int >= 100, got {resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    x = _samples(samples)
    m = float(x.mean())
    if x.size == 1 or float(x.std()) == 0.0:  # nothing to resample: BCa is undefined
        return Interval(m, m, m, int(x.size), level, "bootstrap")
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, confidence_level=level, n_resamples=resamples, method="BCa",
                    rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(m, min(low, m), max(high, m), int(x.size), level, "bootstrap")


def nested_interval(values, level: float = 0.95, over: str = "draws") -> Interval:
    """Interval of the grand mean of a ``[prompts, draws]`` table (see the module docstring for ``over``).

    Args:
        values: ``[G, D]`` array: row ``g`` holds prompt ``g``'s figure under ``D`` channel draws.
        level: confidence level.
        over: ``"draws"`` (prompts fixed; needs ``D >= 2``) or ``"prompts"`` (needs ``G >= 2``).
    """
    level = _check_level(level)
    if over not in ("draws", "prompts"):
        raise ValueError(f"over: expected 'draws' or 'prompts', got {over!r}")
    x = _samples(values, "values", ndim=2)
    g, d = x.shape
    m = float(x.mean())
    if over == "prompts":
        if g < 2:
            raise ValueError(f"values: an interval over prompts needs >= 2 prompts, got {g}")
        iv = t_interval(x.mean(axis=1), level)
        return Interval(m, iv.low, iv.high, int(x.size), level, "nested-prompts")
    if d < 2:
        raise ValueError(f"values: an interval over channel draws needs >= 2 draws per prompt, got {d}")
    se = math.sqrt(float(x.var(axis=1, ddof=1).sum()) / d) / g
    half = _t_quantile(level, g * (d - 1)) * se
    return Interval(m, m - half, m + half, int(x.size), level, "nested-draws")
