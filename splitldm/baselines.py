"""Classical baselines for sending a latent over a channel, as `LinkStage`s placed before a channel stage.

* `AnalogLink`: uncoded analog transmission. Each sample is standardised (its mean and standard
  deviation cross as 2 float32 of side information), paired into complex symbols at unit average
  power (``rho = 1/2`` complex use per real value) and estimated with linear MMSE at the receiver.
  Over AWGN its MSE per real value is ``var / (1 + SNR)``, the Gaussian OPTA at ``rho = 1/2``.
* `DigitalLink`: separate source and channel coding. Uniform scalar quantisation to ``b`` bits per
  value over each sample's ``[min, max]`` (min, max and mean cross as 3 float32 of side information),
  CRC16 per codeword, 5G NR LDPC (Sionna ``LDPC5GEncoder``/``LDPC5GDecoder``, ``codeword_bits`` coded
  bits per codeword, codewords never span samples), Gray QAM (Sionna ``Mapper``), soft APP demapping
  (Sionna ``Demapper`` -> LLRs) and belief-propagation decoding. A codeword whose CRC fails is
  erased: every value with a bit in it is replaced by the sample mean (the MMSE estimate given only
  the side information; better than the quantiser midpoint, which is not the mean of a skewed sample).
* `best_digital_config`: the (bits per value, code rate, QAM order) that sends the most bits per value
  within a channel-use budget among the modulation-and-coding schemes whose measured BLER is below
  10 % at the SNR (`AWGN_BLER10_SNR_DB`, measured with `measure_mcs_thresholds`).

The side information is counted in the payload's bits (it crosses digitally, assumed error-free as on
a robust control channel); the symbols are counted as channel uses.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .channels import AWGN, Channel, RayleighBlockFading, complex_to_real, real_to_complex, resolve_snr_db
from .link import LinkStage, default_generator
from .payload import Payload

__all__ = [
    "AnalogLink",
    "DigitalLink",
    "DigitalConfig",
    "MCS_TABLE",
    "AWGN_BLER10_SNR_DB",
    "best_digital_config",
    "measure_bler",
    "measure_mcs_thresholds",
]

CRC_BITS = 16  # 5G CRC16 (the transport-block CRC for small blocks) on every codeword
DEFAULT_CODEWORD_BITS = 960  # divisible by 2, 4, 6 and 8 bits per symbol; small enough for fast CPU runs
CODE_RATES = (1 / 3, 1 / 2, 2 / 3, 3 / 4, 5 / 6)
BITS_PER_SYMBOL = (2, 4, 6, 8)  # QPSK, 16-, 64-, 256-QAM
#: Every (code rate, bits per symbol) pair `best_digital_config` chooses from.
MCS_TABLE = tuple((r, m) for m in BITS_PER_SYMBOL for r in CODE_RATES)

#: SNR (dB, AWGN) at which the block error rate falls below 10 % for each (code rate, bits per symbol)
#: with 960-bit codewords, CRC16, APP demapping and 20 BP iterations. Measured by
#: ``measure_mcs_thresholds(num_codewords=100, resolution_db=0.1, seed=0)`` (AWGN; ~13 CPU-minutes).
AWGN_BLER10_SNR_DB: dict[tuple[float, int], float] = {
    (1 / 3, 2): -0.7, (1 / 2, 2): 1.4, (2 / 3, 2): 3.5, (3 / 4, 2): 4.5, (5 / 6, 2): 5.6,
    (1 / 3, 4): 3.9, (1 / 2, 4): 6.7, (2 / 3, 4): 9.4, (3 / 4, 4): 10.5, (5 / 6, 4): 11.8,
    (1 / 3, 6): 7.2, (1 / 2, 6): 11.0, (2 / 3, 6): 14.2, (3 / 4, 6): 15.9, (5 / 6, 6): 17.7,
    (1 / 3, 8): 10.4, (1 / 2, 8): 15.0, (2 / 3, 8): 19.0, (3 / 4, 8): 20.8, (5 / 6, 8): 22.8,
}


# ------------------------------------------------------------------------------------------ analog
class AnalogLink(LinkStage):
    """Uncoded analog transmission of the primary tensors with an LMMSE receiver.

    ``send``: each primary real tensor ``(B, *S)`` becomes ``(B, ceil(n/2))`` complex64 symbols of unit
    average power (``n = prod(S)``; an odd ``n`` is padded with one zero); ``<name>.stats`` ``(B, 2)``
    float32 (mean, std) crosses as side information. ``receive``: with the channel's published model
    ``z_hat = a z + CN(0, v)`` (``context["eq_gain"]``/``["eq_noise_var"]``, see `Channel.receive`), the
    LMMSE estimate ``conj(a) z_hat / (|a|^2 + v)`` per symbol, de-standardised.
    """

    def send(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        info = {}
        for name in _primary_real(payload, "AnalogLink"):
            x = tensors[name]
            flat = x.reshape(x.shape[0], -1).float()
            mean = flat.mean(dim=1, keepdim=True)
            std = flat.std(dim=1, unbiased=False, keepdim=True).clamp_min(1e-12)
            u = (flat - mean) / std  # mean 0, mean square 1 per sample
            pad = flat.shape[1] % 2
            if pad:
                u = torch.cat([u, u.new_zeros(u.shape[0], 1)], dim=1)
            z = real_to_complex(u) / math.sqrt(2.0)  # E|z|^2 = 1 per symbol
            tensors[name] = z.to(torch.complex64)
            tensors[f"{name}.stats"] = torch.cat([mean, std], dim=1).detach()
            info[name] = {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch."), "pad": pad}
        meta["analog_lmmse"] = {**meta.get("analog_lmmse", {}), **info}
        return payload.replace(tensors=tensors, meta=meta)

    def receive(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        info = meta.pop("analog_lmmse", {})
        for name, spec in info.items():
            z_hat = tensors[name]
            a, v = _equalized_model(context, name, z_hat)
            z_est = a.conj() * z_hat / (a.abs().square() + v)
            u = complex_to_real(z_est) * math.sqrt(2.0)
            if spec["pad"]:
                u = u[:, :-1]
            stats = tensors.pop(f"{name}.stats")
            x = stats[:, :1] + stats[:, 1:2] * u
            tensors[name] = x.reshape(x.shape[0], *spec["shape"]).to(getattr(torch, spec["dtype"]))
        return payload.replace(tensors=tensors, meta=meta)

    @staticmethod
    def lmmse_mse(variance: torch.Tensor | float, snr_db: torch.Tensor | float) -> torch.Tensor:
        """Closed-form MSE per real value over AWGN: ``variance / (1 + SNR)`` (``rho = 1/2``)."""
        snr = 10 ** (torch.as_tensor(snr_db, dtype=torch.float64) / 10)
        return torch.as_tensor(variance, dtype=torch.float64) / (1 + snr)


# ----------------------------------------------------------------------------------------- digital
@dataclass(frozen=True)
class DigitalConfig:
    """A digital scheme: ``bits_per_value`` (0..16; 0 sends nothing and the receiver uses the mean),
    LDPC ``code_rate`` (info bits incl. CRC / coded bits), QAM ``bits_per_symbol`` (2, 4, 6, 8),
    ``codeword_bits`` coded bits per LDPC codeword."""

    bits_per_value: int
    code_rate: float = 0.5
    bits_per_symbol: int = 4
    codeword_bits: int = DEFAULT_CODEWORD_BITS

    def __post_init__(self):
        b = self.bits_per_value
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 16:
            raise ValueError(f"bits_per_value: expected an int in [0, 16], got {b!r}")
        if not isinstance(self.code_rate, (int, float)) or not 0 < self.code_rate < 1:
            raise ValueError(f"code_rate: expected a number in (0, 1), got {self.code_rate!r}")
        if self.bits_per_symbol not in BITS_PER_SYMBOL:
            raise ValueError(f"bits_per_symbol: expected one of {BITS_PER_SYMBOL}, got {self.bits_per_symbol!r}")
        n = self.codeword_bits
        if isinstance(n, bool) or not isinstance(n, int) or n % self.bits_per_symbol or not 64 <= n <= 8448:
            raise ValueError(f"codeword_bits: expected an int in [64, 8448] divisible by bits_per_symbol, got {n!r}")
        if not 12 + CRC_BITS < self.info_bits <= 8448:
            raise ValueError(f"code_rate: {self.code_rate} x {n} leaves {self.info_bits} information bits per codeword")

    @property
    def info_bits(self) -> int:
        """LDPC information bits per codeword ``k`` (including the CRC)."""
        return int(round(self.code_rate * self.codeword_bits))

    @property
    def payload_bits(self) -> int:
        """Source bits per codeword (``k`` minus the CRC)."""
        return self.info_bits - CRC_BITS

    def num_codewords(self, n_values: int) -> int:
        """Codewords per sample for ``n_values`` real values."""
        return -(-n_values * self.bits_per_value // self.payload_bits)

    def channel_uses(self, n_values: int) -> int:
        """Complex channel uses per sample (exact): codewords x coded bits / bits per symbol."""
        return self.num_codewords(n_values) * self.codeword_bits // self.bits_per_symbol

    @property
    def spectral_efficiency(self) -> float:
        """Source bits per channel use (after CRC overhead)."""
        return self.payload_bits * self.bits_per_symbol / self.codeword_bits


class _Coder:
    """Sionna CRC + 5G LDPC + QAM blocks for one `DigitalConfig` on one device (built once, cached)."""

    _cache: dict = {}

    def __init__(self, cfg: DigitalConfig, device: str, num_iter: int):
        # Sionna imports take seconds: import on first use only.
        from sionna.phy.fec.crc import CRCDecoder, CRCEncoder
        from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
        from sionna.phy.mapping import Demapper, Mapper

        self.crc_enc = CRCEncoder("CRC16", precision="single", device=device)
        self.crc_dec = CRCDecoder(self.crc_enc, precision="single", device=device)
        self.enc = LDPC5GEncoder(cfg.info_bits, cfg.codeword_bits, num_bits_per_symbol=cfg.bits_per_symbol,
                                 precision="single", device=device)
        self.dec = LDPC5GDecoder(self.enc, hard_out=True, return_infobits=True, num_iter=num_iter,
                                 precision="single", device=device)
        self.mapper = Mapper("qam", cfg.bits_per_symbol, precision="single", device=device)
        self.demapper = Demapper("app", "qam", cfg.bits_per_symbol, precision="single", device=device)

    @classmethod
    def get(cls, cfg: DigitalConfig, device: torch.device, num_iter: int) -> "_Coder":
        key = (cfg.code_rate, cfg.bits_per_symbol, cfg.codeword_bits, str(device), num_iter)
        if key not in cls._cache:
            cls._cache[key] = cls(cfg, str(device), num_iter)
        return cls._cache[key]

    def encode(self, info: torch.Tensor) -> torch.Tensor:
        """``(..., payload_bits)`` float {0,1} -> ``(..., codeword_bits / m)`` complex64 symbols."""
        return self.mapper(self.enc(self.crc_enc(info)))

    def decode(self, y: torch.Tensor, no: torch.Tensor, cw_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Symbols ``(B, L)`` and noise variance ``(B, L)`` -> (info bits ``(*cw_shape[:-1], payload_bits)``,
        CRC ok ``(*cw_shape[:-1])`` bool)."""
        llr = self.demapper(y, no).reshape(*cw_shape)
        bits, ok = self.crc_dec(self.dec(llr))
        return bits, ok[..., 0]


