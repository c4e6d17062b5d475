"""The learned separation baseline: a learned entropy-coded compressor followed by a channel code.

The best practical *separate* scheme for a latent, against which a joint source-channel code (the seed
codec) is judged at the same channel-use budget ``k`` (complex uses per latent):

* source code: `splitldm.link.entropy_model.EntropyModel` (factorized prior, ``L`` rate levels, a real
  range-coded bitstream). Per latent the encoder sends the level with the least distortion whose
  bitstream fits the bits the channel code carries, behind a header of ``ceil(log2(L + 1))`` bits (the
  level, 0 = nothing sent); with no level fitting, nothing is sent and the receiver uses the mean.
  `operational_rd` measures, per latent and level, the exact bits (header + bitstream) and the MSE.
* (a) an ideal capacity-achieving channel code (`ideal_separation`): ``floor(k C)`` bits per latent with
  ``C`` from `splitldm.analysis.limits` (AWGN ``log2(1 + SNR)``; Rayleigh: the ergodic capacity, and,
  for one fade per latent with CSI at both ends as the seed codec has, ``floor(k log2(1 + |h|^2 SNR))``
  bits for each drawn fade).
* (b) the 5G LDPC + QAM chain of `splitldm.link.digital` (its ``_Coder``: Sionna 5G LDPC, Gray QAM, APP
  demapping, syndrome check) with the codes sized to the budget (`budget_codes`) and the operating
  point chosen per SNR as `best_digital_config` does: least expected distortion ``(1 - P) D(c k) + P D_0``
  with the block error rate ``P`` from the code's measured AWGN waterfall (averaged over the fade for
  Rayleigh block fading) and ``D(c k)`` the operational distortion of the compressor within the
  code's ``c k`` information bits, measured on design latents (`best_learned_digital_config`).
  `LearnedSeparationLink` is that scheme as a `LinkStage` placed before a channel stage; a codeword
  whose LDPC syndrome check fails erases the latent (the receiver uses the mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from splitldm.analysis.limits import awgn_capacity, capacity
from splitldm.link.channels import complex_normal, equalized_model
from splitldm.link.digital import DigitalConfig, _bler_model, _Coder, budget_codes, code_waterfall
from splitldm.link.entropy_model import EntropyModel, bit_length
from splitldm.link.payload import Payload
from splitldm.link.stack import LinkStage

__all__ = ["OperationalRD", "operational_rd", "header_bits", "ideal_separation", "best_learned_digital_config",
           "LearnedSeparationLink", "EncodedLevels", "encode_levels"]

_META_KEY = "learned_separation"


def header_bits(num_levels: int) -> int:
    """Bits of the level header: ``ceil(log2(L + 1))`` (levels 1..L, 0 = nothing sent)."""
    return max(1, math.ceil(math.log2(num_levels + 1)))


@dataclass
class OperationalRD:
    """Measured rate-distortion of an `EntropyModel` on ``N`` latents.

    Attributes:
        bits: (N, L) int64, header + bitstream bits of each latent at each level.
        mse: (N, L + 1) float64, MSE per real value; column 0: nothing sent (the mean), column
            ``l + 1``: level ``l`` decoded.
        est_bits: (N, L) float64 or None, header + the model's rate estimate ``-sum log2 P`` (what an
            ideal entropy coder would spend, without the range coder's flush).
    """

    bits: torch.Tensor
    mse: torch.Tensor
    est_bits: torch.Tensor | None = None

    def best_fit(self, budget_bits) -> tuple[torch.Tensor, torch.Tensor]:
        """Per latent, the choice with the least MSE within ``budget_bits`` (a number or (N,)):
        (column (N,) long, 0 = nothing sent; mse (N,) float64)."""
        budget = torch.as_tensor(budget_bits, dtype=torch.float64).reshape(-1, 1).expand(self.bits.shape[0], 1)
        fits = torch.cat([torch.ones_like(budget, dtype=torch.bool), self.bits.double() <= budget], dim=1)
        mse = torch.where(fits, self.mse, torch.full_like(self.mse, math.inf))
        best = mse.argmin(dim=1)
        return best, mse.gather(1, best[:, None])[:, 0]

    def mean_mse(self, budget_bits) -> float:
        """Mean over latents of `best_fit`'s MSE."""
        return float(self.best_fit(budget_bits)[1].mean())

    def subset(self, index) -> "OperationalRD":
        return OperationalRD(self.bits[index], self.mse[index],
                             None if self.est_bits is None else self.est_bits[index])

    def with_estimated_bits(self) -> "OperationalRD":
        """The same table with `est_bits` as the bits (an ideal entropy coder)."""
        if self.est_bits is None:
            raise ValueError("est_bits: this table has no rate estimates")
        return OperationalRD(self.est_bits, self.mse)


