"""Wireless channels on complex symbols: AWGN, Rayleigh block fading and Rayleigh fast fading.

Conventions (see docs/sections/channels.md):

* Symbols are complex (``complex64``), one complex symbol = one channel use. Real values are paired
  into symbols *within one sample* (`real_to_complex`), never across the batch.
* Transmit power: average ``E|z|^2 = 1`` per sample after `normalize_power`.
* ``SNR = 1 / N0`` per complex symbol, in dB per sample. Noise ``n ~ CN(0, N0)``: variance ``N0/2``
  per real and per imaginary part (the usual 3.01 dB bug adds ``N0/2`` to *real* symbols).
* Rayleigh fading ``h ~ CN(0, 1)`` (``E|h|^2 = 1``); ``y = h z + n``. Block fading draws one ``h``
  per sample (or per coherence block of ``coherence_symbols`` symbols, or one per each of ``blocks``
  contiguous blocks of a sample, optionally with a per-block transmit ``power`` of mean 1); fast
  fading one per symbol.
* Receiver CSI modes: ``"none"`` (``y`` as is), ``"phase"`` (``y conj(h)/|h|``), ``"zf"``
  (``y conj(h) / max(|h|^2, zf_min_gain^2)``: zero forcing with deep fades clamped), ``"mmse"``
  (``conj(h) y / (|h|^2 + N0)``).
* Noise and fading come from the given ``torch.Generator`` and carry no gradient; the output is
  differentiable with respect to the input symbols.

Each channel is both a plain `nn.Module` (``channel(z, snr_db=..., generator=g) -> z_hat``) and a
`LinkStage` (``prepare`` publishes ``context.snr_db`` (B,) and, where known before sending, the
fading gains ``context.h``; ``send`` corrupts the payload's complex tensors; ``receive`` equalises).
`make_channel` builds one by name (`CHANNELS`); `resolve_snr_db` / `check_snr_db` are the one SNR
parser and `SNR_DB_RANGE` its one range rule.

Sionna: noise and Rayleigh gains are drawn with ``sionna.phy.utils.complex_normal``, the function
Sionna's own ``AWGN`` block uses, because it takes an explicit ``torch.Generator``. The ``AWGN`` and
``RayleighBlockFading`` *blocks* themselves are not used: they always draw from Sionna's global
``config.torch_rng`` (one process-wide generator), which would break "same generator -> same bits"
when several links run in one process, and they cannot publish per-symbol gains to the receiver.
The channel arithmetic around the draws (scale by sqrt(N0), multiply by h) is three lines of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch

from splitldm.analysis.limits import CHANNELS, lmmse_weight
from splitldm.checks import check_seed, check_tensor
from splitldm.link.analog import AnalogLink
from splitldm.link.payload import Payload
from splitldm.link.stack import LinkContext, LinkStage
from splitldm.link.symbols import complex_normal, complex_to_real, normalize_power, real_to_complex

__all__ = [
    "SNR_DB_RANGE",
    "CSI_MODES",
    "CHANNELS",
    "ChannelState",
    "Channel",
    "AWGN",
    "RayleighBlockFading",
    "RayleighFastFading",
    "MixedBlockChannel",
    "make_channel",
    "block_sizes",
    "check_snr_db",
    "real_to_complex",
    "complex_to_real",
    "normalize_power",
    "snr_db_to_n0",
    "resolve_snr_db",
    "complex_normal",
]

#: Supported per-sample SNR range in dB (inclusive). Outside it float32 noise scaling is still fine,
#: but nothing in this library is meant for it, so it is rejected rather than silently extrapolated.
SNR_DB_RANGE = (-20.0, 40.0)
CSI_MODES = ("none", "phase", "zf", "mmse")

SnrSpec = Union[float, int, torch.Tensor, Sequence[float]]
#: `LinkContext.extra` key: set while a channel sends real tensors with `AnalogLink` (its analog mode).
_ANALOG_KEY = "channel.analog"


# ---------------------------------------------------------------------------------------- helpers
def snr_db_to_n0(snr_db: torch.Tensor) -> torch.Tensor:
    """Noise power per complex symbol ``N0 = 10^(-snr_db/10)`` (unit signal power)."""
    return torch.pow(10.0, -snr_db / 10.0)


def check_snr_db(snr_db: float, name: str = "snr_db") -> float:
    """One SNR point in dB as a float, validated by the rule of `resolve_snr_db`: a real number (not a
    bool), finite, inside `SNR_DB_RANGE`. Errors name ``name`` (the caller's argument)."""
    if isinstance(snr_db, bool) or not isinstance(snr_db, (int, float)) and not (
            isinstance(snr_db, torch.Tensor) and snr_db.dim() == 0):
        raise TypeError(f"{name}: expected a number (dB), got {type(snr_db).__name__}")
    value = float(snr_db)
    lo, hi = SNR_DB_RANGE
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name}: must be a finite SNR in [{lo}, {hi}] dB, got {value}")
    return value


