"""Wireless channels on complex symbols: AWGN, Rayleigh block fading and Rayleigh fast fading.

Conventions (see docs/sections/channels.md):

* Symbols are complex (``complex64``), one complex symbol = one channel use. Real values are paired
  into symbols *within one sample* (`real_to_complex`), never across the batch.
* Transmit power: average ``E|z|^2 = 1`` per sample after `normalize_power`.
* ``SNR = 1 / N0`` per complex symbol, in dB per sample. Noise ``n ~ CN(0, N0)``: variance ``N0/2``
  per real and per imaginary part (the usual 3.01 dB bug adds ``N0/2`` to *real* symbols).
* Rayleigh fading ``h ~ CN(0, 1)`` (``E|h|^2 = 1``); ``y = h z + n``. Block fading draws one ``h``
  per sample (or per coherence block of ``coherence_symbols`` symbols); fast fading one per symbol.
* Receiver CSI modes: ``"none"`` (``y`` as is), ``"phase"`` (``y conj(h)/|h|``), ``"zf"``
  (``y conj(h) / max(|h|^2, zf_min_gain^2)``: zero forcing with deep fades clamped), ``"mmse"``
  (``conj(h) y / (|h|^2 + N0)``).
* Noise and fading come from the given ``torch.Generator`` and carry no gradient; the output is
  differentiable with respect to the input symbols.

Each channel is both a plain `nn.Module` (``channel(z, snr_db=..., generator=g) -> z_hat``) and a
`LinkStage` (``prepare`` publishes ``context["snr_db"]`` (B,) and, where known before sending, the
fading gains ``context["h"]``; ``send`` corrupts the payload's complex tensors; ``receive`` equalises).

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

from splitldm.link.stack import LinkStage
from splitldm.link.payload import Payload

__all__ = [
    "SNR_DB_RANGE",
    "CSI_MODES",
    "ChannelState",
    "Channel",
    "AWGN",
    "RayleighBlockFading",
    "RayleighFastFading",
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


# ---------------------------------------------------------------------------------------- helpers
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


def snr_db_to_n0(snr_db: torch.Tensor) -> torch.Tensor:
    """Noise power per complex symbol ``N0 = 10^(-snr_db/10)`` (unit signal power)."""
    return torch.pow(10.0, -snr_db / 10.0)


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
            ``context["snr_db"]`` when used in a `Link`).
        csi: receiver channel knowledge, one of `CSI_MODES`.
        zf_min_gain: for ``csi="zf"``, ``|h|`` is floored at this value (a deep fade is amplified at
            most by ``1/zf_min_gain``), in linear amplitude.
        seed: seed of the module's own generator, used when a call passes ``generator=None``.
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
        self.seed = int(seed)
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
                g = (1.0 / (1.0 + n0)).to(like.dtype)
                return g, g, n0 / (1.0 + n0) ** 2
            return one, one, n0
        p = h.abs().square()
        if self.csi == "phase":
            g = h.conj() / h.abs().clamp_min(1e-30)
            return g, one, n0
        if self.csi == "zf":
            g = h.conj() / p.clamp_min(self.zf_min_gain ** 2)
        else:  # mmse
            g = h.conj() / (p + n0)
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

    @staticmethod
    def _gains_for(h: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        h = h.to(device=flat.device, dtype=flat.dtype)
        if h.shape[1] not in (1, flat.shape[1]) or h.shape[0] != flat.shape[0]:
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
    def prepare(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> None:
        """Publish ``context["snr_db"]`` (B,) dB and ``context["n0"]`` (B,); fading stages also ``context["h"]``
        when the gains are known before sending (one gain per sample)."""
        batch, device = _payload_batch(payload)
        spec = self.snr_db if self.snr_db is not None else context.get("snr_db")
        if spec is None:
            raise ValueError("snr_db: the channel has no SNR and context['snr_db'] is not set")
        snr = resolve_snr_db(spec, batch, generator, device)
        context["snr_db"] = snr
        context["n0"] = snr_db_to_n0(snr)
        context.pop("h", None)
        h = self._gains_before_send(batch, generator, device)
        if h is not None:
            context["h"] = h

    def _gains_before_send(self, batch, generator, device):
        return None

    def send(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        """Corrupt every complex tensor of the payload (the symbols of one sample form one block).

        If the payload holds no complex tensor, the real primary tensors are sent analog: paired into
        symbols, power-normalised per sample (the scale crosses as ``<name>.analog_scale`` (B,) float32
        side information), and restored by `receive`.
        """
        if "snr_db" not in context:
            self.prepare(payload, context, generator)
        tensors = dict(payload.tensors)
        meta = dict(payload.meta)
        names = [k for k, v in tensors.items() if v.is_complex()]
        if not names:
            if not payload.primary:
                raise ValueError("payload: no complex symbols and no primary tensors to send over the channel")
            analog = {}
            for name in payload.primary:
                x = tensors[name]
                z = real_to_complex(x)
                scale = torch.sqrt(z.abs().square().mean(dim=1)).clamp_min(1e-12)
                tensors[name] = (z / scale[:, None].to(z.real.dtype)).to(torch.complex64)
                tensors[f"{name}.analog_scale"] = scale.detach().float()
                analog[name] = {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch.")}
                names.append(name)
            meta["analog"] = {**meta.get("analog", {}), **analog}
        batch = _common_batch([tensors[k].shape[0] for k in names], names)
        flats = [_per_sample(tensors[k], batch) for k in names]
        sizes = [f.shape[1] for f in flats]
        stream = torch.cat(flats, dim=1) if len(flats) > 1 else flats[0]
        h = context.get("h")
        if h is None or h.shape[1] not in (1, stream.shape[1]):
            h = self.draw_gains(stream.shape[0], stream.shape[1], generator, stream.dtype, stream.device)
            if h is not None:
                context["h"] = h
        state = ChannelState(context["snr_db"], context["n0"], h)
        y = self.apply(stream, state, generator) if stream.shape[1] else stream  # e.g. a 0-bit digital scheme
        for k, part in zip(names, torch.split(y, sizes, dim=1)):
            tensors[k] = _from_per_sample(part, tensors[k].shape, batch)
        context["channel_layout"] = list(zip(names, sizes))
        return payload.replace(tensors=tensors, meta=meta)

    def receive(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        """Equalise (per ``csi``) and publish the receiver's model per symbol tensor:
        ``context["eq_gain"][name]`` (``a``) and ``context["eq_noise_var"][name]`` (``v``), with
        ``z_hat ~= a z + CN(0, v)``; undo the analog mode of `send`."""
        layout = context.get("channel_layout")
        if layout is None:
            raise ValueError("context: no channel_layout; receive() must follow send() in the same context")
        tensors = dict(payload.tensors)
        names = [k for k, _ in layout]
        batch = _common_batch([tensors[k].shape[0] for k in names], names)
        flats = [_per_sample(tensors[k], batch) for k in names]
        stream = torch.cat(flats, dim=1) if len(flats) > 1 else flats[0]
        state = ChannelState(context["snr_db"], context["n0"], context.get("h"))
        g, a, v = self.equalizer(state, stream)
        z_hat = stream * g
        gains, nvars = dict(context.get("eq_gain", {})), dict(context.get("eq_noise_var", {}))
        a_full, v_full = torch.broadcast_to(a, stream.shape), torch.broadcast_to(v, stream.shape)
        offset = 0
        for k, n in layout:
            shape = tensors[k].shape
            tensors[k] = _from_per_sample(z_hat[:, offset:offset + n], shape, batch)
            gains[k] = _from_per_sample(a_full[:, offset:offset + n], shape, batch)
            nvars[k] = _from_per_sample(v_full[:, offset:offset + n], shape, batch)
            offset += n
        context["eq_gain"], context["eq_noise_var"] = gains, nvars
        meta = dict(payload.meta)
        analog = dict(meta.pop("analog", {}))
        for name, info in analog.items():
            scale = tensors.pop(f"{name}.analog_scale")
            x = complex_to_real(tensors[name] * scale[:, None].to(tensors[name].real.dtype), info["shape"])
            tensors[name] = x.to(getattr(torch, info["dtype"]))
        return payload.replace(tensors=tensors, meta=meta)


class AWGN(Channel):
    """Additive white Gaussian noise: ``y = z + n``, ``n ~ CN(0, N0)``, ``N0 = 10^(-snr_db/10)``.

    ``csi`` only matters for ``"mmse"`` (``y / (1 + N0)``, the LMMSE estimate of unit-power symbols).
    """

    fading = "awgn"


class RayleighBlockFading(Channel):
    """Rayleigh block fading: ``y = h z + n`` with ``h ~ CN(0, 1)`` constant over a block.

    Args:
        coherence_symbols: ``None`` (default): one ``h`` per sample (published in ``prepare`` as
            ``context["h"]`` ``(B, 1)``, so a transmitter can use it); an int ``L``: one ``h`` per
            consecutive run of ``L`` symbols of a sample (drawn in ``send``, ``context["h"]`` ``(B, n)``).
        Others as `Channel`; ``csi`` defaults to ``"mmse"``.
    """

    fading = "rayleigh-block"

    def __init__(self, snr_db: SnrSpec | None = None, csi: str = "mmse", coherence_symbols: int | None = None,
                 zf_min_gain: float = 0.1, seed: int = 0):
        super().__init__(snr_db, csi, zf_min_gain, seed)
        if coherence_symbols is not None and (isinstance(coherence_symbols, bool) or not isinstance(coherence_symbols, int)
                                              or coherence_symbols < 1):
            raise ValueError(f"coherence_symbols: expected None or an int >= 1, got {coherence_symbols!r}")
        self.coherence_symbols = coherence_symbols

    def draw_gains(self, batch, num_symbols, generator, dtype=torch.complex64, device=None):
        if self.coherence_symbols is None:
            return complex_normal((batch, 1), generator, dtype, device)
        blocks = -(-num_symbols // self.coherence_symbols)
        h = complex_normal((batch, blocks), generator, dtype, device)
        return h.repeat_interleave(self.coherence_symbols, dim=1)[:, :num_symbols]

    def _gains_before_send(self, batch, generator, device):
        if self.coherence_symbols is None:
            return complex_normal((batch, 1), generator, torch.complex64, device)
        return None

    def note(self):
        return {**super().note(), "coherence_symbols": self.coherence_symbols}


class RayleighFastFading(Channel):
    """Rayleigh fast fading: an independent ``h ~ CN(0, 1)`` per symbol (drawn in ``send``;
    ``context["h"]`` ``(B, n)`` is available to receive-side stages). ``csi`` defaults to ``"mmse"``."""

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


def equalized_model(context: dict[str, Any], name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