def _mean_latent(model: EntropyModel, like: torch.Tensor) -> torch.Tensor:
    return model.norm_mean.to(like)[None, :, None, None].expand_as(like)


@dataclass
class EncodedLevels:
    """Every level of an `EntropyModel` really encoded, for ``N`` latents (`encode_levels`), so that
    `operational_rd` and `LearnedSeparationLink` (one per SNR and fold in a benchmark) share one encoding.

    Attributes:
        latents: (N, C, h, w) float32, what was encoded (a stage checks it is sent these).
        data: ``data[l][i]``: bitstream (bytes) of latent ``i`` at level ``l``.
        bits: (N, L) int64, header + bitstream bits.
        x_hat: (L, N, C, h, w) float32, the decoded latents.
        est_bits: (N, L) float64, header + the rate estimate.
    """

    latents: torch.Tensor
    data: list
    bits: torch.Tensor
    x_hat: torch.Tensor
    est_bits: torch.Tensor

    def subset(self, index: slice) -> "EncodedLevels":
        """The latents ``index`` (a slice) of this encoding."""
        if not isinstance(index, slice):
            raise TypeError(f"index: expected a slice, got {type(index).__name__}")
        return EncodedLevels(self.latents[index], [d[index] for d in self.data], self.bits[index],
                             self.x_hat[:, index], self.est_bits[index])

    def check(self, x: torch.Tensor) -> None:
        """ValueError unless ``x`` (N, C, h, w) equals the encoded latents."""
        if tuple(x.shape) != tuple(self.latents.shape) or not torch.equal(x.float(), self.latents):
            raise ValueError(f"encoded: made for other latents (shape {tuple(self.latents.shape)}); "
                             f"got {tuple(x.shape)} that differ")


@torch.no_grad()
def encode_levels(model: EntropyModel, latents: torch.Tensor) -> EncodedLevels:
    """`EncodedLevels` of ``latents`` (N, C, h, w) at every level of ``model`` (range-coded, exact)."""
    if not isinstance(model, EntropyModel):
        raise TypeError(f"model: expected an EntropyModel, got {type(model).__name__}")
    model._check_x(latents)
    x = latents.float()
    hb = header_bits(model.num_levels)
    data, bits, x_hat, est = [], [], [], []
    for lv in range(model.num_levels):
        d, q, e = model.compress(x, lv)
        data.append(list(d))
        bits.append(torch.tensor([hb + bit_length(b) for b in d], dtype=torch.int64))
        x_hat.append(model.synthesise(q, lv))
        est.append((hb + e).double())
    return EncodedLevels(x.clone(), data, torch.stack(bits, 1), torch.stack(x_hat), torch.stack(est, 1))


@torch.no_grad()
def operational_rd(model: EntropyModel, latents: torch.Tensor, encoded: EncodedLevels | None = None) -> OperationalRD:
    """`OperationalRD` of ``model`` on ``latents`` (N, C, h, w): every level really encoded (or taken
    from ``encoded``, `encode_levels` of the same latents)."""
    model._check_x(latents)
    x = latents.float()
    if encoded is None:
        encoded = encode_levels(model, x)
    else:
        encoded.check(x)
    mse = [(_mean_latent(model, x) - x).pow(2).flatten(1).mean(1).double()]
    mse += [(x_hat - x).pow(2).flatten(1).mean(1).double() for x_hat in encoded.x_hat]
    return OperationalRD(encoded.bits.clone(), torch.stack(mse, 1), encoded.est_bits.clone())


