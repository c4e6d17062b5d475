"""The digital (separation) baseline for sending a latent over a channel, as a `LinkStage` placed before a
channel stage. The analog one is `splitldm.link.analog.AnalogLink`.

* `DigitalLink`: separate source and channel coding. Source coding: the KLT of a given latent
  covariance (or, without one, an orthonormal DCT with the sample mean and std as 2 float32 of side
  information), the first ``m`` coefficients quantised with Gaussian-optimal uniform quantisers and
  per-coefficient bits (greedy integer reverse water-filling, `allocate_bits`); the legacy mode
  quantises every value over the sample's ``[min, max]``. Channel coding: 5G NR LDPC (Sionna
  ``LDPC5GEncoder``/``LDPC5GDecoder``, shortened/punctured by Sionna's rate matching), Gray QAM
  (Sionna ``Mapper``), soft APP demapping and belief propagation. A codeword whose LDPC syndrome
  (or optional CRC) check fails is erased: every coefficient with a bit in it falls back to its mean.
* `best_digital_config`: for a channel-use budget, codes sized to it (`budget_codes`: ``n = budget x
  bits per symbol`` coded bits, QPSK..256-QAM, rates 1/5..0.9, no CRC) and, per SNR, the one with the
  least expected distortion ``(1 - BLER) D_quantised + BLER D_mean``; the BLER comes from the code's
  measured AWGN waterfall (`DIGITAL_WATERFALL_DB`, averaged over the fade for Rayleigh block fading).
  Designed for one SNR, it fails abruptly below it: the digital cliff.

The side information is counted in the payload's bits (it crosses digitally, assumed error-free as on
a robust control channel); the symbols are counted as channel uses.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from splitldm.analysis.limits import shannon_limit_snr_db
from splitldm.link.channels import AWGN, Channel, resolve_snr_db
from splitldm.link.fec import _Coder
from splitldm.link.payload import Payload, primary_real_names
from splitldm.link.stack import LinkContext, LinkStage, default_generator

__all__ = [
    "DigitalLink",
    "DigitalConfig",
    "DIGITAL_WATERFALL_DB",
    "allocate_bits",
    "best_digital_config",
    "budget_codes",
    "code_waterfall",
    "digital_candidates",
    "gaussian_uniform_quantizer",
    "measure_bler",
    "measure_waterfall",
    "measure_waterfall_table",
]

# ----------------------------------------------------------------------------------------- digital
CHECKS = (None, "CRC6", "CRC11", "CRC16")  # error detection on top of the LDPC syndrome check
_CRC_LEN = {None: 0, "CRC6": 6, "CRC11": 11, "CRC16": 16}
DEFAULT_CODEWORD_BITS = 960
BITS_PER_SYMBOL = (2, 4, 6, 8)  # QPSK, 16-, 64-, 256-QAM
#: Code rates `best_digital_config` tries (information bits / coded bits, within Sionna's 5G LDPC
#: limits 1/5 <= r <= 0.95, k >= 12).
CODE_RATES = (0.2, 0.25, 1 / 3, 0.4, 0.5, 0.6, 2 / 3, 0.75, 5 / 6, 0.9)
MAX_BITS_PER_COMPONENT = 12
MAX_CODEWORD_BITS = 8448  # several codewords per sample above this many coded bits

#: AWGN waterfalls of the budget-sized codes: ``(bits_per_symbol, k, n) -> (SNR at BLER 90 %, SNR at BLER 10 %)``
#: in dB (no CRC, LDPC syndrome check, APP demapping, 20 BP iterations; a failure is a syndrome failure
#: or any wrong information bit). Computed by `measure_waterfall_table` (see its docstring for the
#: command); codes not listed are measured on first use (seconds to a minute each) and cached.
DIGITAL_WATERFALL_DB: dict[tuple[int, int, int], tuple[float, float]] = {
    (2, 13, 32): (-1.2, 2.2), (2, 13, 64): (-4.9, -0.8), (2, 16, 32): (0.0, 3.4), (2, 16, 64): (-3.8, 0.1),
    (2, 19, 32): (1.1, 4.3), (2, 21, 32): (1.7, 4.9), (2, 21, 64): (-2.4, 0.7), (2, 24, 32): (2.6, 5.6),
    (2, 26, 64): (-1.2, 2.2), (2, 27, 32): (3.5, 7.0), (2, 29, 32): (4.0, 8.6), (2, 32, 64): (0.0, 2.8),
    (2, 38, 64): (1.1, 3.8), (2, 43, 64): (1.9, 4.6), (2, 48, 64): (2.6, 5.5), (2, 53, 64): (3.5, 6.6),
    (2, 58, 64): (5.1, 8.4), (4, 13, 64): (-1.2, 3.6), (4, 16, 64): (0.0, 4.2), (4, 21, 64): (1.7, 5.2),
    (4, 26, 64): (3.2, 7.0), (4, 26, 128): (-1.2, 2.7), (4, 32, 64): (4.8, 8.2), (4, 32, 128): (0.0, 3.9),
    (4, 38, 64): (6.2, 9.2), (4, 43, 64): (7.4, 10.6), (4, 43, 128): (1.9, 4.8), (4, 48, 64): (8.5, 11.6),
    (4, 51, 128): (3.1, 6.2), (4, 53, 64): (9.7, 13.1), (4, 58, 64): (11.3, 15.1), (4, 64, 128): (5.0, 7.6),
    (4, 77, 128): (6.7, 9.3), (4, 85, 128): (7.7, 10.1), (4, 96, 128): (9.0, 11.1), (4, 107, 128): (10.6, 13.1),
    (4, 115, 128): (11.7, 14.4), (6, 24, 96): (2.6, 7.0), (6, 32, 96): (5.0, 9.0), (6, 38, 96): (6.4, 10.2),
    (6, 48, 96): (8.8, 12.0), (6, 48, 192): (2.8, 6.5), (6, 58, 96): (10.9, 14.2), (6, 64, 96): (12.2, 15.3),
    (6, 64, 192): (5.6, 8.5), (6, 72, 96): (14.1, 16.9), (6, 77, 192): (7.1, 10.0), (6, 80, 96): (15.7, 18.5),
    (6, 86, 96): (17.2, 20.2), (6, 96, 192): (9.2, 11.6), (6, 115, 192): (11.3, 13.6), (6, 128, 192): (12.5, 15.1),
    (6, 144, 192): (14.3, 16.9), (6, 160, 192): (16.2, 18.3), (6, 173, 192): (17.9, 21.3), (8, 26, 128): (3.4, 8.2),
    (8, 32, 128): (5.0, 9.2), (8, 43, 128): (7.8, 11.9), (8, 51, 128): (9.5, 13.6), (8, 64, 128): (12.6, 16.0),
    (8, 64, 256): (5.8, 8.7), (8, 77, 128): (15.4, 18.4), (8, 85, 128): (16.9, 19.8), (8, 85, 256): (8.3, 11.5),
    (8, 96, 128): (18.9, 21.5), (8, 102, 256): (10.2, 12.9), (8, 107, 128): (21.1, 24.6), (8, 115, 128): (22.8, 26.0),
    (8, 128, 256): (13.2, 15.7), (8, 154, 256): (15.6, 18.2), (8, 171, 256): (17.2, 19.5), (8, 192, 256): (19.4, 22.0),
    (8, 213, 256): (21.3, 23.4), (8, 230, 256): (23.1, 25.5),
}


@dataclass(frozen=True)
class DigitalConfig:
    """A digital scheme.

    Source coding: ``num_components=None`` (legacy): every value is quantised with ``bits_per_value``
    bits over the sample's ``[min, max]``. ``num_components=m``: transform coding: the first ``m``
    coefficients of the decorrelating transform (KLT of a given covariance, else an orthonormal DCT)
    are sent, coefficient ``i`` with ``allocation[i]`` bits (default ``bits_per_value`` each); the rest
    are replaced by their mean. ``bits_per_value`` is then the largest allocation (0: nothing is sent).

    Channel coding: 5G LDPC with ``k = round(code_rate * codeword_bits)`` information bits (including
    the ``crc`` bits; ``crc=None``: only the LDPC syndrome check detects failures) per
    ``codeword_bits``-bit codeword, Gray QAM with ``bits_per_symbol`` bits per symbol.
    """

    bits_per_value: int
    code_rate: float = 0.5
    bits_per_symbol: int = 4
    codeword_bits: int = DEFAULT_CODEWORD_BITS
    num_components: int | None = None
    allocation: tuple[int, ...] | None = None
    crc: str | None = "CRC16"

    def __post_init__(self):
        b = self.bits_per_value
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 16:
            raise ValueError(f"bits_per_value: expected an int in [0, 16], got {b!r}")
        if isinstance(self.code_rate, bool) or not isinstance(self.code_rate, (int, float)) \
                or not 0 < self.code_rate < 1:
            raise ValueError(f"code_rate: expected a number in (0, 1), got {self.code_rate!r}")
        if self.bits_per_symbol not in BITS_PER_SYMBOL:
            raise ValueError(f"bits_per_symbol: expected one of {BITS_PER_SYMBOL}, got {self.bits_per_symbol!r}")
        n = self.codeword_bits
        if isinstance(n, bool) or not isinstance(n, int) or n % self.bits_per_symbol or not 13 <= n <= 316 * 384:
            raise ValueError(f"codeword_bits: expected an int >= 13 divisible by bits_per_symbol, got {n!r}")
        if self.crc not in CHECKS:
            raise ValueError(f"crc: expected one of {CHECKS}, got {self.crc!r}")
        k = self.info_bits
        if not (12 <= k <= 8448 and 0.2 <= k / n <= 0.95 and k > _CRC_LEN[self.crc]):
            raise ValueError(f"code_rate: {self.code_rate:.4g} x {n} coded bits gives k = {k} information bits; "
                             f"5G LDPC needs 12 <= k <= 8448, 1/5 <= k/n <= 0.95 and k > the {self.crc} bits")
        if self.allocation is not None:
            alloc = self.allocation
            if not isinstance(alloc, tuple) or not alloc or any(
                    isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= 16 for a in alloc):
                raise ValueError(f"allocation: expected a non-empty tuple of ints in [0, 16], got {alloc!r}")
            if self.num_components is None:
                object.__setattr__(self, "num_components", len(alloc))
            if len(alloc) != self.num_components or max(alloc) != b:
                raise ValueError(f"allocation: {len(alloc)} entries with max {max(alloc)} do not match "
                                 f"num_components={self.num_components}, bits_per_value={b}")
        m = self.num_components
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"num_components: expected None or an int >= 1, got {m!r}")

    @property
    def info_bits(self) -> int:
        """LDPC information bits per codeword ``k`` (including the CRC)."""
        return int(round(self.code_rate * self.codeword_bits))

    @property
    def payload_bits(self) -> int:
        """Source bits per codeword (``k`` minus the CRC)."""
        return self.info_bits - _CRC_LEN[self.crc]

    @property
    def transform(self) -> bool:
        """True for transform coding (``num_components`` set)."""
        return self.num_components is not None

    def bits_per_component(self, n_values: int) -> tuple[int, ...]:
        """Bits of each sent value / coefficient, in sending order."""
        if self.allocation is not None:
            return self.allocation
        return (self.bits_per_value,) * (n_values if self.num_components is None else self.num_components)

    def source_bits(self, n_values: int) -> int:
        """Quantiser bits per sample for ``n_values`` real values."""
        return sum(self.bits_per_component(n_values)) if self.bits_per_value else 0

    def num_codewords(self, n_values: int) -> int:
        """Codewords per sample for ``n_values`` real values."""
        return -(-self.source_bits(n_values) // self.payload_bits)

    def channel_uses(self, n_values: int) -> int:
        """Complex channel uses per sample (exact): codewords x coded bits / bits per symbol."""
        return self.num_codewords(n_values) * self.codeword_bits // self.bits_per_symbol

    @property
    def spectral_efficiency(self) -> float:
        """Source bits per channel use (after CRC overhead)."""
        return self.payload_bits * self.bits_per_symbol / self.codeword_bits


# -------------------------------------------------------------------------- source transforms
@functools.lru_cache(maxsize=None)
def gaussian_uniform_quantizer(bits: int) -> tuple[float, float]:
    """``(step, mse)`` of the MSE-optimal uniform midrise quantiser with ``2**bits`` levels for a unit
    Gaussian (cell midpoints as reconstruction levels, the two outer cells unbounded); ``bits=0``: (inf, 1)."""
    if bits == 0:
        return float("inf"), 1.0
    levels = 1 << bits

    def mse(step: float) -> float:
        edges = (torch.arange(1, levels, dtype=torch.float64) - levels / 2) * step
        a = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), edges])
        b = torch.cat([edges, torch.tensor([math.inf], dtype=torch.float64)])
        y = (torch.arange(levels, dtype=torch.float64) - levels / 2 + 0.5) * step
        pdf = lambda t: torch.where(torch.isinf(t), torch.zeros_like(t), torch.exp(-0.5 * t.square()) / math.sqrt(2 * math.pi))
        tpdf = lambda t: torch.where(torch.isinf(t), torch.zeros_like(t), t * pdf(t))
        cdf = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))
        p = cdf(b) - cdf(a)
        return float((p * (1 + y.square()) + tpdf(a) - tpdf(b) - 2 * y * (pdf(a) - pdf(b))).sum())

    lo, hi = math.log(1e-5), math.log(4.0)  # golden-section search on log(step); mse is unimodal there
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if mse(math.exp(m1)) < mse(math.exp(m2)):
            hi = m2
        else:
            lo = m1
    step = math.exp((lo + hi) / 2)
    return step, mse(step)


def allocate_bits(eigenvalues: Sequence[float] | torch.Tensor, total_bits: int,
                  max_bits: int = MAX_BITS_PER_COMPONENT) -> tuple[int, ...]:
    """Greedy integer bit allocation (discrete reverse water-filling): each bit goes to the component
    whose Gaussian-quantiser distortion ``lambda_i d(b_i)`` it lowers most. ``eigenvalues`` in sending
    order (descending); returns the bits per component with trailing zeros removed."""
    import heapq

    lam = [max(float(v), 0.0) for v in torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(-1).tolist()]
    d = [gaussian_uniform_quantizer(b)[1] for b in range(max_bits + 1)]
    alloc = [0] * len(lam)
    heap = [(-v * (d[0] - d[1]), i) for i, v in enumerate(lam) if v > 0]
    heapq.heapify(heap)
    for _ in range(max(int(total_bits), 0)):
        if not heap:
            break
        _, i = heapq.heappop(heap)
        alloc[i] += 1
        if alloc[i] < max_bits:
            heapq.heappush(heap, (-lam[i] * (d[alloc[i]] - d[alloc[i] + 1]), i))
    while alloc and alloc[-1] == 0:
        alloc.pop()
    return tuple(alloc)


def _dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``(n, n)`` (rows are frequencies)."""
    i = torch.arange(n, dtype=dtype)
    m = torch.cos(math.pi * (i[None, :] + 0.5) * i[:, None] / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


class _DCT:
    """Orthonormal DCT of one sample shape, coefficients ordered from low to high frequency.

    ``(C, h, w)``: a 2-D DCT of every channel, ordered by ``u^2 + v^2``, then ``u``, then channel; other
    shapes: a 1-D DCT of the flattened values. ``prior``: the assumed variance of each coefficient in
    that order, ``1 / (1 + f^2)`` (an image-like power spectrum) normalised to mean 1."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) == 3:
            c, h, w = self.shape
            self.mh, self.mw = _dct_matrix(h), _dct_matrix(w)
            ch, u, v = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
            f2 = (u.square() + v.square()).reshape(-1)
            key = (f2 * (h + 1) + u.reshape(-1)) * (c + 1) + ch.reshape(-1)
            self.order = torch.argsort(key, stable=True)
            prior = 1.0 / (1.0 + f2[self.order].to(torch.float64))
        else:
            self.m1 = _dct_matrix(math.prod(self.shape))
            self.order = None
            prior = 1.0 / (1.0 + torch.arange(math.prod(self.shape), dtype=torch.float64).square())
        self.prior = prior / prior.mean()

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        x = flat.to(torch.float64)
        if self.order is None:
            return x @ self.m1.T
        c, h, w = self.shape
        y = self.mh @ x.reshape(-1, c, h, w) @ self.mw.T
        return y.reshape(x.shape[0], -1)[:, self.order]

    def inverse(self, coef: torch.Tensor) -> torch.Tensor:
        if self.order is None:
            return coef @ self.m1
        c, h, w = self.shape
        y = torch.empty_like(coef)
        y[:, self.order] = coef
        return (self.mh.T @ y.reshape(-1, c, h, w) @ self.mw).reshape(coef.shape[0], -1)


class DigitalLink(LinkStage):
    """Source coding -> 5G LDPC -> QAM on send; soft demapping -> BP decoding -> checks -> reconstruction on receive.

    Args:
        bits_per_value, code_rate, bits_per_symbol, codeword_bits: see `DigitalConfig` (or pass
            ``config=``, e.g. from `best_digital_config`).
        num_iter: belief-propagation iterations.
        covariance: a full-mode `splitldm.analysis.limits.LatentCovariance` of the latents (known to both ends):
            transform coding uses its KLT (eigenvectors by decreasing eigenvalue; coefficient ``i`` is
            quantised with the Gaussian-optimal uniform step for ``sqrt(lambda_i)``; no side
            information). Without it, transform coding uses the orthonormal DCT (`_DCT`) of the
            per-sample centred values, coefficient ``i`` scaled by the sample's std times an assumed
            ``1 / (1 + f^2)`` spectrum; the sample mean and std cross as 2 float32 of side
            information (``<name>.quant``).

    Send turns each primary real tensor ``(B, *S)`` into ``(B, channel_uses)`` complex64 symbols
    (``DigitalConfig.channel_uses(prod(S))`` per sample). Receive uses the channel's published model
    ``z_hat = a z + CN(0, v)`` for the LLRs; a codeword whose syndrome (or CRC) check fails is erased
    and every value / coefficient with a bit in it is replaced by its mean (the "cliff"). Not differentiable.

    :input: each real floating primary tensor ``x`` ``(B, *S)``, ``n = prod(S)`` values per sample.
    :output: ``send``: ``(B, DigitalConfig.channel_uses(n))`` complex64 QAM symbols, plus
        ``"<name>.quant"`` float32 side information (``(B, 3)`` min/max/mean in the legacy mode, ``(B, 2)``
        mean/std for the DCT, none with a covariance); ``payload.meta["digital"]`` records shapes.
        ``receive``: ``x_hat`` ``(B, *S)`` in ``x``'s dtype.
    :context: ``receive`` reads the channel's model (`LinkContext.channel_model`) for the LLRs and
        writes ``digital`` = ``{"codewords", "codeword_errors", "values_erased"}``.
    """

    def __init__(self, bits_per_value: int = 4, code_rate: float = 0.5, bits_per_symbol: int = 4,
                 codeword_bits: int = DEFAULT_CODEWORD_BITS, num_iter: int = 20, config: DigitalConfig | None = None,
                 covariance: Any = None):
        super().__init__()
        if config is None:
            config = DigitalConfig(bits_per_value, code_rate, bits_per_symbol, codeword_bits)
        if not isinstance(config, DigitalConfig):
            raise TypeError(f"config: expected a DigitalConfig, got {type(config).__name__}")
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
            raise ValueError(f"num_iter: expected an int >= 1, got {num_iter!r}")
        self.config = config
        self.num_iter = num_iter
        self.klt = None
        if covariance is not None:
            cov = getattr(covariance, "cov", None)
            if not isinstance(cov, torch.Tensor) or cov.dim() != 2 or cov.shape[0] != cov.shape[1] \
                    or getattr(covariance, "mode", "full") != "full":
                raise ValueError("covariance: expected a full-mode LatentCovariance with its covariance matrix "
                                 "(latent_covariance(latents, mode='full'))")
            lam, vec = torch.linalg.eigh(cov.to(torch.float64))
            idx = torch.argsort(lam, descending=True)
            mean = torch.as_tensor(covariance.mean, dtype=torch.float64).reshape(-1)
            if mean.numel() != cov.shape[0]:
                raise ValueError(f"covariance: mean has {mean.numel()} values for a {tuple(cov.shape)} covariance")
            self.klt = (mean, vec[:, idx], lam[idx].clamp_min(0.0))
        self._dct: dict = {}

    def note(self) -> dict[str, Any]:
        c = self.config
        out = {"bits_per_value": c.bits_per_value, "code_rate": c.code_rate, "bits_per_symbol": c.bits_per_symbol,
               "codeword_bits": c.codeword_bits}
        if c.transform:
            out.update(num_components=c.num_components, transform="klt" if self.klt is not None else "dct",
                       source_bits=sum(c.bits_per_component(0)))
        return out

    # ---- legacy per-value quantiser
    def quantize(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Legacy mode: ``(B, n)`` float -> (integer levels ``(B, n)`` int64, ``(B, 3)`` float32 min/max/mean)."""
        lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        mean = flat.mean(dim=1, keepdim=True)
        stats = torch.cat([lo, hi, mean], dim=1).float()
        levels = (1 << self.config.bits_per_value) - 1
        if levels == 0:
            return torch.zeros_like(flat, dtype=torch.int64), stats
        step = ((hi - lo) / levels).clamp_min(1e-30)
        q = torch.round((flat - lo) / step).clamp(0, levels).to(torch.int64)
        return q, stats

    def dequantize(self, q: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """Inverse of `quantize` (the reconstruction levels ``min + q (max - min) / (2^b - 1)``)."""
        levels = (1 << self.config.bits_per_value) - 1
        lo, hi = stats[:, :1], stats[:, 1:2]
        if levels == 0:
            return stats[:, 2:3].expand(q.shape).clone()
        return lo + q.to(stats.dtype) * ((hi - lo) / levels)

    # ---- transform coding
    def _check_size(self, n: int) -> None:
        if self.klt is not None and self.klt[0].numel() != n:
            raise ValueError(f"covariance: it describes {self.klt[0].numel()} values, the latent has {n} per sample")
        m = self.config.num_components
        if m is not None and m > n:
            raise ValueError(f"num_components: {m} exceeds the {n} values per sample")

    def _analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(B, *S)`` -> (coefficients ``(B, m)`` float64, their scales ``(B, m)``, side info ``(B, 2)`` or None)."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        self._check_size(flat.shape[1])
        m = self.config.num_components
        if self.klt is not None:
            mean, vec, lam = (t.to(flat.device) for t in self.klt)
            coef = (flat - mean) @ vec[:, :m]
            return coef, lam[:m].sqrt().expand_as(coef), None
        dct = self._dct_for(x.shape[1:])
        mu = flat.mean(dim=1, keepdim=True)
        coef = dct.forward(flat - mu)[:, :m]
        side = torch.cat([mu, flat.std(dim=1, unbiased=False, keepdim=True)], dim=1).float()
        return coef, self._dct_scale(dct, side, m), side

    @staticmethod
    def _dct_scale(dct: "_DCT", side: torch.Tensor, m: int) -> torch.Tensor:
        """The assumed standard deviation of the first ``m`` DCT coefficients: the sample's std (side
        information) times the prior spectrum."""
        return side[:, 1:2].double() * dct.prior[:m].to(side.device).sqrt()

    def _synthesise(self, coef: torch.Tensor, shape: Sequence[int], side: torch.Tensor | None) -> torch.Tensor:
        """Coefficients ``(B, m)`` (0 = mean) -> flat values ``(B, n)`` float64."""
        m = coef.shape[1]
        if self.klt is not None:
            mean, vec, _ = (t.to(coef.device) for t in self.klt)
            return mean + coef @ vec[:, :m].T
        dct = self._dct_for(shape)
        full = torch.nn.functional.pad(coef, (0, math.prod(shape) - m))
        return side[:, :1].double() + dct.inverse(full)

    def _dct_for(self, shape: Sequence[int]) -> _DCT:
        key = tuple(int(s) for s in shape)
        if key not in self._dct:
            self._dct[key] = _DCT(key)
        return self._dct[key]

    def _quantise_coef(self, coef: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        alloc = self.config.bits_per_component(coef.shape[1])
        q = torch.zeros_like(coef, dtype=torch.int64)
        for b in set(alloc) - {0}:
            cols = torch.tensor([i for i, a in enumerate(alloc) if a == b], device=coef.device)
            step = gaussian_uniform_quantizer(b)[0] * scale[:, cols].clamp_min(1e-30)
            q[:, cols] = torch.floor(coef[:, cols] / step + (1 << b) / 2).clamp(0, (1 << b) - 1).to(torch.int64)
        return q

    def _dequantise_coef(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        alloc = self.config.bits_per_component(q.shape[1])
        out = torch.zeros_like(scale)
        for b in set(alloc) - {0}:
            cols = torch.tensor([i for i, a in enumerate(alloc) if a == b], device=q.device)
            step = gaussian_uniform_quantizer(b)[0] * scale[:, cols]
            out[:, cols] = (q[:, cols].to(scale.dtype) - (1 << b) / 2 + 0.5) * step
        return out

    def quantized(self, x: torch.Tensor) -> torch.Tensor:
        """What an error-free link delivers for ``x`` ``(B, *S)``: the reconstructed values, same shape."""
        if not self.config.transform:
            flat = x.reshape(x.shape[0], -1).float()
            q, stats = self.quantize(flat)
            return self.dequantize(q, stats).reshape(x.shape).to(x.dtype)
        coef, scale, side = self._analyse(x)
        hat = self._dequantise_coef(self._quantise_coef(coef, scale), scale)
        return self._synthesise(hat, x.shape[1:], side).reshape(x.shape).to(x.dtype)

    # ---- link stage
    def _bit_layout(self, n_values: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(component index, bit shift) of every sent bit, MSB first, and the number of components."""
        alloc = self.config.bits_per_component(n_values)
        comp = torch.repeat_interleave(torch.arange(len(alloc)), torch.tensor(alloc, dtype=torch.int64))
        start = torch.cumsum(torch.tensor([0, *alloc[:-1]], dtype=torch.int64), 0)
        pos = torch.arange(comp.numel()) - start[comp]
        shift = torch.tensor(alloc, dtype=torch.int64)[comp] - 1 - pos
        return comp.to(device), shift.to(device), len(alloc)

    @torch.no_grad()
    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        cfg = self.config
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        info = {}
        for name in primary_real_names(payload, "DigitalLink"):
            x = tensors[name]
            batch, n = x.shape[0], x[0].numel()
            if cfg.transform:
                coef, scale, side = self._analyse(x)
                q = self._quantise_coef(coef, scale)
            else:
                q, side = self.quantize(x.reshape(batch, -1).float())
            c = cfg.num_codewords(n)
            if c == 0:
                symbols = torch.zeros(batch, 0, dtype=torch.complex64, device=x.device)
            else:
                comp, shift, _ = self._bit_layout(n, x.device)
                bits = ((q[:, comp] >> shift) & 1).float()  # MSB first, components in sending order
                bits = torch.nn.functional.pad(bits, (0, c * cfg.payload_bits - bits.shape[1]))
                coder = _Coder.get(cfg, x.device, self.num_iter)
                symbols = coder.encode(bits.reshape(batch, c, cfg.payload_bits)).reshape(batch, -1)
            tensors[name] = symbols.to(torch.complex64)
            if side is not None:
                tensors[f"{name}.quant"] = side
            info[name] = {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch."), "n_values": n,
                          "codewords": c}
        meta["digital"] = {**meta.get("digital", {}), **info}
        return payload.replace(tensors=tensors, meta=meta)

    @torch.no_grad()
    def receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        LinkContext.require(context, "DigitalLink.receive")
        cfg = self.config
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        spec_all = meta.pop("digital", {})
        report = {"codewords": 0, "codeword_errors": 0, "values_erased": 0}
        for name, spec in spec_all.items():
            y = tensors[name]
            side = tensors.pop(f"{name}.quant", None)
            batch, n, c = y.shape[0], spec["n_values"], spec["codewords"]
            comp, shift, m = self._bit_layout(n, y.device)
            q = torch.zeros(batch, m, dtype=torch.int64, device=y.device)
            comp_ok = torch.zeros(batch, m, dtype=torch.bool, device=y.device)
            if c > 0:
                a, v = context.channel_model(name, y)
                a = torch.where(a.abs() < 1e-6, torch.full_like(a, 1e-6), a)  # a deep fade: LLRs ~ 0
                y_unbiased = y / a
                no = (v / a.abs().square()).clamp(1e-10, 1e10).to(torch.float32)
                coder = _Coder.get(cfg, y.device, self.num_iter)
                bits, ok = coder.decode(y_unbiased.to(torch.complex64), no, (batch, c, cfg.codeword_bits))
                bits = bits.reshape(batch, -1)[:, : comp.numel()].to(torch.int64)
                q.index_add_(1, comp, bits << shift)
                bit_ok = ok[:, :, None].expand(batch, c, cfg.payload_bits).reshape(batch, -1)[:, : comp.numel()]
                bad = torch.zeros(batch, m, dtype=torch.int64, device=y.device).index_add_(1, comp, (~bit_ok).long())
                comp_ok = bad == 0
                if cfg.transform:  # components that got no bits are not "sent" (allocation 0): keep them at the mean
                    comp_ok &= torch.tensor(cfg.bits_per_component(n), device=y.device)[None] > 0
                report["codewords"] += batch * c
                report["codeword_errors"] += int((~ok).sum())
                report["values_erased"] += int((~comp_ok).sum())
            if cfg.transform:
                scale = self.klt[2][:m].sqrt().to(y.device).expand(batch, m) if self.klt is not None \
                    else self._dct_scale(self._dct_for(spec["shape"]), side, m)
                coef = torch.where(comp_ok, self._dequantise_coef(q, scale), torch.zeros_like(scale))
                values = self._synthesise(coef, spec["shape"], side)
            else:
                values = torch.where(comp_ok, self.dequantize(q, side), side[:, 2:3].expand(batch, n)) if c > 0 \
                    else side[:, 2:3].expand(batch, n).clone()
            tensors[name] = values.reshape(batch, *spec["shape"]).to(getattr(torch, spec["dtype"]))
        context.digital = report
        return payload.replace(tensors=tensors, meta=meta)


# --------------------------------------------------------------------------------- configuration
def budget_codes(channel_uses_budget: int, rates: Iterable[float] = CODE_RATES,
                 bits_per_symbol: Iterable[int] = BITS_PER_SYMBOL) -> list[tuple[int, int, int, int]]:
    """The LDPC codes sized to a budget: ``(bits_per_symbol, k, n, codewords)`` with ``codewords``
    codewords of ``n = floor(budget / codewords) * bits_per_symbol`` coded bits (the fewest codewords
    with ``n <= MAX_CODEWORD_BITS``) and ``k = round(rate * n)`` within Sionna's 5G LDPC limits."""
    out = []
    for m in bits_per_symbol:
        total = channel_uses_budget * m
        c = max(1, -(-total // MAX_CODEWORD_BITS))
        n = (channel_uses_budget // c) * m
        ks = sorted({int(round(r * n)) for r in rates})
        for k in ks:
            if n >= 13 and 12 <= k <= 8448 and 0.2 <= k / n <= 0.95:
                out.append((m, k, n, c))
    return out


def _bler_model(waterfall: tuple[float, float], snr_db: float, channel: str) -> float:
    """BLER from a waterfall ``(SNR at 90 %, SNR at 10 %)``: logistic in dB over AWGN; for Rayleigh block
    fading (one fade per codeword, receiver CSI) its average over ``|h|^2 ~ Exp(1)``."""
    s90, s10 = waterfall
    if not math.isfinite(s10):
        return 1.0
    mu, tau = (s90 + s10) / 2, max((s10 - s90) / (2 * math.log(9.0)), 0.02)
    if channel == "awgn":
        return float(torch.sigmoid(torch.tensor(-(snr_db - mu) / tau, dtype=torch.float64)))
    u = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    eff = snr_db + 10 * torch.log10(-torch.log1p(-u))  # quantiles of SNR |h|^2 in dB
    return float(torch.sigmoid(-(eff - mu) / tau).mean())


_MEASURED_WATERFALLS: dict = {}


def code_waterfall(bits_per_symbol: int, k: int, n: int, **measure_kwargs) -> tuple[float, float]:
    """``(SNR at BLER 90 %, SNR at BLER 10 %)`` of the code from `DIGITAL_WATERFALL_DB`, else measured
    with `measure_waterfall` once per process."""
    key = (bits_per_symbol, k, n)
    if key in DIGITAL_WATERFALL_DB:
        return DIGITAL_WATERFALL_DB[key]
    if key not in _MEASURED_WATERFALLS:
        _MEASURED_WATERFALLS[key] = measure_waterfall(bits_per_symbol, k, n, **measure_kwargs)
    return _MEASURED_WATERFALLS[key]


def _spectrum(covariance: Any, n_values: int, shape: Sequence[int] | None = None) -> torch.Tensor:
    if covariance is None:  # DCT fallback: the assumed spectrum
        if shape is not None and math.prod(shape) != n_values:
            raise ValueError(f"shape: {tuple(shape)} does not hold n_values={n_values} values")
        return _DCT(shape if shape is not None else (n_values,)).prior
    lam = getattr(covariance, "eigenvalues", covariance)
    lam = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    if lam.numel() != n_values or not torch.isfinite(lam).all():
        raise ValueError(f"covariance: expected {n_values} finite eigenvalues, got {lam.numel()}")
    return torch.sort(lam.clamp_min(0.0), descending=True).values


def digital_candidates(snr_db: float, channel_uses_budget: int, n_values: int, *, covariance: Any = None,
                       channel: str = "awgn", max_bits_per_value: int = MAX_BITS_PER_COMPONENT,
                       margin_db: float = 0.0, rates: Iterable[float] = CODE_RATES,
                       bits_per_symbol: Iterable[int] = BITS_PER_SYMBOL,
                       shape: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every budget-sized scheme with its predicted BLER and expected distortion, best first (see
    `best_digital_config`). Each entry: ``config`` (`DigitalConfig`), ``bler``, ``quantised_mse`` and
    ``expected_mse`` (per value, in units of the covariance; the first entry is the best)."""
    snr = float(resolve_snr_db(float(snr_db), 1)[0])
    for nm, val, low in (("channel_uses_budget", channel_uses_budget, 0), ("n_values", n_values, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{nm}: expected an int >= {low}, got {val!r}")
    if isinstance(max_bits_per_value, bool) or not isinstance(max_bits_per_value, int) \
            or not 1 <= max_bits_per_value <= 16:
        raise ValueError(f"max_bits_per_value: expected an int in [1, 16], got {max_bits_per_value!r}")
    if channel == "rayleigh":
        channel = "rayleigh-block"
    if channel not in ("awgn", "rayleigh-block"):
        raise ValueError(f"channel: expected 'awgn' or 'rayleigh-block', got {channel!r}")
    if not isinstance(margin_db, (int, float)) or not math.isfinite(margin_db):
        raise ValueError(f"margin_db: expected a finite number, got {margin_db!r}")
    lam = _spectrum(covariance, n_values, shape)
    d0 = float(lam.mean())
    d = [gaussian_uniform_quantizer(b)[1] for b in range(max_bits_per_value + 1)]
    out = [{"config": DigitalConfig(0, 0.5, 2, 64, num_components=1, crc=None), "bler": 0.0,
            "quantised_mse": d0, "expected_mse": d0}]
    alloc_cache: dict[int, tuple[int, ...]] = {}
    for m, k, n, c in budget_codes(channel_uses_budget, rates, bits_per_symbol):
        total = c * k
        if total not in alloc_cache:
            alloc_cache[total] = allocate_bits(lam, total, max_bits_per_value)
        alloc = alloc_cache[total]
        if not alloc:
            continue
        dq = float(sum(lam[i] * d[b] for i, b in enumerate(alloc)) + lam[len(alloc):].sum()) / n_values
        p = _bler_model(code_waterfall(m, k, n), snr - margin_db, "awgn" if channel == "awgn" else "rayleigh")
        cfg = DigitalConfig(max(alloc), k / n, m, n, allocation=alloc, crc=None)
        out.append({"config": cfg, "bler": p, "quantised_mse": dq, "expected_mse": (1 - p) * dq + p * d0})
    out.sort(key=lambda e: e["expected_mse"])
    return out


def best_digital_config(snr_db: float, channel_uses_budget: int, n_values: int, *, covariance: Any = None,
                        channel: str = "awgn", max_bits_per_value: int = MAX_BITS_PER_COMPONENT,
                        margin_db: float = 0.0, rates: Iterable[float] = CODE_RATES,
                        bits_per_symbol: Iterable[int] = BITS_PER_SYMBOL,
                        shape: Sequence[int] | None = None) -> DigitalConfig:
    """The separate source-channel scheme with the least expected distortion within ``channel_uses_budget``
    complex uses per sample, designed for ``snr_db`` (minus ``margin_db``).

    Candidates: every QAM order and code rate in ``rates`` with the code sized to the budget
    (`budget_codes`; no CRC, the LDPC syndrome detects failures). For each, all ``c k`` information
    bits go to transform coefficients by greedy bit allocation on the spectrum (`allocate_bits`:
    ``covariance``'s eigenvalues for the KLT; when ``covariance`` is None, the DCT fallback's assumed
    spectrum for a sample of ``shape``, default 1-D).
    Expected distortion ``(1 - p) D_q + p D_0`` with ``D_q`` the Gaussian-quantiser distortion,
    ``D_0`` the variance (everything at its mean) and ``p`` the BLER predicted from the code's
    measured AWGN waterfall (`code_waterfall`; for ``channel="rayleigh-block"``, averaged over the
    fade). Sending nothing (``bits_per_value = 0``) is a candidate too, chosen when no code fits.
    Pass the same ``covariance`` to `DigitalLink`. Designed for one SNR, the scheme fails abruptly
    below it: the digital "cliff".
    """
    return digital_candidates(snr_db, channel_uses_budget, n_values, covariance=covariance, channel=channel,
                              max_bits_per_value=max_bits_per_value, margin_db=margin_db, rates=rates,
                              bits_per_symbol=bits_per_symbol, shape=shape)[0]["config"]


@torch.no_grad()
def measure_bler(config: DigitalConfig, snr_db: float, channel: Channel | None = None, num_codewords: int = 200,
                 generator: torch.Generator | None = None, num_iter: int = 20) -> float:
    """Block error rate of ``config``'s code and QAM at ``snr_db`` over ``channel`` (default AWGN; its
    ``csi`` sets the receiver), with random information bits. A block fails when its checks fail or
    any information bit is wrong (an undetected error counts too)."""
    if isinstance(num_codewords, bool) or not isinstance(num_codewords, int) or num_codewords < 1:
        raise ValueError(f"num_codewords: expected an int >= 1, got {num_codewords!r}")
    channel = AWGN() if channel is None else channel
    g = default_generator(generator)
    coder = _Coder.get(config, torch.device("cpu"), num_iter)
    info = torch.randint(0, 2, (num_codewords, config.payload_bits), generator=g, device=g.device).float()
    x = coder.encode(info).reshape(num_codewords, -1)
    state = channel.sample_state(num_codewords, x.shape[1], snr_db, g, x.dtype, x.device)
    y = channel.apply(x, state, g)
    g_eq, a, v = channel.equalizer(state, x)
    a = torch.broadcast_to(a, x.shape)
    v = torch.broadcast_to(v, x.shape)
    z = y * g_eq
    a = torch.where(a.abs() < 1e-6, torch.full_like(a, 1e-6), a)
    bits, ok = coder.decode((z / a).to(torch.complex64), (v / a.abs().square()).clamp(1e-10, 1e10).float(),
                            (num_codewords, 1, config.codeword_bits))
    fail = ~ok.reshape(-1) | (bits.reshape(num_codewords, -1) != info).any(dim=1)
    return float(fail.float().mean())


def measure_waterfall(bits_per_symbol: int, k: int, n: int, num_codewords: int = 200, resolution_db: float = 0.1,
                      seed: int = 0, num_iter: int = 20) -> tuple[float, float]:
    """``(SNR at BLER 90 %, SNR at BLER 10 %)`` in dB over AWGN of the 5G LDPC code ``(k, n)`` without CRC
    and ``2**bits_per_symbol``-QAM, by bisection on a ``resolution_db`` grid (common random numbers:
    every SNR reuses ``seed``). ``inf`` when BLER 10 % is not reached by 40 dB."""
    cfg = DigitalConfig(1, k / n, bits_per_symbol, n, num_components=1, crc=None)

    @functools.lru_cache(maxsize=None)
    def bler(s):
        return measure_bler(cfg, s, None, num_codewords, torch.Generator().manual_seed(seed), num_iter)

    def crossing(target):
        # no scheme works below the Shannon limit of its spectral efficiency; widen upwards until it does
        lo = max(-20.0, round(shannon_limit_snr_db(k * bits_per_symbol / n) / resolution_db) * resolution_db
                 - resolution_db)
        hi = min(40.0, lo + 4.0)
        while bler(hi) > target and hi < 40.0:
            lo, hi = hi, min(40.0, hi + 4.0)
        if bler(hi) > target:
            return float("inf")
        while hi - lo > resolution_db + 1e-9:
            mid = round((lo + hi) / 2 / resolution_db) * resolution_db
            if mid in (lo, hi):
                break
            if bler(mid) <= target:
                hi = mid
            else:
                lo = mid
        return round(hi, 3)

    return crossing(0.9), crossing(0.1)


def measure_waterfall_table(budgets: Iterable[int] = (32,), **kwargs) -> dict[tuple[int, int, int], tuple[float, float]]:
    """`measure_waterfall` for every code `budget_codes` makes for each channel-use budget. The shipped
    `DIGITAL_WATERFALL_DB` is ``measure_waterfall_table((16, 32))`` (defaults: 200 codewords, 0.1 dB,
    seed 0; about 14 CPU-minutes on a busy core)::

        python -c "from splitldm.link.digital import measure_waterfall_table as t; print(t((16, 32)))"
    """
    out = {}
    for budget in budgets:
        for m, k, n, _ in budget_codes(int(budget)):
            if (m, k, n) not in out:
                out[(m, k, n)] = measure_waterfall(m, k, n, **kwargs)
    return out