def resolve_snr_db(snr_db: SnrSpec, batch: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Turn an SNR spec into a validated ``(B,)`` float32 tensor in dB (no gradient).

    ``snr_db`` may be a number (same for all samples), a ``()`` or ``(B,)`` tensor, or a pair
    ``(low, high)`` (list or tuple): per-sample SNR uniform in ``[low, high]`` drawn from ``generator``
    (for SNR-adaptive training). Values must be finite and inside `SNR_DB_RANGE`.
    """
    lo, hi = SNR_DB_RANGE
    if isinstance(snr_db, bool):
        raise TypeError("snr_db: expected a number, a (B,) tensor or a (low, high) pair, got bool")
    if isinstance(snr_db, (list, tuple)):
        if len(snr_db) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in snr_db):
            raise ValueError(f"snr_db: a sequence must be a (low, high) pair of numbers, got {snr_db!r}")
        a, b = float(snr_db[0]), float(snr_db[1])
        if not (math.isfinite(a) and math.isfinite(b)) or not (lo <= a <= b <= hi):
            raise ValueError(f"snr_db: range ({a}, {b}) must satisfy {lo} <= low <= high <= {hi} dB")
        if generator is None:
            raise ValueError("snr_db: a (low, high) range needs a generator to draw per-sample SNRs")
        u = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float32)
        return (a + (b - a) * u).to(device)
    if isinstance(snr_db, (int, float)):
        t = torch.full((batch,), float(snr_db), dtype=torch.float32, device=device)
    elif isinstance(snr_db, torch.Tensor):
        if snr_db.is_complex() or not (snr_db.is_floating_point() or snr_db.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"snr_db: expected a real tensor, got {snr_db.dtype}")
        t = snr_db.detach().to(device=device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(batch).clone()
        elif t.shape != (batch,):
            raise ValueError(f"snr_db: expected a scalar or shape ({batch},), got {tuple(snr_db.shape)}")
    else:
        raise TypeError(f"snr_db: expected a number, a (B,) tensor or a (low, high) pair, got {type(snr_db).__name__}")
    if not torch.isfinite(t).all():
        raise ValueError(f"snr_db: must be finite, got {t.tolist()}")
    if (t < lo).any() or (t > hi).any():
        raise ValueError(f"snr_db: must lie in [{lo}, {hi}] dB, got min {t.min().item():.3g} max {t.max().item():.3g}")
    return t


def _check_symbols(z: Any, name: str = "z") -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name}: expected a complex Tensor, got {type(z).__name__}")
    if z.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"{name}: expected complex64/complex128 symbols, got {z.dtype} "
                        "(pair real values with real_to_complex and normalise with normalize_power)")
    if z.dim() < 2 or z.shape[0] == 0 or z[0].numel() == 0:
        raise ValueError(f"{name}: expected shape (B, ...) with B >= 1 and >= 1 symbol per sample, got {tuple(z.shape)}")
    check_tensor(z, name, finite=True)  # a NaN / inf symbol would silently poison the power and the equaliser


# ------------------------------------------------------------------------------------------ state
@dataclass
class ChannelState:
    """One realisation of a channel for a batch.

    Attributes:
        snr_db: ``(B,)`` float32, dB.
        n0: ``(B,)`` float32, noise power per complex symbol (``10^(-snr_db/10)``).
        h: fading gains, complex: ``(B, 1)`` (one per sample) or ``(B, n)`` (one per symbol);
            ``None`` for AWGN (``h = 1``).
    """

    snr_db: torch.Tensor
    n0: torch.Tensor
    h: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------- channels
class Channel(LinkStage):
    """Base class: ``y = h z + n`` with ``n ~ CN(0, N0)``, then an equaliser chosen by ``csi``.

    Args:
        snr_db: default SNR in dB per sample: a number, a ``(B,)`` tensor, a ``(low, high)`` range
            (uniform per sample), or ``None`` (then it must be given per call, or as
            ``context.snr_db`` when used in a `Link`).
        csi: receiver channel knowledge, one of `CSI_MODES`.
        zf_min_gain: for ``csi="zf"``, ``|h|`` is floored at this value (a deep fade is amplified at
            most by ``1/zf_min_gain``), in linear amplitude.
        seed: seed of the module's own generator, used when a call passes ``generator=None``: an int in
            ``[0, 2**64 - 1]`` (`splitldm.checks.check_seed`; a float seed is a TypeError, never truncated).

    NaN or inf symbols (in ``z``, ``y`` or a payload's complex tensors) are a ValueError naming the tensor.
    """

    fading = "none"

    def __init__(self, snr_db: SnrSpec | None = None, csi: str = "none", zf_min_gain: float = 0.1, seed: int = 0):
        super().__init__()
        if csi not in CSI_MODES:
            raise ValueError(f"csi: expected one of {CSI_MODES}, got {csi!r}")
        if not (isinstance(zf_min_gain, (int, float)) and 0 < zf_min_gain <= 1):
            raise ValueError(f"zf_min_gain: expected a number in (0, 1], got {zf_min_gain!r}")
        if snr_db is not None:
            resolve_snr_db(snr_db, 1 if not isinstance(snr_db, torch.Tensor) or snr_db.dim() == 0 else snr_db.shape[0],
                           torch.Generator().manual_seed(0))  # validate early
        self.snr_db = snr_db
        self.csi = csi
        self.zf_min_gain = float(zf_min_gain)
        self.seed = check_seed(seed)  # an int in [0, 2**64 - 1]; a float seed is refused, never truncated
        self._generator: torch.Generator | None = None

    # -------------------------------------------------------------- pieces (symbol level)
    def _own_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def draw_gains(self, batch: int, num_symbols: int, generator: torch.Generator, dtype=torch.complex64,
                   device=None) -> torch.Tensor | None:
        """Fading gains for ``batch`` samples of ``num_symbols`` symbols (``None``: no fading)."""
        return None

    def sample_state(self, batch: int, num_symbols: int, snr_db: SnrSpec | None = None,
                     generator: torch.Generator | None = None, dtype=torch.complex64, device=None) -> ChannelState:
        """Draw SNRs (if given as a range) and fading gains for a ``(batch, num_symbols)`` block."""
        generator = self._own_generator() if generator is None else generator
        spec = self.snr_db if snr_db is None else snr_db
        if spec is None:
            raise ValueError("snr_db: no SNR given (set it on the channel or pass it per call)")
        snr = resolve_snr_db(spec, batch, generator, device)
        return ChannelState(snr, snr_db_to_n0(snr), self.draw_gains(batch, num_symbols, generator, dtype, device))

    def apply(self, z: torch.Tensor, state: ChannelState, generator: torch.Generator | None = None) -> torch.Tensor:
        """Received symbols ``y = h z + n`` for ``z`` ``(B, ...)`` complex; same shape and dtype."""
        _check_symbols(z)
        generator = self._own_generator() if generator is None else generator
        flat = z.reshape(z.shape[0], -1)
        noise = complex_normal(flat.shape, generator, flat.dtype, flat.device)
        noise = noise * torch.sqrt(state.n0).to(device=flat.device, dtype=flat.real.dtype)[:, None]
        y = flat if state.h is None else flat * self._gains_for(state.h, flat).detach()
        return (y + noise).reshape(z.shape)

    def equalizer(self, state: ChannelState, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-symbol equaliser for symbols shaped like ``like`` ``(B, n)``.

        Returns ``(g, a, v)``, each broadcastable to ``(B, n)``: the equaliser weight ``g``
        (``z_hat = g y``) and the receiver's model of its output ``z_hat ~= a z + w``, ``w ~ CN(0, v)``:
        ``a`` complex, ``v`` real. With ``csi`` ``"none"`` or ``"phase"`` the receiver does not know
        ``|h|`` and models ``a = 1, v = N0``; with ``"zf"``/``"mmse"`` the model is exact.
        """
        n0 = state.n0.to(like.device)[:, None].to(like.real.dtype)
        one = torch.ones((), dtype=like.dtype, device=like.device)
        h = None if state.h is None else self._gains_for(state.h, like)
        if self.csi == "none":
            return one, one, n0
        if h is None:  # AWGN: h = 1
            if self.csi == "mmse":
                g = lmmse_weight(torch.ones((), dtype=n0.dtype, device=n0.device), n0).to(like.dtype)
                return g, g, n0 / (1.0 + n0) ** 2
            return one, one, n0
        p = h.abs().square()
        if self.csi == "phase":
            g = h.conj() / h.abs().clamp_min(1e-30)
            return g, one, n0
        if self.csi == "zf":
            g = h.conj() / p.clamp_min(self.zf_min_gain ** 2)
        else:  # mmse
            g = lmmse_weight(h, n0)
        return g, g * h, g.abs().square() * n0

    def equalize(self, y: torch.Tensor, state: ChannelState) -> torch.Tensor:
        """Apply the ``csi`` equaliser to received ``y`` ``(B, ...)``; same shape and dtype."""
        _check_symbols(y, "y")
        flat = y.reshape(y.shape[0], -1)
        g, _, _ = self.equalizer(state, flat)
        return (flat * g.detach()).reshape(y.shape)

    def forward(self, z: torch.Tensor, snr_db: SnrSpec | None = None, generator: torch.Generator | None = None,
                return_state: bool = False):
        """Channel + equaliser on complex symbols ``z`` ``(B, ...)`` -> ``z_hat`` (same shape/dtype).

        With ``return_state=True`` returns ``(z_hat, state)`` (`ChannelState`: SNRs, N0, gains).
        """
        _check_symbols(z)
        generator = self._own_generator() if generator is None else generator
        state = self.sample_state(z.shape[0], z[0].numel(), snr_db, generator, z.dtype, z.device)
        z_hat = self.equalize(self.apply(z, state, generator), state)
        return (z_hat, state) if return_state else z_hat

    def _fits(self, h: torch.Tensor, num_symbols: int) -> bool:
        """Whether gains ``h`` ``(B, g)`` describe ``num_symbols`` symbols per sample: one gain per sample,
        one per symbol (or, for a channel with ``blocks``, one per block)."""
        return h.shape[1] in (1, num_symbols)

    def _gains_for(self, h: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        h = h.to(device=flat.device, dtype=flat.dtype)
        if not self._fits(h, flat.shape[1]) or h.shape[0] != flat.shape[0]:
            raise ValueError(f"h: gains of shape {tuple(h.shape)} do not fit symbols {tuple(flat.shape)}")
        return h

    def extra_repr(self) -> str:
        return f"snr_db={self.snr_db!r}, csi={self.csi!r}"

    def note(self) -> dict[str, Any]:
        snr = self.snr_db
        if isinstance(snr, (torch.Tensor, tuple)):
            snr = snr.tolist() if isinstance(snr, torch.Tensor) else list(snr)
        return {"channel": self.fading, "snr_db": snr, "csi": self.csi}

    # ------------------------------------------------------------------ Link stage
    def prepare(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> None:
        """Publish ``context.snr_db`` (B,) dB and ``context.n0`` (B,); fading stages also ``context.h``
        when the gains are known before sending (one gain per sample)."""
        LinkContext.require(context, f"{type(self).__name__}.prepare")
        batch, device = _payload_batch(payload)
        spec = self.snr_db if self.snr_db is not None else context.snr_db
        if spec is None:
            raise ValueError("snr_db: the channel has no SNR and context.snr_db is not set")
        snr = resolve_snr_db(spec, batch, generator, device)
        context.snr_db = snr
        context.n0 = snr_db_to_n0(snr)
        context.h = self._gains_before_send(batch, generator, device)

    def _gains_before_send(self, batch, generator, device):
        return None

    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        """Corrupt every complex tensor of the payload (the symbols of one sample form one block).

        :input: complex tensors ``(m B, ...)`` (``m >= 1`` rows per sample, see `_payload_batch`),
            unit average power per sample; real tensors are side information and cross untouched.
        :output: the same tensors with ``y = h z + n`` (same shapes, dtypes).
        :context: reads ``snr_db``, ``n0``, ``h`` (runs `prepare` if no ``n0`` is set); writes ``h``
            (when drawn per symbol) and ``channel_layout``.

        If the payload holds no complex tensor, its real primary tensors are sent with `AnalogLink`
        (standardised per sample, the mean and std crossing as 2 float32 of side information) and its
        LMMSE receiver runs in `receive`: the library's one analog scheme.
        """
        LinkContext.require(context, f"{type(self).__name__}.send")
        if context.n0 is None:
            self.prepare(payload, context, generator)
        context.extra.pop(_ANALOG_KEY, None)
        if not any(v.is_complex() for v in payload.tensors.values()):
            if not payload.primary:
                raise ValueError("payload: no complex symbols and no primary tensors to send over the channel")
            payload = AnalogLink().send(payload, context, generator)
            context.extra[_ANALOG_KEY] = True
        tensors = dict(payload.tensors)
        meta = dict(payload.meta)
        names = [k for k, v in tensors.items() if v.is_complex()]
        for k in names:
            check_tensor(tensors[k], f"payload.tensors[{k!r}]", finite=True)
        batch = _common_batch([tensors[k].shape[0] for k in names], names)
        flats = [_per_sample(tensors[k], batch) for k in names]
        sizes = [f.shape[1] for f in flats]
        stream = torch.cat(flats, dim=1) if len(flats) > 1 else flats[0]
        h = context.h
        if h is None or not self._fits(h, stream.shape[1]):
            h = self.draw_gains(stream.shape[0], stream.shape[1], generator, stream.dtype, stream.device)
            if h is not None:
                context.h = h
        state = ChannelState(context.snr_db, context.n0, h)
        y = self.apply(stream, state, generator) if stream.shape[1] else stream  # e.g. a 0-bit digital scheme
        for k, part in zip(names, torch.split(y, sizes, dim=1)):
            tensors[k] = _from_per_sample(part, tensors[k].shape, batch)
        context.channel_layout = list(zip(names, sizes))
        return payload.replace(tensors=tensors, meta=meta)

    def receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        """Equalise (per ``csi``) and publish the receiver's model per symbol tensor.

        :input: the tensors `send` corrupted (``context.channel_layout``).
        :output: equalised symbols ``z_hat = g y`` (same shapes, dtypes); with `send`'s analog mode, the
            real tensors `AnalogLink` restores.
        :context: reads ``snr_db``, ``n0``, ``h``, ``channel_layout``; writes ``eq_gain[name]`` (``a``) and
            ``eq_noise_var[name]`` (``v``) with ``z_hat ~= a z + CN(0, v)``.
        """
        LinkContext.require(context, f"{type(self).__name__}.receive")
        layout = context.channel_layout
        if layout is None:
            raise ValueError("context: no channel_layout; receive() must follow send() in the same context")
        tensors = dict(payload.tensors)
        names = [k for k, _ in layout]
        batch = _common_batch([tensors[k].shape[0] for k in names], names)
        flats = [_per_sample(tensors[k], batch) for k in names]
        stream = torch.cat(flats, dim=1) if len(flats) > 1 else flats[0]
        state = ChannelState(context.snr_db, context.n0, context.h)
        g, a, v = self.equalizer(state, stream)
        z_hat = stream * g
        gains, nvars = dict(context.eq_gain or {}), dict(context.eq_noise_var or {})
        a_full, v_full = torch.broadcast_to(a, stream.shape), torch.broadcast_to(v, stream.shape)
        offset = 0
        for k, n in layout:
            shape = tensors[k].shape
            tensors[k] = _from_per_sample(z_hat[:, offset:offset + n], shape, batch)
            gains[k] = _from_per_sample(a_full[:, offset:offset + n], shape, batch)
            nvars[k] = _from_per_sample(v_full[:, offset:offset + n], shape, batch)
            offset += n
        context.eq_gain, context.eq_noise_var = gains, nvars
        out = payload.replace(tensors=tensors)
        if context.extra.pop(_ANALOG_KEY, False):
            out = AnalogLink().receive(out, context, generator)
        return out


class AWGN(Channel):
    """Additive white Gaussian noise: ``y = z + n``, ``n ~ CN(0, N0)``, ``N0 = 10^(-snr_db/10)``.

    ``csi`` only matters for ``"mmse"`` (``y / (1 + N0)``, the LMMSE estimate of unit-power symbols).
    """

    fading = "awgn"


class RayleighBlockFading(Channel):
    """Rayleigh block fading: ``y = h z + n`` with ``h ~ CN(0, 1)`` constant over a block.

    Args:
        coherence_symbols: ``None`` (default): one ``h`` per sample (published in ``prepare`` as
            ``context.h`` ``(B, 1)``, so a transmitter can use it); an int ``L``: one ``h`` per
            consecutive run of ``L`` symbols of a sample (drawn in ``send``, ``context.h`` ``(B, n)``).
        blocks: ``None`` (default), or an int ``M >= 1``: each sample's ``n`` symbols are spread over
            ``M`` contiguous fading blocks of `block_sizes` ``(n, M)`` symbols (as even as possible: the
            first ``n mod M`` blocks hold one symbol more), each with its own ``h_m ~ CN(0, 1)``, drawn in
            ``prepare`` and published as ``context.h`` ``(B, M)`` (``n >= M`` is required). Not with
            ``coherence_symbols``. ``blocks=1`` draws exactly what ``blocks=None`` draws.
        power: ``None`` (default: equal power), or the per-block transmit power ``p_m`` (needs
            ``blocks``): ``M`` numbers, or a ``(M,)`` / ``(B, M)`` tensor, each ``>= 0`` and finite, with
            mean 1 per sample (``|mean - 1| <= 1e-5``: the total power budget is fixed). Block ``m``'s
            symbols are sent as ``sqrt(p_m) z``, so ``y_m = h_m sqrt(p_m) z + n`` (block SNR
            ``p_m |h_m|^2 SNR``). The gains published in ``context.h`` (and the ones the receiver
            equalises with) are the effective gains ``sqrt(p_m) h_m``: what a receiver estimates from
            pilots sent at the block's power, so the receiver never needs ``p`` itself.

    The other arguments are `Channel`'s; ``csi`` defaults to ``"mmse"``.
    """

    fading = "rayleigh-block"

    def __init__(self, snr_db: SnrSpec | None = None, csi: str = "mmse", coherence_symbols: int | None = None,
                 zf_min_gain: float = 0.1, seed: int = 0, blocks: int | None = None,
                 power: Sequence[float] | torch.Tensor | None = None):
        super().__init__(snr_db, csi, zf_min_gain, seed)
        if coherence_symbols is not None and (isinstance(coherence_symbols, bool) or not isinstance(coherence_symbols, int)
                                              or coherence_symbols < 1):
            raise ValueError(f"coherence_symbols: expected None or an int >= 1, got {coherence_symbols!r}")
        if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1):
            raise ValueError(f"blocks: expected None or an int >= 1, got {blocks!r}")
        if blocks is not None and coherence_symbols is not None:
            raise ValueError("blocks: give either blocks (M per sample) or coherence_symbols (L per block), not both")
        self.coherence_symbols = coherence_symbols
        self.blocks = blocks
        self.power = None if power is None else _check_power(power, blocks)

    def _with_power(self, h: torch.Tensor) -> torch.Tensor:
        """Block gains ``(B, M)`` -> effective gains ``sqrt(p_m) h_m`` (unchanged without ``power``)."""
        if self.power is None:
            return h
        p = self.power.to(device=h.device)
        if p.dim() == 2 and p.shape[0] != h.shape[0]:
            raise ValueError(f"power: per-sample powers for {p.shape[0]} samples, the batch has {h.shape[0]}")
        return h * torch.sqrt(p).to(h.real.dtype)

    def draw_gains(self, batch, num_symbols, generator, dtype=torch.complex64, device=None):
        if self.blocks is not None:
            block_sizes(num_symbols, self.blocks)  # n >= M
            return self._with_power(complex_normal((batch, self.blocks), generator, dtype, device))
        if self.coherence_symbols is None:
            return complex_normal((batch, 1), generator, dtype, device)
        blocks = -(-num_symbols // self.coherence_symbols)
        h = complex_normal((batch, blocks), generator, dtype, device)
        return h.repeat_interleave(self.coherence_symbols, dim=1)[:, :num_symbols]

    def _gains_before_send(self, batch, generator, device):
        if self.blocks is not None:
            return self._with_power(complex_normal((batch, self.blocks), generator, torch.complex64, device))
        if self.coherence_symbols is None:
            return complex_normal((batch, 1), generator, torch.complex64, device)
        return None

    def _fits(self, h, num_symbols):
        return super()._fits(h, num_symbols) or (self.blocks is not None and h.shape[1] == self.blocks)

    def _gains_for(self, h, flat):
        n = flat.shape[1]
        if self.blocks is not None and h.shape[1] == self.blocks and n not in (1, self.blocks):
            sizes = torch.tensor(block_sizes(n, self.blocks), device=h.device)
            h = h.repeat_interleave(sizes, dim=1)
        return super()._gains_for(h, flat)

    def note(self):
        out = {**super().note(), "coherence_symbols": self.coherence_symbols}
        if self.blocks is not None:
            out["blocks"] = self.blocks
            out["power"] = None if self.power is None else self.power.tolist()
        return out


def block_sizes(num_symbols: int, blocks: int) -> list[int]:
    """Symbols per fading block when ``num_symbols`` symbols are spread over ``blocks`` contiguous blocks:
    as even as possible, the first ``num_symbols mod blocks`` blocks one symbol longer (sums to
    ``num_symbols``). ``num_symbols >= blocks >= 1`` (a ValueError naming ``blocks`` otherwise)."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks: expected an int >= 1, got {blocks!r}")
    if isinstance(num_symbols, bool) or not isinstance(num_symbols, int) or num_symbols < blocks:
        raise ValueError(f"blocks: {blocks} fading blocks need at least {blocks} symbols per sample, got {num_symbols!r}")
    q, r = divmod(num_symbols, blocks)
    return [q + 1] * r + [q] * (blocks - r)


def _check_power(power, blocks: int | None) -> torch.Tensor:
    """Validated per-block power: float32 ``(M,)`` or ``(B, M)``, >= 0, finite, mean 1 per sample."""
    if blocks is None:
        raise ValueError("power: a per-block power needs blocks=M (the number of fading blocks per sample)")
    if isinstance(power, torch.Tensor):
        if power.is_complex() or not power.is_floating_point() and power.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"power: expected a real tensor, got {power.dtype}")
        p = power.detach().to(torch.float64).cpu()
    elif isinstance(power, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in power):
        p = torch.tensor([float(v) for v in power], dtype=torch.float64)
    else:
        raise TypeError(f"power: expected a sequence of numbers or a tensor, got {type(power).__name__}")
    if p.dim() not in (1, 2) or p.shape[-1] != blocks or p.dim() == 2 and p.shape[0] < 1:
        raise ValueError(f"power: expected ({blocks},) or (B, {blocks}) block powers, got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"power: block powers must be finite and >= 0, got {p.tolist()}")
    if ((p.mean(-1) - 1).abs() > 1e-5).any():
        raise ValueError(f"power: block powers must have mean 1 (fixed total power), got mean {p.mean(-1).tolist()}")
    return p.to(torch.float32)


class RayleighFastFading(Channel):
    """Rayleigh fast fading: an independent ``h ~ CN(0, 1)`` per symbol (drawn in ``send``;
    ``context.h`` ``(B, n)`` is available to receive-side stages). ``csi`` defaults to ``"mmse"``."""

    fading = "rayleigh-fast"

    def __init__(self, snr_db: SnrSpec | None = None, csi: str = "mmse", zf_min_gain: float = 0.1, seed: int = 0):
        super().__init__(snr_db, csi, zf_min_gain, seed)

    def draw_gains(self, batch, num_symbols, generator, dtype=torch.complex64, device=None):
        return complex_normal((batch, num_symbols), generator, dtype, device)


def _payload_batch(payload: Payload) -> tuple[int, torch.device]:
    """Samples and device of a payload: the smallest leading dim ``B`` of its primary (else complex)
    tensors. Every other leading dim must be a multiple ``m B``: rows ``i, i + B, ...`` belong to
    sample ``i`` (classifier-free guidance stacks ``[uncond, cond]`` halves of a UNet-cut carry so)."""
    if not isinstance(payload, Payload):
        raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
    names = list(payload.primary) or [k for k, v in payload.tensors.items() if v.is_complex()]
    if not names:
        raise ValueError("payload: no primary or complex tensors, so there is nothing to send over the channel")
    sizes = [payload.tensors[k].shape[0] if payload.tensors[k].dim() else -1 for k in names]
    return _common_batch(sizes, names), payload.tensors[names[0]].device


def _common_batch(sizes: list[int], names: list[str]) -> int:
    if -1 in sizes or min(sizes) < 1 or any(s % min(sizes) for s in sizes):
        raise ValueError(f"payload: tensors {names} do not share one batch dimension ({sorted(set(sizes))}); "
                         "each leading dim must be a multiple of the smallest")
    return min(sizes)


def _per_sample(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(m B, ...) -> (B, m * rest): the rows of sample i (i, i + B, ...) side by side."""
    m = x.shape[0] // batch
    return x.reshape(m, batch, -1).transpose(0, 1).reshape(batch, -1)


def _from_per_sample(flat: torch.Tensor, shape, batch: int) -> torch.Tensor:
    """Inverse of `_per_sample`: (B, m * rest) -> ``shape`` = (m B, ...)."""
    m = shape[0] // batch
    return flat.reshape(batch, m, -1).transpose(0, 1).reshape(shape)


def equalized_model(context: LinkContext, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The receiver's model ``z_hat = a z + CN(0, v)`` for tensor ``name``: `LinkContext.channel_model`."""
    return LinkContext.coerce(context).channel_model(name, like)


# ----------------------------------------------------------------------------------- by name
class MixedBlockChannel(Channel):
    """AWGN or Rayleigh block fading, picked per sample: one model learns both (the codec recipes' channel).

    Each sample is Rayleigh block faded (one ``h ~ CN(0, 1)`` per sample) with probability
    ``p_rayleigh`` and AWGN (``h = 1``) otherwise; the receiver equalises with ``csi``. The channel
    arithmetic (noise, equaliser) is `Channel`'s. Gains are drawn in ``send`` (``context.h`` ``(B, 1)``).
    """

    fading = "mixed-block"

    def __init__(self, snr_db: SnrSpec | None = None, csi: str = "mmse", p_rayleigh: float = 0.5, seed: int = 0):
        super().__init__(snr_db, csi, seed=seed)
        if isinstance(p_rayleigh, bool) or not isinstance(p_rayleigh, (int, float)) or not 0.0 <= p_rayleigh <= 1.0:
            raise ValueError(f"p_rayleigh: expected a probability in [0, 1], got {p_rayleigh!r}")
        self.p_rayleigh = float(p_rayleigh)

    def draw_gains(self, batch, num_symbols, generator, dtype=torch.complex64, device=None):
        h = complex_normal((batch, 1), generator, dtype, device)
        fade = torch.rand(batch, 1, generator=generator, device=generator.device).to(h.device) < self.p_rayleigh
        return torch.where(fade, h, torch.ones_like(h))

    def note(self):
        return {**super().note(), "p_rayleigh": self.p_rayleigh}


def make_channel(kind: str | Sequence[str], *, snr_db: SnrSpec | None = None, csi: str = "mmse",
                 seed: int = 0, **kwargs: Any) -> Channel:
    """The channel named ``kind``, one of `CHANNELS`:

    * ``"awgn"`` -> `AWGN`;
    * ``"rayleigh"`` -> `RayleighBlockFading` (one ``h`` per sample, i.e. per image);
    * a list of names: the one channel they name, or, for ``["awgn", "rayleigh"]``, a
      `MixedBlockChannel` (each sample faded with probability 1/2: the codec recipes' training channel).

    ``snr_db=None`` takes the SNR from ``context.snr_db`` in a `Link`. ``csi``, ``seed`` and ``kwargs``
    (e.g. ``coherence_symbols``, ``blocks``, ``power``, ``zf_min_gain``, ``p_rayleigh``) go to the
    channel's constructor.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind) if isinstance(kind, (list, tuple)) else None
    if not kinds or any(k not in CHANNELS for k in kinds):
        raise ValueError(f"kind: expected one of the channels {CHANNELS} or a non-empty list of them, got {kind!r}")
    if set(kinds) == {"awgn"}:
        return AWGN(snr_db, csi=csi, seed=seed, **kwargs)
    if set(kinds) == {"rayleigh"}:
        return RayleighBlockFading(snr_db, csi=csi, seed=seed, **kwargs)
    return MixedBlockChannel(snr_db, csi=csi, seed=seed, **{"p_rayleigh": 0.5, **kwargs})