def ideal_separation(rd: OperationalRD, channel_uses: int, snr_db: float, channel: str = "awgn",
                     generator: torch.Generator | None = None, repeats: int = 1) -> dict[str, Any]:
    """MSE per value of the compressor over an ideal capacity-achieving code of ``channel_uses`` uses.

    ``channel="awgn"``: ``{"mse"}`` with ``floor(k log2(1 + SNR))`` bits per latent (and, when ``rd``
    has rate estimates, ``{"mse_rate_estimate"}``: the same with an ideal entropy coder). ``"rayleigh"``:
    ``{"mse"}`` with the ergodic capacity (coding over many fades: optimistic for one fade per latent)
    and ``{"mse_block_csit"}``: one fade ``h ~ CN(0, 1)`` per latent (``repeats`` draws from
    ``generator``), ``floor(k log2(1 + |h|^2 SNR))`` bits, the rate adapted to the fade (CSI at both
    ends, as the seed codec has), with ``{"mse_block_csit_draws"}``: (repeats, N) float64, each latent's
    MSE per value under each fade draw (the mean over it is ``mse_block_csit``).
    """
    if isinstance(channel_uses, bool) or not isinstance(channel_uses, int) or channel_uses < 1:
        raise ValueError(f"channel_uses: expected an int >= 1, got {channel_uses!r}")
    budget = math.floor(channel_uses * float(capacity(float(snr_db), channel)) + 1e-9)
    out = {"mse": rd.mean_mse(budget)}
    if rd.est_bits is not None:
        out["mse_rate_estimate"] = rd.with_estimated_bits().mean_mse(budget)
    if channel == "rayleigh":
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        n = rd.bits.shape[0]
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
        draws = []
        for _ in range(repeats):
            h2 = complex_normal((n,), g, torch.complex64).abs().square().double().clamp_min(1e-30)
            c = np.asarray(awgn_capacity((float(snr_db) + 10 * torch.log10(h2)).numpy()))
            draws.append(rd.best_fit(torch.from_numpy(np.floor(channel_uses * c + 1e-9)))[1])
        out["mse_block_csit_draws"] = torch.stack(draws)
        out["mse_block_csit"] = float(out["mse_block_csit_draws"].mean())
    return out


def best_learned_digital_config(snr_db: float, channel_uses_budget: int, design: OperationalRD,
                                channel: str = "awgn") -> tuple[DigitalConfig | None, dict[str, float]]:
    """The LDPC + QAM code (sized to the budget, `budget_codes`) with the least expected distortion
    ``(1 - P) D(c k) + P D_0`` for the compressor measured on ``design`` (see the module docstring).

    Returns ``(config, {"bler", "expected_mse", "info_bits", "num_codewords"})``; ``config`` is None when sending nothing
    is best (``D_0``: every latent at the mean).
    """
    if channel == "rayleigh-block":
        channel = "rayleigh"
    if channel not in ("awgn", "rayleigh"):
        raise ValueError(f"channel: expected 'awgn' or 'rayleigh', got {channel!r}")
    d0 = float(design.mse[:, 0].mean())
    best: tuple[DigitalConfig | None, dict[str, float]] = (None, {"bler": 0.0, "expected_mse": d0, "info_bits": 0,
                                                                  "num_codewords": 0})
    for m, k, n, c in budget_codes(channel_uses_budget):
        p_cw = _bler_model(code_waterfall(m, k, n), float(snr_db), channel)
        p = 1 - (1 - p_cw) ** c
        exp = (1 - p) * design.mean_mse(c * k) + p * d0
        if exp < best[1]["expected_mse"]:
            cfg = DigitalConfig(1, k / n, m, n, num_components=1, crc=None)
            best = (cfg, {"bler": p, "expected_mse": exp, "info_bits": c * k, "num_codewords": c})
    return best


def _bits_of(data: bytes, level_code: int, hb: int, total: int) -> torch.Tensor:
    head = [(level_code >> (hb - 1 - i)) & 1 for i in range(hb)]
    body = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))[: bit_length(data)].tolist()
    bits = head + body
    if len(bits) > total:
        raise ValueError(f"data: {len(bits)} bits do not fit the {total} information bits")
    return torch.tensor(bits + [0] * (total - len(bits)), dtype=torch.float32)


