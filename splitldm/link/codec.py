"""The seed codec: a learned, SNR-adaptive joint source-channel code (deep JSCC) for latents and features.

`SeedCodec` maps a feature map ``x`` of shape ``(B, C, h, w)`` (a latent, or a hidden state of a
UNet cut) to ``k = floor(rho * C * h * w)`` complex channel symbols per sample, with unit average
power per sample, and maps received symbols back to ``(B, C, h, w)``. Encoder and decoder are
conditioned on the channel SNR in dB (ADJSCC-style channel-wise attention), so one model serves a
range of SNRs; with ``condition="csi"`` they condition on the effective SNR ``|h|^2 * SNR`` of a
block-fading channel instead, when the link publishes fading gains.

It is also a `LinkStage`: ``send`` replaces the payload's primary tensors by complex64 symbols (so
their bits become channel uses) and ``receive`` decodes them back::

    link = Link([SeedCodec.from_pretrained("seed-codec"), AWGN(snr_db=5)])
    received = link(payload, generator=torch.Generator().manual_seed(0))

Saving and loading follow diffusers: `SeedCodec.save_pretrained` writes ``config.json`` +
``model.safetensors``; `SeedCodec.from_pretrained` reads a folder, a `splitldm.zoo` name or (online) a
hub id. Training (`forward`) returns a dict, CompressAI style; see ``splitldm/recipes/codec.py``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from splitldm.checks import Bound, inside, read_config
from splitldm.zoo import resolve_pretrained
from splitldm.link.channels import AWGN, Channel
from splitldm.link.payload import Payload
from splitldm.link.stack import LinkContext, LinkStage, default_generator
from splitldm.link.symbols import complex_to_real, normalize_power, real_to_complex

__all__ = ["SeedCodec", "SNRAttention", "effective_snr_db", "read_safetensors", "write_safetensors"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_META_KEY = "seed_codec"
# Effective SNRs are clamped to this range (dB) before conditioning, so a deep fade (|h|^2 -> 0)
# does not feed -inf into the network.
_SNR_CLAMP_DB = (-30.0, 50.0)


# ----------------------------------------------------------------------------- helpers
def _as_snr(snr_db: float | Sequence[float] | torch.Tensor, batch: int, device) -> torch.Tensor:
    """SNR in dB as a float tensor of shape (B,); a scalar is broadcast. Non-finite -> ValueError."""
    if isinstance(snr_db, bool) or snr_db is None:
        raise TypeError(f"snr_db: expected a number or a tensor of shape (B,), got {snr_db!r}")
    snr = torch.as_tensor(snr_db, dtype=torch.float32, device=device)
    if snr.dim() == 0:
        snr = snr.expand(batch)
    snr = snr.reshape(-1)
    if snr.numel() != batch:
        raise ValueError(f"snr_db: expected a scalar or {batch} values (one per sample), got {snr.numel()}")
    if not torch.isfinite(snr).all():
        raise ValueError("snr_db: must be finite (dB)")
    return snr


def _rows(value, rows: int):
    """A per-sample link quantity (B, ...) repeated for ``rows = m B`` tensor rows (row i + j B is
    sample i, as in a classifier-free-guidance carry); anything else is returned unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() and 0 < value.shape[0] < rows and rows % value.shape[0] == 0:
        return value.repeat(rows // value.shape[0], *([1] * (value.dim() - 1)))
    return value


def effective_snr_db(snr_db: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
    """``snr_db + 10 log10 |h|^2`` per sample (B,), the SNR a block-fading channel really gives.

    ``h`` may be (B,), (B, 1) or (B, k) complex gains (per-symbol gains are averaged in power).
    """
    if h is None:
        return snr_db
    gain = h.detach().abs().pow(2).reshape(h.shape[0], -1).mean(1).to(snr_db)
    eff = snr_db + 10.0 * torch.log10(gain.clamp_min(1e-6))
    return eff.clamp(*_SNR_CLAMP_DB)


# ----------------------------------------------------------------------------- blocks
class SNRAttention(nn.Module):
    """ADJSCC attention feature module: channel-wise gates from pooled features and the SNR.

    ``x``: (B, C, H, W); ``snr``: (B, 1) normalised SNR. Returns ``x * sigmoid(mlp([mean(x), snr]))``.
    """

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(16, channels // 2)
        self.mlp = nn.Sequential(nn.Linear(channels + 1, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        ctx = torch.cat([x.mean(dim=(2, 3)), snr], dim=1)
        return x * torch.sigmoid(self.mlp(ctx))[:, :, None, None]


class _ResBlock(nn.Module):
    """conv3x3 -> PReLU -> conv3x3, residual, then SNR attention."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.att = SNRAttention(channels)

    def forward(self, x: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        x = x + self.conv2(self.act(self.conv1(x)))
        return self.att(x, snr)


# ----------------------------------------------------------------------------- codec
class SeedCodec(ModelMixin, LinkStage, ConfigMixin):
    r"""Deep-JSCC seed encoder/decoder with SNR conditioning and unit-power output.

    A diffusers model (``ModelMixin`` + ``ConfigMixin``, like ``AutoencoderKL``) and a `LinkStage`:

    :input: ``send``: every primary tensor ``x`` ``(B, C, h, w)`` real (``C = in_channels``).
    :output: ``send``: ``x`` becomes ``(B, k)`` complex64 symbols, ``k = floor(rho C h w)``, unit average
        power per sample, on the CPU (``payload.meta["seed_codec"]`` records shape and dtype);
        ``receive``: ``x_hat`` ``(B, C, h, w)`` in ``x``'s dtype.
    :context: reads ``snr_db`` (``(B,)`` dB; else ``default_snr_db``) and, with ``condition="csi"``,
        ``h`` (block-fading gains); writes nothing. A tensor with ``m B`` rows (a guided UNet-cut
        carry) reuses sample ``i``'s SNR for rows ``i, i + B, ...``.

    Parameters:
        in_channels (`int`, defaults to 4): channels ``C`` of the feature it codes (4 for SD latents).
        rho (`float`, defaults to 0.125): bandwidth ratio, complex channel uses per real source value:
            ``k = floor(rho C h w)``, in ``(0, 4]``.
        hidden_channels (`int`, defaults to 64): width of the convolutional trunk.
        num_blocks (`int`, defaults to 2): residual + SNR-attention blocks on each side.
        downsample (`int`, defaults to 1): stride-2 stages in the encoder (the symbol grid is
            ``h / 2**downsample``), in ``[0, 4]``.
        sample_size (`int` or `(int, int)`, defaults to 8): default ``(h, w)`` that `decode` reconstructs
            when no shape is given.
        condition (`str`, defaults to ``"snr"``): ``"snr"`` (condition on the channel SNR) or ``"csi"``
            (on ``|h|^2 SNR`` when the link publishes block-fading gains ``context.h``; falls back to
            the SNR otherwise).
        snr_range_db (`(float, float)`, defaults to ``(0, 20)``): the SNR range (dB) that centres and
            scales the SNR input (the first training range; fine-tuning keeps it so the weights stay valid).
        in_mean, in_std (`list[float]`, optional): per-channel statistics of the training features; the
            codec works on ``(x - mean) / std`` and undoes it at the output (set by the training recipe).
        default_snr_db (`float`, optional): SNR assumed by `send`/`receive` when no channel stage
            publishes one.
        trained_snr_range_db (`(float, float)`, optional): the SNR range (dB) the weights were last
            trained on, when fine-tuning widened it (None: ``snr_range_db``). See `training_snr_range_db`.
    """

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(self, in_channels: int = 4, rho: float = 0.125, hidden_channels: int = 64,
                 num_blocks: int = 2, downsample: int = 1, sample_size: int | Sequence[int] = 8,
                 condition: str = "snr", snr_range_db: Sequence[float] = (0.0, 20.0),
                 in_mean: Sequence[float] | None = None, in_std: Sequence[float] | None = None,
                 default_snr_db: float | None = None, trained_snr_range_db: Sequence[float] | None = None):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels: expected an int >= 1, got {in_channels!r}")
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (0 < rho <= 4) or not math.isfinite(rho):
            raise ValueError(f"rho: expected a bandwidth ratio in (0, 4] (channel uses per real value), got {rho!r}")
        if not isinstance(hidden_channels, int) or hidden_channels < 1:
            raise ValueError(f"hidden_channels: expected an int >= 1, got {hidden_channels!r}")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks: expected an int >= 0, got {num_blocks!r}")
        if not isinstance(downsample, int) or not 0 <= downsample <= 4:
            raise ValueError(f"downsample: expected an int in [0, 4], got {downsample!r}")
        if condition not in ("snr", "csi"):
            raise ValueError(f"condition: expected 'snr' or 'csi', got {condition!r}")
        lo, hi = (float(v) for v in snr_range_db)
        if not lo <= hi:
            raise ValueError(f"snr_range_db: expected (low, high) with low <= high, got {snr_range_db!r}")
        if trained_snr_range_db is not None:
            t_lo, t_hi = (float(v) for v in trained_snr_range_db)
            if not t_lo <= t_hi:
                raise ValueError(f"trained_snr_range_db: expected (low, high) with low <= high, got {trained_snr_range_db!r}")
        size = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(int(s) for s in sample_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"sample_size: expected an int or (h, w), got {sample_size!r}")
        self.sample_hw = size
        mean = torch.zeros(in_channels) if in_mean is None else torch.tensor(list(in_mean), dtype=torch.float32)
        std = torch.ones(in_channels) if in_std is None else torch.tensor(list(in_std), dtype=torch.float32)
        if mean.numel() != in_channels or std.numel() != in_channels or not (std > 0).all():
            raise ValueError("in_mean/in_std: expected in_channels values each, std > 0")
        # Persistent: a Lightning checkpoint restores them even though its hparams predate the stats.
        # Registered directly: the config has keys of the same names, which `register_buffer` would see
        # through ModelMixin's config-attribute lookup (see `__getattr__`).
        self._buffers["in_mean"] = mean.reshape(1, -1, 1, 1)
        self._buffers["in_std"] = std.reshape(1, -1, 1, 1)
        self._snr_center = (lo + hi) / 2
        self._snr_scale = max((hi - lo) / 2, 5.0)

        # Symbols per output channel of the encoder: ceil(2 rho C s^2) channels on the (h/s, w/s) grid
        # always hold the 2k real values the budget allows, whatever h and w are.
        scale = 2 ** downsample
        self.symbol_channels = max(1, math.ceil(2 * rho * in_channels * scale * scale - 1e-9))
        hid = hidden_channels
        self.enc_in = nn.Sequential(nn.Conv2d(in_channels, hid, 3, padding=1), nn.PReLU(hid))
        self.enc_down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hid, hid, 3, stride=2, padding=1), nn.PReLU(hid)) for _ in range(downsample))
        self.enc_blocks = nn.ModuleList(_ResBlock(hid) for _ in range(num_blocks))
        self.enc_out = nn.Conv2d(hid, self.symbol_channels, 3, padding=1)

        self.dec_in = nn.Sequential(nn.Conv2d(self.symbol_channels, hid, 3, padding=1), nn.PReLU(hid))
        self.dec_blocks = nn.ModuleList(_ResBlock(hid) for _ in range(num_blocks))
        self.dec_up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hid, hid, 3, padding=1), nn.PReLU(hid)) for _ in range(downsample))
        self.dec_out = nn.Conv2d(hid, in_channels, 3, padding=1)
        self.default_snr_db = default_snr_db

    def __getattr__(self, name: str) -> Any:
        # The statistics buffers share their names with config keys (``in_mean``, ``in_std``): the tensors
        # win, as before ModelMixin (whose lookup would return the config lists).
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            return buffers[name]
        return super().__getattr__(name)

    # ------------------------------------------------------------------ accounting
    @property
    def training_snr_range_db(self) -> tuple[float, float]:
        """(low, high) dB the weights were last trained on: ``trained_snr_range_db`` or ``snr_range_db``."""
        r = self.config.trained_snr_range_db or self.config.snr_range_db
        return float(r[0]), float(r[1])

    def num_symbols(self, shape: Sequence[int]) -> int:
        """Complex channel uses ``k = floor(rho * C * h * w)`` for a feature of shape (C, h, w)."""
        c, h, w = (int(s) for s in shape[-3:])
        k = math.floor(self.config.rho * c * h * w + 1e-9)
        if k < 1:
            raise ValueError(f"rho: {self.config.rho} gives k = {k} < 1 channel uses for a feature of "
                             f"shape {(c, h, w)}; raise rho to at least {1 / (c * h * w):.3g}")
        return k

    def _grid(self, hw: Sequence[int]) -> list[tuple[int, int]]:
        """Spatial sizes after each encoder stage: [(h, w), (ceil(h/2), ceil(w/2)), ...]."""
        sizes = [tuple(int(s) for s in hw)]
        for _ in range(self.config.downsample):
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
        return sizes

    def _snr_input(self, snr_db: torch.Tensor) -> torch.Tensor:
        return ((snr_db - self._snr_center) / self._snr_scale).reshape(-1, 1)

    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a Tensor (B, C, h, w), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name}: expected shape (B, C, h, w), got {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"{name}: this codec codes {self.config.in_channels}-channel features, "
                             f"got {x.shape[1]} channels (shape {tuple(x.shape)})")
        if x.is_complex() or not x.is_floating_point():
            raise TypeError(f"{name}: expected a real floating-point tensor, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or Inf")

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x: torch.Tensor, snr_db, h: torch.Tensor | None = None) -> torch.Tensor:
        """Encode features ``x`` (B, C, h, w) to complex64 symbols (B, k) with mean |s|^2 = 1 per sample.

        ``snr_db``: scalar or (B,) SNR in dB; ``h``: optional fading gains (CSI at the transmitter,
        used when ``condition="csi"``).
        """
        self._check_x(x)
        weight = self.enc_out.weight
        x = x.to(device=weight.device, dtype=weight.dtype)
        snr = self._cond_snr(_as_snr(snr_db, x.shape[0], x.device), h)
        k = self.num_symbols(x.shape)
        z = (x - self.in_mean) / self.in_std
        z = self.enc_in(z)
        for down in self.enc_down:
            z = down(z)
        for block in self.enc_blocks:
            z = block(z, snr)
        z = self.enc_out(z).flatten(1)[:, : 2 * k]
        return normalize_power(real_to_complex(z)).to(torch.complex64)

    def decode(self, y: torch.Tensor, snr_db, shape: Sequence[int] | None = None,
               h: torch.Tensor | None = None) -> torch.Tensor:
        """Decode received (equalised) symbols ``y`` (B, k) complex to features (B, C, h, w).

        ``shape`` is the (h, w) or (C, h, w) of the feature (default: the config's ``sample_size``).
        """
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y: expected a complex Tensor (B, k), got {type(y).__name__}")
        if y.dim() != 2:
            raise ValueError(f"y: expected shape (B, k), got {tuple(y.shape)}")
        if not torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all():
            raise ValueError("y: contains NaN or Inf")
        hw = self.sample_hw if shape is None else tuple(int(s) for s in shape[-2:])
        if shape is not None and len(shape) >= 3 and int(shape[-3]) != self.config.in_channels:
            raise ValueError(f"shape: this codec decodes {self.config.in_channels}-channel features, got {tuple(shape)}")
        k = self.num_symbols((self.config.in_channels, *hw))
        if not y.is_complex():
            raise TypeError(f"y: expected complex symbols, got {y.dtype}")
        if y.shape[1] != k:
            raise ValueError(f"y: expected k = {k} symbols for a feature of size {hw} at rho = {self.config.rho}, "
                             f"got {y.shape[1]}")
        weight = self.dec_out.weight
        y = y.to(weight.device)
        snr = self._cond_snr(_as_snr(snr_db, y.shape[0], y.device), h)
        sizes = self._grid(hw)
        gh, gw = sizes[-1]
        z = complex_to_real(y).to(weight.dtype)
        z = F.pad(z, (0, self.symbol_channels * gh * gw - z.shape[1])).reshape(-1, self.symbol_channels, gh, gw)
        z = self.dec_in(z)
        for block in self.dec_blocks:
            z = block(z, snr)
        for up, size in zip(self.dec_up, reversed(sizes[:-1])):
            z = up(F.interpolate(z, size=size, mode="nearest"))
        return self.dec_out(z) * self.in_std + self.in_mean

    def _cond_snr(self, snr_db: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if self.config.condition == "csi":
            snr_db = effective_snr_db(snr_db, h)
        return self._snr_input(snr_db)

    def forward(self, x: torch.Tensor, snr_db, generator: torch.Generator | None = None,
                channel: Channel | None = None) -> dict[str, Any]:
        """Training pass: encode -> channel -> equalise -> decode, differentiable in the codec weights.

        Args:
            x: features (B, C, h, w).
            snr_db: SNR in dB: a number, a (B,) tensor, or a ``(low, high)`` pair (uniform per sample).
            generator: randomness of the SNR draw, fading and noise (None: seeded 0).
            channel: a `splitldm.link.channels.Channel` (default: ``AWGN()``). Its fading gains are drawn
                before encoding, so with ``condition="csi"`` encoder and decoder see ``|h|^2 SNR``.

        Returns: dict with ``symbols`` (B, k) complex64 (unit power per sample), ``y`` (B, k) received
        and equalised symbols, ``x_hat`` (B, C, h, w), ``snr_db`` (B,) dB, ``h`` (gains or None).
        """
        self._check_x(x)
        generator = default_generator(generator)
        channel = AWGN() if channel is None else channel
        if isinstance(snr_db, torch.Tensor) and snr_db.dim() == 0 or isinstance(snr_db, (int, float)):
            snr_db = _as_snr(snr_db, x.shape[0], "cpu")
        state = channel.sample_state(x.shape[0], self.num_symbols(x.shape), snr_db, generator, device=x.device)
        symbols = self.encode(x, state.snr_db, h=state.h)
        y = channel.equalize(channel.apply(symbols, state, generator), state)
        x_hat = self.decode(y, state.snr_db, shape=x.shape[1:], h=state.h)
        return {"symbols": symbols, "y": y, "x_hat": x_hat, "snr_db": state.snr_db, "h": state.h}

    # ------------------------------------------------------------------ link stage
    def _link_snr(self, context: LinkContext, batch: int, device) -> torch.Tensor:
        context = LinkContext.coerce(context)
        snr = context.snr_db if context.snr_db is not None else self.default_snr_db
        if snr is None:
            raise ValueError("snr_db: no SNR known to the seed codec; put a channel stage after it in the Link "
                             "(it publishes context.snr_db) or set SeedCodec.default_snr_db")
        return _as_snr(_rows(snr, batch), batch, device)

    def _context_h(self, context: LinkContext, batch: int) -> torch.Tensor | None:
        h = LinkContext.coerce(context).h if self.config.condition == "csi" else None
        return _rows(h, batch) if isinstance(h, torch.Tensor) else None

    def send_tensor(self, x: torch.Tensor, context: LinkContext, name: str = "x") -> tuple[torch.Tensor, dict]:
        """Encode one link tensor (B, C, h, w) at the link's SNR: complex64 symbols (B, k) on the CPU and
        the record (``shape``, ``dtype``) `receive_tensor` needs to restore it."""
        self._check_x(x, name=name)
        with torch.no_grad():
            snr = self._link_snr(context, x.shape[0], x.device)
            y = self.encode(x, snr, h=self._context_h(context, x.shape[0])).to(torch.complex64).cpu()
        return y, {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}

    def receive_tensor(self, y: torch.Tensor, info: dict, context: LinkContext) -> torch.Tensor:
        """Decode symbols from `send_tensor` back to a feature of the recorded shape and dtype."""
        with torch.no_grad():
            snr = self._link_snr(context, y.shape[0], y.device)
            x_hat = self.decode(y, snr, shape=info["shape"][1:], h=self._context_h(context, y.shape[0]))
        return x_hat.to(getattr(torch, info["dtype"]))

    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        """Encode every primary tensor (B, C, h, w) to complex64 symbols (B, k); shapes go in meta."""
        if not payload.primary:
            raise ValueError("payload: has no primary tensor for the seed codec to encode")
        tensors, record = dict(payload.tensors), {}
        for name in payload.primary:
            tensors[name], record[name] = self.send_tensor(tensors[name], context, name=f"payload.tensors[{name!r}]")
        meta = dict(payload.meta)
        meta[_META_KEY] = record
        return payload.replace(tensors=tensors, meta=meta)

    def receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        """Decode the symbols `send` produced back to features of their original shape and dtype."""
        record = payload.meta.get(_META_KEY)
        if record is None:
            raise ValueError("payload: carries no seed-codec symbols (meta has no 'seed_codec' entry)")
        tensors = dict(payload.tensors)
        for name, info in record.items():
            tensors[name] = self.receive_tensor(tensors[name], info, context)
        meta = {k: v for k, v in payload.meta.items() if k != _META_KEY}
        return payload.replace(tensors=tensors, meta=meta)

    def note(self) -> dict[str, Any]:
        return {"rho": self.config.rho, "condition": self.config.condition}

    # ------------------------------------------------------------------ persistence
    def set_input_stats(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        """Record per-channel feature statistics (normalisation) in the buffers and the config."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.config.in_channels or std.numel() != self.config.in_channels or not (std > 0).all():
            raise ValueError("mean/std: expected in_channels values each, std > 0")
        self.in_mean.copy_(mean.reshape(1, -1, 1, 1))
        self.in_std.copy_(std.reshape(1, -1, 1, 1))
        self.register_to_config(in_mean=[float(v) for v in mean], in_std=[float(v) for v in std])

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        safe_serialization: bool = True, **kwargs: Any) -> Path:
        """Write ``config.json`` (diffusers `ConfigMixin`) and ``model.safetensors`` into ``save_directory``.

        Args:
            save_directory: the folder (created).
            is_main_process: only the main process writes (distributed training), as in diffusers.
            safe_serialization: must be True (safetensors only; never pickle).
        Returns:
            The folder.
        """
        path = _save_dir(save_directory, safe_serialization, kwargs)
        if not is_main_process:
            return path
        self.register_to_config(default_snr_db=self.default_snr_db,
                                in_mean=[float(v) for v in self.in_mean.reshape(-1)],
                                in_std=[float(v) for v in self.in_std.reshape(-1)])
        self.save_config(path)
        write_safetensors(self.state_dict(), path / WEIGHTS_NAME, type(self).__name__)
        return path

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, subfolder: str | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False) -> "SeedCodec":
        """Load a codec written by `save_pretrained`, in eval mode.

        Args:
            pretrained_model_name_or_path: a `splitldm.zoo` name (``"seed-codec"``: the shipped codec),
                a local folder, or a Hugging Face hub id (only when it is not a local path and
                ``HF_HUB_OFFLINE`` is unset).
            device: where the weights go. torch_dtype: cast the floating weights to it (None: as saved).
            subfolder, revision, cache_dir, local_files_only: as in diffusers (hub sources).
        Raises:
            FileNotFoundError: no such folder / name, or a file is missing. ValueError: a corrupt file,
            a config of another class or weights that do not fit the config.
        """
        path = resolve_pretrained(pretrained_model_name_or_path, (CONFIG_NAME, WEIGHTS_NAME), what=cls.__name__,
                                  subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only)
        model = cls(**_read_config(path / CONFIG_NAME, cls))
        _load_weights(model, path / WEIGHTS_NAME, device)
        model = model.to(device)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()

    # ------------------------------------------------------------------ deprecated (0.1) names
    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "SeedCodec":
        """Deprecated alias of `from_pretrained` (removed in the next release)."""
        warnings.warn(f"{cls.__name__}.load is deprecated; use {cls.__name__}.from_pretrained",
                      DeprecationWarning, stacklevel=2)
        return cls.from_pretrained(directory, device=map_location)

    def save(self, save_directory: str | os.PathLike) -> Path:
        """Deprecated alias of `save_pretrained` (removed in the next release)."""
        warnings.warn(f"{type(self).__name__}.save is deprecated; use save_pretrained", DeprecationWarning,
                      stacklevel=2)
        return self.save_pretrained(save_directory)


# ----------------------------------------------------------------------------- persistence helpers
def _save_dir(save_directory, safe_serialization: bool, kwargs: dict) -> Path:
    if kwargs:
        raise TypeError(f"save_pretrained: unsupported arguments {sorted(kwargs)}")
    if safe_serialization is not True:
        raise ValueError("safe_serialization: only safetensors is supported (never pickle)")
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"save_directory: expected a path, got {type(save_directory).__name__}")
    path = Path(save_directory).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_directory: {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_safetensors(state: dict[str, torch.Tensor], file: Path, class_name: str) -> None:
    """Write a state dict (detached, CPU, contiguous) as safetensors with ``{"format": "pt", "class"}``."""
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(state, str(file), metadata={"format": "pt", "class": class_name})


def read_safetensors(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a corrupt file is a ValueError naming it."""
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"pretrained_model_name_or_path: corrupt weights file {file}: {exc}") from exc


#: Sanity bounds of a `SeedCodec` / `SeedCodecBank` ``config.json`` (`splitldm.checks.read_config`), checked
#: before any layer is allocated: wherever the keys appear (a bank nests one codec config per tensor).
CONFIG_BOUNDS: dict[str, Bound] = {
    "in_channels": Bound("int", 1, 4096), "rho": Bound("number", 0, 4), "hidden_channels": Bound("int", 1, 4096),
    "num_blocks": Bound("int", 0, 64), "downsample": Bound("int", 0, 4),
    "sample_size": Bound("ints", 1, 16384, max_len=2), "condition": Bound("str", choices=("snr", "csi")),
    "snr_range_db": Bound("numbers", -100, 100, max_len=2), "trained_snr_range_db": Bound("numbers", -100, 100, max_len=2),
    "in_mean": Bound("numbers", max_len=4096), "in_std": Bound("numbers", 0, max_len=4096),
    "default_snr_db": Bound("number", -100, 100), "codecs": Bound("list", max_len=1024),
}


def _read_config(file: Path, cls: type) -> dict[str, Any]:
    """The constructor arguments in a ``config.json`` of class ``cls`` (keys starting with ``_`` dropped),
    read by `splitldm.checks.read_config` (no symlink out of the folder, strict JSON, `CONFIG_BOUNDS`)."""
    config = read_config(file.parent, file.name, CONFIG_BOUNDS)
    if config.get("_class_name", cls.__name__) != cls.__name__:
        raise ValueError(f"pretrained_model_name_or_path: {file.parent} holds a {config.get('_class_name')!r}, "
                         f"not a {cls.__name__}")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        import inspect

        inspect.signature(cls.__init__).bind(None, **kwargs)
    except TypeError as exc:
        raise ValueError(f"pretrained_model_name_or_path: config in {file.parent} does not fit {cls.__name__}: "
                         f"{exc}") from exc
    return kwargs


def _load_weights(model: nn.Module, file: Path, device) -> None:
    state = read_safetensors(inside(file.parent, file.name), device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"pretrained_model_name_or_path: weights in {file.parent} do not match its config: "
                         f"{exc}") from exc
