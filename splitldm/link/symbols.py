"""Complex channel symbols: pairing real values into symbols, unit power, and ``CN(0, 1)`` draws.

The conventions every stage shares (see `splitldm.link.channels` for the channels themselves): one
complex symbol is one channel use; real values are paired into symbols *within one sample*
(`real_to_complex`), never across the batch; transmit power is ``E|z|^2 = 1`` per sample after
`normalize_power`. Everything here is importable without Sionna (it is loaded on the first draw).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["real_to_complex", "complex_to_real", "normalize_power", "complex_normal"]


def _sionna_complex_normal():
    # Sionna takes ~4 s to import (it loads all of sionna.phy); import it on first use only, so that
    # `import splitldm` stays fast.
    from sionna.phy.utils import complex_normal as _cn

    return _cn


def complex_normal(shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.complex64,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``CN(0, 1)`` samples of ``shape`` (variance 1/2 per real part), drawn from ``generator``.

    Drawn on the generator's device with Sionna's ``complex_normal`` (so CPU generators give the same
    bits whatever device the data is on), then moved to ``device``. No gradient.
    """
    if dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"dtype: expected torch.complex64 or torch.complex128, got {dtype}")
    precision = "single" if dtype == torch.complex64 else "double"
    with torch.no_grad():
        z = _sionna_complex_normal()(list(shape), var=1.0, precision=precision, device=generator.device,
                                     generator=generator)
    return z.to(device=device if device is not None else generator.device)


def real_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Pair real values into complex symbols within each sample.

    Args:
        x: real tensor ``(B, *S)`` with an even number ``2n = prod(S)`` of values per sample.
    Returns:
        ``(B, n)`` complex tensor (``complex64``, or ``complex128`` for float64 input); symbol ``i`` of
        sample ``b`` is ``x[b].flatten()[2i] + 1j * x[b].flatten()[2i+1]``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"x: expected a real floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x: expected shape (B, ...) with at least 2 dims, got {tuple(x.shape)}")
    per_sample = x[0].numel()
    if per_sample % 2:
        raise ValueError(f"x: {per_sample} values per sample is odd; real values are paired into complex "
                         "symbols within one sample, so each sample needs an even count (pad it)")
    flat = x.reshape(x.shape[0], per_sample // 2, 2)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return torch.complex(flat[..., 0], flat[..., 1])


def complex_to_real(z: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of `real_to_complex`: ``(B, n)`` complex -> ``(B, 2n)`` real, or ``(B, *shape)``."""
    if not isinstance(z, torch.Tensor) or not z.is_complex():
        raise TypeError(f"z: expected a complex tensor, got {getattr(z, 'dtype', type(z).__name__)}")
    if z.dim() < 1:
        raise ValueError("z: expected shape (B, ...)")
    real = torch.view_as_real(z.reshape(z.shape[0], -1)).reshape(z.shape[0], -1)
    if shape is None:
        return real
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != real.shape[1]:
        raise ValueError(f"shape: {shape} holds {math.prod(shape)} values per sample, but z carries {real.shape[1]}")
    return real.reshape(z.shape[0], *shape)


def normalize_power(z: torch.Tensor, power: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """Scale each sample of complex ``z`` ``(B, ...)`` to average symbol power ``power`` (``mean |z|^2``).

    Differentiable. An all-zero sample stays zero (its power is floored at ``eps``).
    """
    if not isinstance(z, torch.Tensor) or not z.is_complex():
        raise TypeError(f"z: expected a complex tensor (pair real values with real_to_complex first), "
                        f"got {getattr(z, 'dtype', type(z).__name__)}")
    if z.dim() < 1 or z.shape[0] == 0:
        raise ValueError(f"z: expected shape (B, ...) with B >= 1, got {tuple(z.shape)}")
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power > 0):
        raise ValueError(f"power: expected a finite positive number, got {power!r}")
    dims = tuple(range(1, z.dim()))
    p = z.abs().square().mean(dim=dims, keepdim=True) if dims else z.abs().square()
    return z * torch.sqrt(power / p.clamp_min(eps)).to(z.real.dtype)