class LearnedSeparationLink(LinkStage):
    """Learned compressor + 5G LDPC + QAM as a `LinkStage` (place a channel stage after it).

    :input send: primary tensors ``(B, C, h, w)`` float (the `EntropyModel`'s latent shape).
    :output send: each becomes ``(B, codewords x codeword_bits / bits_per_symbol)`` complex64 QAM symbols.
    :context: ``receive`` reads the equaliser model (`equalized_model`) the channel published and writes
        ``learned_separation`` = ``{"codewords", "codeword_errors", "levels"}``.

    Args:
        model: the `EntropyModel`.
        config: the code (`best_learned_digital_config`): ``codeword_bits``, ``code_rate``,
            ``bits_per_symbol``; ``crc`` None (the LDPC syndrome detects failures).
        num_codewords: codewords per latent (`budget_codes`' ``c``).
        num_iter: belief-propagation iterations.
        encoded: optional `encode_levels` of the latents this stage will send (checked in ``send``;
            saves encoding them again for every SNR).
    """

    def __init__(self, model: EntropyModel, config: DigitalConfig, num_codewords: int = 1, num_iter: int = 20,
                 encoded: EncodedLevels | None = None):
        super().__init__()
        if not isinstance(model, EntropyModel):
            raise TypeError(f"model: expected an EntropyModel, got {type(model).__name__}")
        if not isinstance(config, DigitalConfig):
            raise TypeError(f"config: expected a DigitalConfig, got {type(config).__name__}")
        if isinstance(num_codewords, bool) or not isinstance(num_codewords, int) or num_codewords < 1:
            raise ValueError(f"num_codewords: expected an int >= 1, got {num_codewords!r}")
        if encoded is not None and not isinstance(encoded, EncodedLevels):
            raise TypeError(f"encoded: expected EncodedLevels or None, got {type(encoded).__name__}")
        self.model, self.config, self.num_codewords, self.num_iter = model.eval(), config, num_codewords, num_iter
        self.encoded = encoded

    @property
    def info_bits(self) -> int:
        """Source bits per latent (header + bitstream + zero padding)."""
        return self.num_codewords * self.config.payload_bits

    def channel_uses(self) -> int:
        """Complex channel uses per latent."""
        return self.num_codewords * self.config.codeword_bits // self.config.bits_per_symbol

    @torch.no_grad()
    def send(self, payload: Payload, context: Any, generator: torch.Generator) -> Payload:
        cfg, c, hb = self.config, self.num_codewords, header_bits(self.model.num_levels)
        tensors, record = dict(payload.tensors), {}
        for name in payload.primary:
            x = tensors[name]
            self.model._check_x(x)
            xf = x.float()
            coded = self.encoded
            if coded is None:
                coded = encode_levels(self.model, xf)
            else:
                coded.check(xf)
            mse = torch.stack([(xh - xf).pow(2).flatten(1).mean(1) for xh in coded.x_hat], 1)  # (B, L)
            fits = coded.bits <= self.info_bits
            mse = torch.where(fits, mse, torch.full_like(mse, math.inf))
            base = (_mean_latent(self.model, xf) - xf).pow(2).flatten(1).mean(1)
            bits = []
            for i in range(x.shape[0]):
                lv = int(mse[i].argmin())
                use = bool(fits[i, lv]) and float(mse[i, lv]) < float(base[i])
                bits.append(_bits_of(coded.data[lv][i] if use else b"", lv + 1 if use else 0, hb, self.info_bits))
            info = torch.stack(bits).to(x.device).reshape(x.shape[0], c, cfg.payload_bits)
            coder = _Coder.get(cfg, x.device, self.num_iter)
            tensors[name] = coder.encode(info).reshape(x.shape[0], -1).to(torch.complex64)
            record[name] = {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch.")}
        return payload.replace(tensors=tensors, meta={**payload.meta, _META_KEY: record})

    @torch.no_grad()
    def receive(self, payload: Payload, context: Any, generator: torch.Generator) -> Payload:
        cfg, c, hb = self.config, self.num_codewords, header_bits(self.model.num_levels)
        record = payload.meta.get(_META_KEY)
        if record is None:
            raise ValueError(f"payload: carries no learned-separation symbols (meta has no {_META_KEY!r} entry)")
        tensors = dict(payload.tensors)
        report = {"codewords": 0, "codeword_errors": 0, "levels": []}
        for name, spec in record.items():
            y = tensors[name]
            batch = y.shape[0]
            a, v = equalized_model(context, name, y)
            a = torch.where(a.abs() < 1e-6, torch.full_like(a, 1e-6), a)
            no = (v / a.abs().square()).clamp(1e-10, 1e10).to(torch.float32)
            coder = _Coder.get(cfg, y.device, self.num_iter)
            bits, ok = coder.decode((y / a).to(torch.complex64), no, (batch, c, cfg.codeword_bits))
            bits = bits.reshape(batch, -1).round().to(torch.uint8).cpu().numpy()
            ok = ok.reshape(batch, c).all(dim=1).cpu()
            out = torch.empty(batch, *spec["shape"])
            mean = _mean_latent(self.model, out[:1])[0]
            for i in range(batch):
                level = int("".join(str(int(b)) for b in bits[i, :hb]), 2) if ok[i] else 0
                if 1 <= level <= self.model.num_levels:
                    data = np.packbits(bits[i, hb:]).tobytes()
                    try:
                        out[i] = self.model.decode([data], level - 1)[0]
                    except (AssertionError, ValueError, RuntimeError):  # an undetected error made it undecodable
                        out[i], level = mean, 0
                else:
                    out[i] = mean
                report["levels"].append(level)
            report["codewords"] += batch * c
            report["codeword_errors"] += int((~ok).sum()) if c == 1 else int(batch * c - int(ok.sum()) * c)
            tensors[name] = out.to(y.device).to(getattr(torch, spec["dtype"]))
        context[_META_KEY] = report
        meta = {k: v for k, v in payload.meta.items() if k != _META_KEY}
        return payload.replace(tensors=tensors, meta=meta)
