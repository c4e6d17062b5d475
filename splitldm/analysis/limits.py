"""Information-theoretic references for sending a latent over a channel.

Notation: ``rho`` = complex channel uses per *real* source value (``k / n``); SNR in dB, ``SNR = 1/N0``
per complex symbol; distortion is mean squared error per real value. For Gaussian sources these are
the optimal performance theoretically attainable (OPTA); real latents are not Gaussian, so for them
the curves are a reference, not a ceiling.

* `gaussian_opta_mse`: ``D = sigma^2 (1 + SNR)^(-2 rho)`` (AWGN, i.i.d. Gaussian source).
* `reverse_water_filling`: a Gaussian vector source with covariance eigenvalues ``lambda_i``,
  ``D_i = min(theta, lambda_i)`` with ``sum_{lambda_i > theta} 0.5 log2(lambda_i/theta) = R``.
* `rayleigh_ergodic_capacity`: ``log2(e) e^(1/SNR) E1(1/SNR)`` bits per use (receiver CSI).
* `opta_mse`: either channel, via ``D = sigma^2 2^(-2 rho C)``.
* `separation_bits`: ideal digital separation carries ``k C`` bits in ``k`` channel uses;
  `separation_bits_per_value` spreads them over the source values; `shannon_limit_snr_db` inverts
  the AWGN capacity (the least SNR at which a spectral efficiency is achievable).
* `lmmse_weight` / `lmmse_estimate` / `lmmse_mse`: the linear MMSE estimate of a symbol seen as ``y = a z + CN(0, v)``
  and the closed-form MSE of uncoded (analog) transmission, ``sigma^2 / (1 + SNR)`` (= the OPTA at
  ``rho = 1/2``). The channels' MMSE equaliser and `AnalogLink`'s receiver both use `lmmse_weight`.

This module is the one home of these formulas: the link stages, the evaluation sweeps, the cost models
and the RL environments call it. `CHANNELS` is the one list of channel names (``"awgn"``; ``"rayleigh"``:
Rayleigh fading with receiver CSI, block fading in the simulator, ergodic capacity here), shared by
`splitldm.link.channels.make_channel` and the sweeps.
* `latent_covariance`: the spectrum of latents measured from a batch (per channel or full).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from scipy.special import exp1

__all__ = [
    "awgn_capacity",
    "rayleigh_ergodic_capacity",
    "capacity",
    "gaussian_opta_mse",
    "opta_mse",
    "reverse_water_filling",
    "WaterFilling",
    "separation_bits",
    "separation_bits_per_value",
    "shannon_limit_snr_db",
    "lmmse_weight",
    "lmmse_estimate",
    "lmmse_mse",
    "CHANNELS",
    "latent_covariance",
    "LatentCovariance",
]

ArrayLike = Union[float, Sequence[float], np.ndarray, torch.Tensor]
#: The channel names of the library (capacity formulas here; `splitldm.link.channels.make_channel`;
#: the evaluation sweeps and training recipes).
CHANNELS = ("awgn", "rayleigh")


def _snr_linear(snr_db: ArrayLike) -> np.ndarray:
    s = np.asarray(snr_db.detach().cpu() if isinstance(snr_db, torch.Tensor) else snr_db, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"snr_db: must be finite, got {snr_db!r}")
    return 10.0 ** (s / 10.0)


def _out(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite {'non-negative' if allow_zero else 'positive'} number, got {value}")
    return value


def awgn_capacity(snr_db: ArrayLike):
    """AWGN capacity ``log2(1 + SNR)`` in bits per complex channel use (float or array like ``snr_db``)."""
    return _out(np.log2(1.0 + _snr_linear(snr_db)))


def rayleigh_ergodic_capacity(snr_db: ArrayLike):
    """Ergodic capacity of Rayleigh fading with receiver CSI, bits per complex use.

    ``E[log2(1 + |h|^2 SNR)] = log2(e) e^(1/SNR) E1(1/SNR)`` with ``h ~ CN(0, 1)``: 0.860 / 2.907 /
    5.884 bits at 0 / 10 / 20 dB.
    """
    s = _snr_linear(snr_db)
    x = 1.0 / s
    # e^x E1(x) overflows for x > ~700 (SNR < -28 dB); use the asymptotic series 1/x - 1/x^2 + 2/x^3 there
    with np.errstate(over="ignore", invalid="ignore"):
        direct = np.exp(x) * exp1(x)
    series = 1.0 / x - 1.0 / x**2 + 2.0 / x**3
    return _out(math.log2(math.e) * np.where(x > 500.0, series, direct))


def capacity(snr_db: ArrayLike, channel: str = "awgn"):
    """Capacity in bits per complex use: ``channel`` ``"awgn"`` or ``"rayleigh"`` (ergodic)."""
    if channel not in CHANNELS:
        raise ValueError(f"channel: expected one of {CHANNELS}, got {channel!r}")
    return awgn_capacity(snr_db) if channel == "awgn" else rayleigh_ergodic_capacity(snr_db)


def gaussian_opta_mse(sigma2: float, snr_db: ArrayLike, rho: float):
    """OPTA MSE of an i.i.d. Gaussian source of variance ``sigma2`` over AWGN: ``sigma2 (1+SNR)^(-2 rho)``."""
    return opta_mse(sigma2, snr_db, rho, "awgn")


def opta_mse(sigma2: float, snr_db: ArrayLike, rho: float, channel: str = "awgn"):
    """OPTA MSE ``sigma2 2^(-2 rho C)`` with ``C`` the AWGN or Rayleigh ergodic capacity (bits/use).

    Args:
        sigma2: source variance per real value.
        snr_db: SNR in dB (number or array).
        rho: complex channel uses per real source value (``>= 0``).
        channel: ``"awgn"`` or ``"rayleigh"``.
    """
    sigma2 = _check_positive("sigma2", sigma2, allow_zero=True)
    rho = _check_positive("rho", rho, allow_zero=True)
    c = np.asarray(capacity(snr_db, channel))
    return _out(sigma2 * np.power(2.0, -2.0 * rho * c))


@dataclass
class WaterFilling:
    """Result of `reverse_water_filling`.

    Attributes:
        mse: mean distortion per real value, ``mean_i D_i``.
        theta: the water level.
        distortions: ``D_i = min(theta, lambda_i)`` per component (numpy array).
        rate_bits: the total bit budget it was solved for.
        active: number of components that receive bits (``lambda_i > theta``).
    """

    mse: float
    theta: float
    distortions: np.ndarray
    rate_bits: float
    active: int


def reverse_water_filling(eigenvalues: ArrayLike, rho: float | None = None, snr_db: float | None = None, *,
                          rate_bits: float | None = None, channel: str = "awgn") -> WaterFilling:
    """Gaussian vector source over a channel: reverse water-filling on the covariance spectrum.

    Args:
        eigenvalues: ``lambda_i >= 0``, ``n`` values (one per real source component).
        rho, snr_db: the bit budget is ``R = rho * n * C(snr_db)`` with ``C`` the ``channel`` capacity
            (bits per complex use), i.e. ``rho * n`` channel uses. For a complex-valued source count
            real and imaginary parts as separate components (rho is per real value).
        rate_bits: give the total budget ``R`` in bits directly instead of ``rho``/``snr_db``.
    Returns:
        `WaterFilling`; with all ``lambda_i = sigma^2`` its ``mse`` equals `gaussian_opta_mse`.
    """
    lam = np.asarray(eigenvalues.detach().cpu() if isinstance(eigenvalues, torch.Tensor) else eigenvalues,
                     dtype=np.float64).reshape(-1)
    if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError("eigenvalues: expected a non-empty array of finite non-negative values")
    if rate_bits is None:
        if rho is None or snr_db is None:
            raise ValueError("rho: give rho and snr_db, or rate_bits")
        rho = _check_positive("rho", rho, allow_zero=True)
        rate = rho * lam.size * float(capacity(float(snr_db), channel))
    else:
        if rho is not None or snr_db is not None:
            raise ValueError("rate_bits: give either rate_bits or (rho, snr_db), not both")
        rate = _check_positive("rate_bits", rate_bits, allow_zero=True)
    pos = lam[lam > 0]
    if rate == 0 or pos.size == 0:
        return WaterFilling(float(lam.mean()), float(lam.max()), lam.copy(), rate, 0)

    def bits(theta: float) -> float:
        return float(np.sum(0.5 * np.log2(np.maximum(pos / theta, 1.0))))

    # bits(theta) decreases in theta; bisect log(theta) between a level low enough and max(lambda)
    hi = float(pos.max())
    lo = float(np.exp(np.log(pos).mean() - 2.0 * rate / pos.size * math.log(2.0))) * 0.5
    lo = min(lo, hi)
    while bits(lo) < rate:
        lo *= 0.5
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if bits(mid) > rate:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-13:
            break
    theta = math.sqrt(lo * hi)
    d = np.minimum(theta, lam)
    return WaterFilling(float(d.mean()), theta, d, rate, int(np.sum(lam > theta)))


def separation_bits(channel_uses: float, snr_db: ArrayLike, channel: str = "awgn"):
    """Bits an ideal (capacity-achieving) digital link carries in ``channel_uses`` uses: ``k C(SNR)``."""
    k = _check_positive("channel_uses", channel_uses, allow_zero=True)
    return _out(k * np.asarray(capacity(snr_db, channel)))


def separation_bits_per_value(channel_uses: float, n_values: int, snr_db: float, channel: str = "awgn",
                              max_bits: int = 16) -> int:
    """Whole bits per source value an ideal digital link carries: ``floor(k C / n)``, at most ``max_bits``.

    ``channel_uses`` ``k`` complex uses for ``n_values`` real values at ``snr_db`` over ``channel``
    (`capacity`; ``"rayleigh"``: the ergodic capacity, an optimistic reference for one fade per image).
    """
    if isinstance(n_values, bool) or not isinstance(n_values, (int, np.integer)) or n_values < 1:
        raise ValueError(f"n_values: expected an int >= 1, got {n_values!r}")
    bits = float(separation_bits(channel_uses, float(snr_db), channel))
    return int(min(max_bits, math.floor(bits / n_values + 1e-9)))


def shannon_limit_snr_db(bits_per_use: ArrayLike):
    """The least SNR (dB) at which ``bits_per_use`` bits per complex use are achievable over AWGN:
    ``10 log10(2^R - 1)`` (the inverse of `awgn_capacity`; ``-inf`` for ``R = 0``)."""
    if np.ndim(bits_per_use) == 0 and not isinstance(bits_per_use, torch.Tensor):
        r = _check_positive("bits_per_use", bits_per_use, allow_zero=True)
        x = 2 ** r - 1
        return 10 * math.log10(x) if x > 0 else -math.inf
    r = np.asarray(bits_per_use.detach().cpu() if isinstance(bits_per_use, torch.Tensor) else bits_per_use,
                   dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError("bits_per_use: expected finite non-negative values")
    with np.errstate(divide="ignore"):
        return _out(10 * np.log10(np.power(2.0, r) - 1))


def lmmse_weight(gain: torch.Tensor, noise_var: torch.Tensor | float) -> torch.Tensor:
    """Linear MMSE weight for a unit-power symbol ``z`` seen as ``y = a z + w``, ``w ~ CN(0, v)``:
    ``conj(a) / (|a|^2 + v)``, so ``z_hat = weight * y``.

    Args:
        gain: ``a``, a complex (or real) tensor broadcastable against ``noise_var``.
        noise_var: ``v``, real, ``>= 0`` (a tensor or a number).
    Returns:
        The weight, broadcast shape, ``gain``'s dtype (complex for complex gains). Used by the MMSE
        equaliser of `splitldm.link.channels.Channel` (``a = h``, ``v = N0``) and by `AnalogLink`'s
        receiver (``a``, ``v`` from the channel's published model).
    """
    if not isinstance(gain, torch.Tensor):
        raise TypeError(f"gain: expected a Tensor, got {type(gain).__name__}")
    return gain.conj() / (gain.abs().square() + noise_var)


def lmmse_estimate(y: torch.Tensor, gain: torch.Tensor, noise_var: torch.Tensor | float) -> torch.Tensor:
    """LMMSE estimate of unit-power symbols ``z`` from ``y = a z + CN(0, v)``: ``conj(a) y / (|a|^2 + v)``
    (`lmmse_weight` applied to ``y``; all arguments broadcast, the result has ``y``'s shape)."""
    if not isinstance(y, torch.Tensor) or not isinstance(gain, torch.Tensor):
        raise TypeError("y, gain: expected Tensors")
    return gain.conj() * y / (gain.abs().square() + noise_var)


def lmmse_mse(variance: ArrayLike, snr_db: ArrayLike):
    """Closed-form MSE per real value of uncoded transmission with an LMMSE receiver over AWGN,
    ``variance / (1 + SNR)`` (``rho = 1/2`` complex use per real value; equal to the Gaussian OPTA at
    ``rho = 1/2``). Float or array like the inputs."""
    v = np.asarray(variance.detach().cpu() if isinstance(variance, torch.Tensor) else variance, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"variance: expected finite non-negative values, got {variance!r}")
    return _out(v / (1.0 + _snr_linear(snr_db)))


@dataclass
class LatentCovariance:
    """Second-order statistics of latents.

    Attributes:
        mean: ``(C,)`` (per-channel mode) or ``(C*h*w,)`` (full) float64.
        cov: ``(C, C)`` or ``(D, D)`` covariance after shrinkage; ``None`` in full mode when ``D`` exceeds
            ``max_dim`` (then only the spectrum is computed, via the ``N x N`` Gram matrix).
        eigenvalues: ``(C*h*w,)`` descending spectrum over all real values of one latent (per-channel
            eigenvalues repeated ``h*w`` times in per-channel mode) -> input for `reverse_water_filling`.
        shrinkage: the weight ``a`` in ``(1-a) S + a (tr S / D) I`` that was used.
        mode: ``"channel"`` or ``"full"``.
        num_samples: the number of vectors the estimate used.
    """

    mean: torch.Tensor
    cov: torch.Tensor | None
    eigenvalues: torch.Tensor
    shrinkage: float
    mode: str
    num_samples: int

    @property
    def variance(self) -> float:
        """Average variance per real value (``mean(eigenvalues)``)."""
        return float(self.eigenvalues.mean())


def _ledoit_wolf(x: torch.Tensor, s_fro2: float, trace: float) -> float:
    """Ledoit-Wolf optimal shrinkage towards ``(tr S/D) I`` for centred data ``x`` ``(N, D)``."""
    n, d = x.shape
    mu = trace / d
    beta = (torch.sum(x.square().sum(dim=1).square()).item() / n - s_fro2) / (d * n)
    delta = (s_fro2 - d * mu * mu) / d
    if delta <= 0:
        return 0.0
    return float(min(max(beta, 0.0), delta) / delta)


def latent_covariance(latents: torch.Tensor, mode: str = "channel", shrinkage: float | str = "auto",
                      max_dim: int = 4096) -> LatentCovariance:
    """Measure the covariance of latents ``(N, C, h, w)`` (float), in float64.

    Args:
        mode: ``"channel"``: the ``C x C`` covariance across channels, pooling all ``N*h*w`` positions
            (stationary in space); ``"full"``: the covariance over all ``D = C*h*w`` values from the
            ``N`` latents.
        shrinkage: ``"auto"`` (Ledoit-Wolf), or a float in ``[0, 1]``: the estimate is
            ``(1-a) S + a (tr S / D) I``. Needed in full mode where ``N < D`` (rank-deficient ``S``).
        max_dim: in full mode, form the ``D x D`` matrix only up to this size.
    """
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise TypeError("latents: expected a real floating-point tensor (N, C, h, w)")
    if latents.dim() != 4 or latents.shape[0] < 2:
        raise ValueError(f"latents: expected shape (N, C, h, w) with N >= 2, got {tuple(latents.shape)}")
    if mode not in ("channel", "full"):
        raise ValueError(f"mode: expected 'channel' or 'full', got {mode!r}")
    if not (shrinkage == "auto" or (isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool)
                                    and 0.0 <= shrinkage <= 1.0)):
        raise ValueError(f"shrinkage: expected 'auto' or a number in [0, 1], got {shrinkage!r}")
    n, c, h, w = latents.shape
    x64 = latents.detach().to(torch.float64, copy=True)
    if mode == "channel":
        x = x64.permute(0, 2, 3, 1).reshape(-1, c)
    else:
        x = x64.reshape(n, -1)
    if not torch.isfinite(x).all():
        raise ValueError("latents: contain NaN or inf")
    mean = x.mean(dim=0)
    x = x - mean
    num, d = x.shape
    if d <= max_dim or mode == "channel":
        s = x.T @ x / num
        s_fro2, trace = float(s.square().sum()), float(torch.trace(s))
        a = _ledoit_wolf(x, s_fro2, trace) if shrinkage == "auto" else float(shrinkage)
        cov = (1 - a) * s + a * (trace / d) * torch.eye(d, dtype=s.dtype)
        eig = torch.linalg.eigvalsh(cov).clamp_min(0).flip(0)
    else:
        # S = X^T X / N has the non-zero eigenvalues of the N x N Gram matrix X X^T / N
        gram = x @ x.T / num
        s_fro2, trace = float(gram.square().sum()), float(torch.trace(gram))
        a = _ledoit_wolf(x, s_fro2, trace) if shrinkage == "auto" else float(shrinkage)
        nz = torch.linalg.eigvalsh(gram).clamp_min(0).flip(0)
        eig = torch.full((d,), a * trace / d, dtype=torch.float64)
        eig[: nz.numel()] += (1 - a) * nz
        cov = None
    if mode == "channel":
        eig = eig.repeat_interleave(h * w)
    return LatentCovariance(mean=mean, cov=cov, eigenvalues=eig, shrinkage=a, mode=mode, num_samples=num)