class DigitalLink(LinkStage):
    """Quantise -> CRC16 -> 5G LDPC -> QAM on send; soft demapping -> BP decoding -> CRC -> dequantise on receive.

    Args:
        bits_per_value, code_rate, bits_per_symbol, codeword_bits: see `DigitalConfig` (or pass
            ``config=``).
        num_iter: belief-propagation iterations.

    Send turns each primary real tensor ``(B, *S)`` into ``(B, channel_uses)`` complex64 symbols
    (``DigitalConfig.channel_uses(prod(S))`` per sample) plus ``<name>.quant`` ``(B, 3)`` float32
    (min, max, mean). Receive uses the channel's published model ``z_hat = a z + CN(0, v)`` for the
    LLRs and writes ``context["digital"]`` = ``{"codewords", "codeword_errors", "values_erased"}``.
    Not differentiable (quantisation).
    """

    def __init__(self, bits_per_value: int = 4, code_rate: float = 0.5, bits_per_symbol: int = 4,
                 codeword_bits: int = DEFAULT_CODEWORD_BITS, num_iter: int = 20, config: DigitalConfig | None = None):
        super().__init__()
        if config is None:
            config = DigitalConfig(bits_per_value, code_rate, bits_per_symbol, codeword_bits)
        if not isinstance(config, DigitalConfig):
            raise TypeError(f"config: expected a DigitalConfig, got {type(config).__name__}")
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
            raise ValueError(f"num_iter: expected an int >= 1, got {num_iter!r}")
        self.config = config
        self.num_iter = num_iter

    def note(self) -> dict[str, Any]:
        c = self.config
        return {"bits_per_value": c.bits_per_value, "code_rate": c.code_rate, "bits_per_symbol": c.bits_per_symbol,
                "codeword_bits": c.codeword_bits}

    def quantize(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, n)`` float -> (integer levels ``(B, n)`` int64, ``(B, 3)`` float32 min/max/mean)."""
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

    def quantized(self, x: torch.Tensor) -> torch.Tensor:
        """What an error-free link delivers for ``x`` ``(B, *S)``: the dequantised values, same shape."""
        flat = x.reshape(x.shape[0], -1).float()
        q, stats = self.quantize(flat)
        return self.dequantize(q, stats).reshape(x.shape).to(x.dtype)

    @torch.no_grad()
    def send(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        cfg = self.config
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        info = {}
        for name in _primary_real(payload, "DigitalLink"):
            x = tensors[name]
            flat = x.reshape(x.shape[0], -1).float()
            batch, n = flat.shape
            q, stats = self.quantize(flat)
            c = cfg.num_codewords(n)
            if c == 0:
                symbols = torch.zeros(batch, 0, dtype=torch.complex64, device=x.device)
            else:
                shifts = torch.arange(cfg.bits_per_value - 1, -1, -1, device=x.device)
                bits = ((q[..., None] >> shifts) & 1).reshape(batch, -1).float()  # MSB first
                bits = torch.nn.functional.pad(bits, (0, c * cfg.payload_bits - bits.shape[1]))
                coder = _Coder.get(cfg, x.device, self.num_iter)
                symbols = coder.encode(bits.reshape(batch, c, cfg.payload_bits)).reshape(batch, -1)
            tensors[name] = symbols.to(torch.complex64)
            tensors[f"{name}.quant"] = stats
            info[name] = {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch."), "n_values": n,
                          "codewords": c}
        meta["digital"] = {**meta.get("digital", {}), **info}
        return payload.replace(tensors=tensors, meta=meta)

    @torch.no_grad()
    def receive(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        cfg = self.config
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        spec_all = meta.pop("digital", {})
        report = {"codewords": 0, "codeword_errors": 0, "values_erased": 0}
        for name, spec in spec_all.items():
            y = tensors[name]
            stats = tensors.pop(f"{name}.quant")
            batch, n, c = y.shape[0], spec["n_values"], spec["codewords"]
            if c == 0:
                values = stats[:, 2:3].expand(batch, n).clone()
            else:
                a, v = _equalized_model(context, name, y)
                a = torch.where(a.abs() < 1e-6, torch.full_like(a, 1e-6), a)  # a deep fade: LLRs ~ 0
                y_unbiased = y / a
                no = (v / a.abs().square()).clamp(1e-10, 1e10).to(torch.float32)
                coder = _Coder.get(cfg, y.device, self.num_iter)
                bits, ok = coder.decode(y_unbiased.to(torch.complex64), no, (batch, c, cfg.codeword_bits))
                bits = bits.reshape(batch, -1)[:, : n * cfg.bits_per_value].to(torch.int64)
                weights = 1 << torch.arange(cfg.bits_per_value - 1, -1, -1, device=y.device)
                q = (bits.reshape(batch, n, cfg.bits_per_value) * weights).sum(-1)
                values = self.dequantize(q, stats)
                bit_ok = ok[:, :, None].expand(batch, c, cfg.payload_bits).reshape(batch, -1)[:, : n * cfg.bits_per_value]
                value_ok = bit_ok.reshape(batch, n, cfg.bits_per_value).all(-1)
                values = torch.where(value_ok, values, stats[:, 2:3].expand_as(values))
                report["codewords"] += batch * c
                report["codeword_errors"] += int((~ok).sum())
                report["values_erased"] += int((~value_ok).sum())
            tensors[name] = values.reshape(batch, *spec["shape"]).to(getattr(torch, spec["dtype"]))
        context["digital"] = report
        return payload.replace(tensors=tensors, meta=meta)


# --------------------------------------------------------------------------------- configuration
def best_digital_config(snr_db: float, channel_uses_budget: int, n_values: int, *,
                        thresholds: dict[tuple[float, int], float] | None = None, channel: str = "awgn",
                        max_bits_per_value: int = 12, margin_db: float = 0.0,
                        codeword_bits: int = DEFAULT_CODEWORD_BITS) -> DigitalConfig:
    """The digital scheme with the most bits per value that fits ``channel_uses_budget`` uses per sample.

    Rule: among the (code rate, QAM order) pairs whose BLER-10 % threshold (``thresholds``, default
    `AWGN_BLER10_SNR_DB`) plus ``margin_db`` is at most ``snr_db``, take the one allowing the largest
    ``bits_per_value <= max_bits_per_value`` with ``DigitalConfig.channel_uses(n_values) <= budget``;
    ties go to the most robust (lowest threshold), then to fewer channel uses. If nothing fits,
    ``bits_per_value = 0`` (nothing sent; the receiver outputs the sample mean).

    ``channel="rayleigh-block"`` (one fade per sample, receiver CSI) shifts every AWGN threshold by
    ``-10 log10(-ln 0.9) = +9.77 dB``: with the AWGN BLER curve taken as a step at ``T``, the outage
    probability ``P(|h|^2 SNR < T) = 1 - exp(-T/SNR)`` is 10 % there. For other channels measure a
    table with `measure_mcs_thresholds` and pass it as ``thresholds``.
    Designed for one SNR, the chosen scheme fails abruptly below it: the digital "cliff".
    """
    snr = float(resolve_snr_db(float(snr_db), 1)[0])
    for nm, val in (("channel_uses_budget", channel_uses_budget), ("n_values", n_values)):
        if isinstance(val, bool) or not isinstance(val, int) or val < (0 if nm == "channel_uses_budget" else 1):
            raise ValueError(f"{nm}: expected a non-negative int ({nm} >= 1 for n_values), got {val!r}")
    if isinstance(max_bits_per_value, bool) or not isinstance(max_bits_per_value, int) or not 1 <= max_bits_per_value <= 16:
        raise ValueError(f"max_bits_per_value: expected an int in [1, 16], got {max_bits_per_value!r}")
    if channel not in ("awgn", "rayleigh-block"):
        raise ValueError(f"channel: expected 'awgn' or 'rayleigh-block' (or pass thresholds), got {channel!r}")
    table = dict(AWGN_BLER10_SNR_DB if thresholds is None else thresholds)
    if not table:
        raise ValueError("thresholds: empty table (run measure_mcs_thresholds)")
    shift = -10 * math.log10(-math.log(0.9)) if channel == "rayleigh-block" else 0.0
    best, best_key = None, None
    for (rate, m), thr in table.items():
        if thr + shift + margin_db > snr:
            continue
        for b in range(max_bits_per_value, 0, -1):
            cfg = DigitalConfig(b, rate, m, codeword_bits)
            uses = cfg.channel_uses(n_values)
            if uses <= channel_uses_budget:
                key = (b, -thr, -uses)
                if best_key is None or key > best_key:
                    best, best_key = cfg, key
                break
    if best is None:
        rate, m = min(table, key=table.get)
        best = DigitalConfig(0, rate, m, codeword_bits)
    return best


@torch.no_grad()
def measure_bler(config: DigitalConfig, snr_db: float, channel: Channel | None = None, num_codewords: int = 200,
                 generator: torch.Generator | None = None, num_iter: int = 20) -> float:
    """Block error rate (CRC failures / codewords) of ``config``'s code and QAM at ``snr_db`` over
    ``channel`` (default AWGN; its ``csi`` sets the receiver), with random information bits."""
    channel = AWGN() if channel is None else channel
    g = default_generator(generator)
    cfg = DigitalConfig(1, config.code_rate, config.bits_per_symbol, config.codeword_bits)
    coder = _Coder.get(cfg, torch.device("cpu"), num_iter)
    info = torch.randint(0, 2, (num_codewords, cfg.payload_bits), generator=g, device=g.device).float()
    x = coder.encode(info).reshape(num_codewords, -1)
    state = channel.sample_state(num_codewords, x.shape[1], snr_db, g, x.dtype, x.device)
    y = channel.apply(x, state, g)
    g_eq, a, v = channel.equalizer(state, x)
    a = torch.broadcast_to(a, x.shape)
    v = torch.broadcast_to(v, x.shape)
    z = y * g_eq
    a = torch.where(a.abs() < 1e-6, torch.full_like(a, 1e-6), a)
    _, ok = coder.decode((z / a).to(torch.complex64), (v / a.abs().square()).clamp(1e-10, 1e10).float(),
                         (num_codewords, 1, cfg.codeword_bits))
    return float((~ok).float().mean())


def measure_mcs_thresholds(channel: Channel | None = None, mcs: Iterable[tuple[float, int]] = MCS_TABLE,
                           target_bler: float = 0.1, num_codewords: int = 400, resolution_db: float = 0.1,
                           seed: int = 0, codeword_bits: int = DEFAULT_CODEWORD_BITS) -> dict[tuple[float, int], float]:
    """Lowest SNR (dB, on a ``resolution_db`` grid, by bisection) with BLER <= ``target_bler`` per MCS.

    Every SNR point reuses the same seed (common random numbers), so BLER is monotone in practice.
    """
    out = {}
    for rate, m in mcs:
        cfg = DigitalConfig(1, rate, m, codeword_bits)

        @functools.lru_cache(maxsize=None)
        def bler(s):
            return measure_bler(cfg, s, channel, num_codewords, torch.Generator().manual_seed(seed))

        # bracket: no scheme works below the Shannon limit of its spectral efficiency (AWGN; fading is
        # worse), and the limit + 5 dB is widened until the BLER target is met (or 40 dB is reached)
        lo = max(-20.0, round(10 * math.log10(2 ** cfg.spectral_efficiency - 1) / resolution_db) * resolution_db - resolution_db)
        hi = min(40.0, lo + 5.0)
        while bler(hi) > target_bler and hi < 40.0:
            lo, hi = hi, min(40.0, hi + 5.0)
        if bler(hi) > target_bler:
            out[(rate, m)] = float("inf")
            continue
        while hi - lo > resolution_db:
            mid = round((lo + hi) / 2 / resolution_db) * resolution_db
            if mid in (lo, hi):
                break
            if bler(mid) <= target_bler:
                hi = mid
            else:
                lo = mid
        out[(rate, m)] = round(hi, 3)
    return out


# ------------------------------------------------------------------------------------------ helpers
def _primary_real(payload: Payload, who: str) -> list[str]:
    if not isinstance(payload, Payload):
        raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
    names = [k for k in payload.primary if not payload.tensors[k].is_complex()]
    if not names:
        raise ValueError(f"payload: {who} needs real primary tensors, got primary={list(payload.primary)}")
    for k in names:
        t = payload.tensors[k]
        if not t.is_floating_point() or t.dim() < 2 or t[0].numel() == 0:
            raise ValueError(f"payload: primary tensor {k!r} must be float (B, ...) with values, got {t.dtype} {tuple(t.shape)}")
    return names


def _equalized_model(context: dict[str, Any], name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The receiver's model ``z_hat = a z + CN(0, v)`` for tensor ``name``, broadcast to ``like``."""
    gains, nvars = context.get("eq_gain", {}), context.get("eq_noise_var", {})
    if name in gains and name in nvars:
        a, v = gains[name], nvars[name]
    elif "n0" in context:  # a channel that published only its noise power: no fading known
        a = torch.ones((), dtype=like.dtype, device=like.device)
        v = context["n0"].to(like.device).reshape(-1, *([1] * (like.dim() - 1)))
    else:
        raise ValueError(f"context: no channel model for {name!r}; put a channel stage after this stage in the Link")
    return torch.broadcast_to(a.to(like.device), like.shape).to(like.dtype), \
        torch.broadcast_to(v.to(like.device), like.shape).to(like.real.dtype)
