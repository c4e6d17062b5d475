"""A learned, entropy-coded compressor of latents: the source coder of the learned separation baseline.

`EntropyModel` is a small transform coder in the style of Ballé et al. 2018 ("Variational image
compression with a scale hyperprior", its factorized-prior model, CompressAI's ``EntropyBottleneck``):

* analysis ``g_a``: a latent ``x`` (B, C, h, w), normalised per channel, -> ``y`` (B, M, h/2^d, w/2^d);
* ``L`` rate levels (one per Lagrange multiplier ``lambdas[l]``): level ``l`` scales ``y`` by a learned
  per-channel gain ``g_l`` (M,) and quantises ``q = round(g_l y)`` (training: additive uniform noise
  ``g_l y + U(-1/2, 1/2)``, the differentiable proxy);
* a factorized prior: per level and channel a learned monotone CDF ``F_{l,m}`` (Ballé's
  "non-parametric" density, 3 hidden layers of 3), ``P(q) = F(q + 1/2) - F(q - 1/2)``, so the rate is
  ``R = -sum log2 P(q)`` bits;
* synthesis ``g_s``: ``q / g_l`` -> ``x_hat`` (B, C, h, w).

Training minimises ``D + lambda_l R`` (recipe: ``splitldm/recipes/entropy.py``), one level drawn per
sample, which gives an operational rate-distortion curve of ``L`` points in one model.

The bitstream is real: `EntropyModel.encode` range-codes every quantised symbol with the
``constriction`` library (``constriction.stream.queue.RangeEncoder`` with a
``constriction.stream.model.Categorical`` per channel, probabilities from the learned CDF on the
integer support where the tail mass is above ``1e-9``; values outside are clamped to it, which is
part of the quantisation). ``constriction`` (Bamler 2022, Rust with Python bindings, no dependencies
beyond numpy) is a project dependency for this: CompressAI 1.2.8, which defines the same models,
pins numpy < 2 and pulls torch-geometric, so it does not install beside the project's stack. The
compressed words have their trailing zero bits dropped (the decoder pads zeros back), so a message
costs its information content plus the range coder's termination: measured 17-20 bits per message
(even for a one-symbol message; a shortest-decodable-prefix search does not shorten it), which
matters at the low rates a 32-use budget carries (32 bits at 0 dB over AWGN).

Example::

    model = EntropyModel.from_pretrained("entropy-model")       # zoo name or folder
    data = model.encode(latents, level=3)                       # list of B bytes objects
    x_hat = model.decode(data, level=3)                         # (B, 4, 8, 8), equal to the quantised path
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["EntropyModel", "FactorizedDensity", "bit_length"]

#: Tail mass left out of each channel's coding support (values beyond it are clamped).
TAIL_MASS = 1e-9
#: Largest |quantised value| a coding table may hold.
MAX_SUPPORT = 1024


def bit_length(data: bytes) -> int:
    """Bits of a bitstream whose trailing zero bits were dropped: the position of its last 1 bit."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    if not data:
        return 0
    last = data[-1]
    return 8 * len(data) - ((last & -last).bit_length() - 1)


def _strip(words: np.ndarray) -> bytes:
    """uint32 words (big-endian bit order) -> bytes without trailing zero bytes."""
    return words.astype(">u4").tobytes().rstrip(b"\x00")


def _words(data: bytes, extra_words: int = 2) -> np.ndarray:
    """Inverse of `_strip`, zero-padded to whole words (plus ``extra_words`` zero words)."""
    n = -(-len(data) // 4) + extra_words
    buf = bytes(data) + b"\x00" * (4 * n - len(data))
    return np.frombuffer(buf, dtype=">u4").astype(np.uint32)


class FactorizedDensity(nn.Module):
    """Ballé et al. 2018 (appendix 6.1) univariate densities, one per channel: a monotone CDF
    ``F(x) = sigmoid(f_K(... f_1(x)))`` with ``f_k(x) = softplus(H_k) x + b_k`` followed by
    ``x + tanh(a_k) tanh(x)`` on all but the last layer (the filters give its flexibility).

    Args:
        channels: number of independent densities.
        filters: hidden widths (default ``(3, 3, 3)``).
        init_scale: initial width of the densities.
    """

    def __init__(self, channels: int, filters: Sequence[int] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1, generator=torch.Generator().manual_seed(i)) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits of the CDF at ``x`` (B, K, N) for the densities ``index`` (B, K) long -> (B, K, N)."""
        h = x.unsqueeze(2)  # (B, K, 1, N)
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            h = torch.einsum("bkij,bkjn->bkin", F.softplus(m[index]), h) + b[index]
            if i < len(self.factors):
                h = h + torch.tanh(self.factors[i][index]) * torch.tanh(h)
        return h.squeeze(2)

    def likelihood(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``P(x) = F(x + 1/2) - F(x - 1/2)`` for ``x`` (B, K, N) (computed on the numerically safe
        side of the median), floored at 1e-9."""
        lower, upper = self.logits(x - 0.5, index), self.logits(x + 0.5, index)
        sign = -torch.sign(lower + upper).detach()
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs().clamp_min(1e-9)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class EntropyModel(ModelMixin, ConfigMixin):
    """Factorized-prior transform coder with ``len(lambdas)`` rate levels (see the module docstring).

    :input x: ``(B, C, h, w)`` float latents (``C = in_channels``, ``(h, w) = sample_size``).
    :output: `forward` -> ``x_hat`` like ``x``, ``bits`` (B,) rate estimate; `encode` -> B bytes objects.

    Parameters:
        in_channels (`int`, defaults to 4): latent channels ``C``.
        sample_size (`int`, defaults to 8): latent side ``h = w``.
        latent_channels (`int`, defaults to 16): channels ``M`` of the coded representation ``y``.
        hidden_channels (`int`, defaults to 64): width of the analysis and synthesis transforms.
        downsample (`int`, defaults to 1): stride-2 stages; ``y`` is ``M x h/2^d x w/2^d``.
        lambdas (`list[float]`): the Lagrange multiplier of each rate level (bits are weighed by it
            against the MSE per value, normalised by the latent kind's variance), large to small.
        filters (`list[int]`, defaults to ``[3, 3, 3]``): hidden widths of the factorized densities.
        in_mean, in_std (`list[float]`, optional): per-channel input normalisation (C,) (set from the
            training latents by the recipe; identity when None).
    """

    @register_to_config
    def __init__(self, in_channels: int = 4, sample_size: int = 8, latent_channels: int = 16,
                 hidden_channels: int = 64, downsample: int = 1,
                 lambdas: Sequence[float] = (1e-2, 5e-3, 2.5e-3, 1.2e-3, 6e-4, 3e-4, 1.5e-4, 7.5e-5, 4e-5, 2e-5),
                 filters: Sequence[int] = (3, 3, 3), in_mean: Sequence[float] | None = None,
                 in_std: Sequence[float] | None = None):
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("sample_size", sample_size, 1),
                                 ("latent_channels", latent_channels, 1), ("hidden_channels", hidden_channels, 1),
                                 ("downsample", downsample, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if sample_size % (2 ** downsample):
            raise ValueError(f"downsample: sample_size {sample_size} is not divisible by 2**{downsample}")
        lam = [float(v) for v in lambdas]
        if not lam or any(not math.isfinite(v) or v <= 0 for v in lam):
            raise ValueError(f"lambdas: expected a non-empty list of positive numbers, got {lambdas!r}")
        hid, m = hidden_channels, latent_channels
        down = []
        for _ in range(downsample):
            down += [nn.Conv2d(hid, hid, 3, stride=2, padding=1), nn.PReLU(hid)]
        self.analysis = nn.Sequential(_conv(in_channels, hid), nn.PReLU(hid), *down, _conv(hid, hid), nn.PReLU(hid),
                                      _conv(hid, m))
        up = []
        for _ in range(downsample):
            up += [nn.ConvTranspose2d(hid, hid, 4, stride=2, padding=1), nn.PReLU(hid)]
        self.synthesis = nn.Sequential(_conv(m, hid), nn.PReLU(hid), *up, _conv(hid, hid), nn.PReLU(hid),
                                       _conv(hid, in_channels))
        # level l: gain g_l = exp(log_gain[l]) (M,); initialised so that smaller lambdas quantise finer
        init = torch.tensor([0.5 * math.log(lam[0] / v) for v in lam]).reshape(-1, 1).expand(len(lam), m)
        self.log_gain = nn.Parameter(init.clone())
        self.density = FactorizedDensity(len(lam) * m, filters)
        mean = torch.zeros(in_channels) if in_mean is None else torch.tensor([float(v) for v in in_mean])
        std = torch.ones(in_channels) if in_std is None else torch.tensor([float(v) for v in in_std])
        if mean.numel() != in_channels or std.numel() != in_channels or (std <= 0).any():
            raise ValueError(f"in_mean, in_std: expected {in_channels} values each (std > 0)")
        self.register_buffer("norm_mean", mean, persistent=False)
        self.register_buffer("norm_std", std, persistent=False)

    # ------------------------------------------------------------------ basics
    @property
    def num_levels(self) -> int:
        """Number of rate levels ``L``."""
        return len(self.config.lambdas)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(M, h', w')`` of the coded representation."""
        s = self.config.sample_size // 2 ** self.config.downsample
        return (self.config.latent_channels, s, s)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Record the per-channel input normalisation (C,), (C,) in the buffers and the config."""
        self.norm_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.norm_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))
        self.register_to_config(in_mean=[float(v) for v in self.norm_mean], in_std=[float(v) for v in self.norm_std])

    def _check_x(self, x: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.sample_size
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"x: expected a (B, {c}, {s}, {s}) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")

    def _levels(self, level, batch: int) -> torch.Tensor:
        lv = torch.as_tensor(level, dtype=torch.long, device=self.log_gain.device).reshape(-1)
        if lv.numel() == 1:
            lv = lv.expand(batch)
        if lv.numel() != batch or (lv < 0).any() or (lv >= self.num_levels).any():
            raise ValueError(f"level: expected an int or (B,) ints in [0, {self.num_levels}), got {level!r}")
        return lv

    def _density_index(self, lv: torch.Tensor) -> torch.Tensor:
        m = self.config.latent_channels
        return lv[:, None] * m + torch.arange(m, device=lv.device)[None]  # (B, M)

    def analyse(self, x: torch.Tensor, level) -> torch.Tensor:
        """Scaled representation ``g_l y`` (B, M, h', w') before quantisation."""
        self._check_x(x)
        lv = self._levels(level, x.shape[0])
        xn = (x - self.norm_mean[None, :, None, None]) / self.norm_std[None, :, None, None]
        return self.analysis(xn) * self.log_gain[lv].exp()[:, :, None, None]

    def synthesise(self, q: torch.Tensor, level) -> torch.Tensor:
        """``x_hat`` (B, C, h, w) from (de)quantised values ``q`` (B, M, h', w') of ``level``."""
        lv = self._levels(level, q.shape[0])
        xn = self.synthesis(q / self.log_gain[lv].exp()[:, :, None, None])
        return xn * self.norm_std[None, :, None, None] + self.norm_mean[None, :, None, None]

    def forward(self, x: torch.Tensor, level, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training (``self.training``: additive uniform noise) or quantised pass.

        Returns ``{"x_hat": (B, C, h, w), "bits": (B,) rate estimate -sum log2 P, "q": (B, M, h', w')}``.
        """
        lv = self._levels(level, x.shape[0])
        y = self.analyse(x, lv)
        if self.training:
            noise = torch.rand(y.shape, generator=generator, device=y.device if generator is None else generator.device)
            q = y + noise.to(y.device) - 0.5
        else:
            q = self.quantise(y, lv)
        p = self.density.likelihood(q.flatten(2), self._density_index(lv))
        bits = -torch.log2(p).sum(dim=(1, 2))
        return {"x_hat": self.synthesise(q, lv), "bits": bits, "q": q}

    # ------------------------------------------------------------------ coding tables
    @torch.no_grad()
    def coding_tables(self, level: int) -> list[tuple[int, np.ndarray]]:
        """Per channel ``m`` of ``level``: ``(lo, pmf)`` with ``pmf`` (K,) float64 over ``lo .. lo+K-1``
        (the support where each tail holds at most `TAIL_MASS`; the tails are folded into the end bins)."""
        lv = self._levels(level, 1)
        grid = torch.arange(-MAX_SUPPORT, MAX_SUPPORT + 1, dtype=torch.float32, device=self.log_gain.device)
        m = self.config.latent_channels
        idx = self._density_index(lv)  # (1, M)
        cdf = torch.sigmoid(self.density.logits((grid - 0.5)[None, None].expand(1, m, -1).contiguous(), idx)
                            .double())[0]  # (M, G): F(k - 1/2)
        last = torch.sigmoid(self.density.logits(torch.full((1, m, 1), MAX_SUPPORT + 0.5, device=grid.device), idx)
                             .double())[0]  # (M, 1)
        edges = torch.cat([cdf, last], dim=1)  # F at k - 1/2 for k = -S .. S+1
        out = []
        for j in range(m):
            e = edges[j]
            lo_i = int(torch.searchsorted(e, torch.tensor(TAIL_MASS, dtype=e.dtype)).clamp(1, e.numel() - 1)) - 1
            hi_i = int(torch.searchsorted(e, torch.tensor(1 - TAIL_MASS, dtype=e.dtype)).clamp(1, e.numel() - 1)) - 1
            hi_i = max(hi_i, lo_i + 1)  # at least two symbols (the coder's categorical needs them)
            if hi_i + 1 >= e.numel():
                lo_i, hi_i = lo_i - 1, hi_i - 1
            pmf = (e[lo_i + 1:hi_i + 2] - e[lo_i:hi_i + 1]).clamp_min(0).cpu().numpy()
            pmf[0] += float(e[lo_i])  # fold the tails in
            pmf[-1] += float(1 - e[hi_i + 1])
            pmf = np.maximum(pmf, 1e-12)
            out.append((lo_i - MAX_SUPPORT, pmf / pmf.sum()))
        return out

    @torch.no_grad()
    def quantise(self, y: torch.Tensor, level, tables: list | None = None) -> torch.Tensor:
        """``round(y)`` clamped to each channel's coding support (the exact values `decode` returns)."""
        lv = self._levels(level, y.shape[0])
        q = torch.round(y)
        if tables is None and lv.unique().numel() > 1:
            return torch.stack([self.quantise(y[i:i + 1], int(lv[i]))[0] for i in range(y.shape[0])])
        tables = tables if tables is not None else self.coding_tables(int(lv[0]))
        lo = torch.tensor([t[0] for t in tables], dtype=q.dtype, device=q.device)[None, :, None, None]
        hi = torch.tensor([t[0] + len(t[1]) - 1 for t in tables], dtype=q.dtype, device=q.device)[None, :, None, None]
        return torch.minimum(torch.maximum(q, lo), hi)

    @staticmethod
    def table_bits(q: torch.Tensor, tables: list) -> torch.Tensor:
        """Rate estimate ``-sum log2 pmf(q)`` (B,) float64 of quantised ``q`` (B, M, h', w') under ``tables``."""
        out = torch.zeros(q.shape[0], dtype=torch.float64)
        for j, (lo, pmf) in enumerate(tables):
            sym = (q[:, j].flatten(1).cpu().long() - lo).numpy()
            out += torch.from_numpy(-np.log2(pmf[sym]).sum(axis=1))
        return out

    # ------------------------------------------------------------------ bitstreams
    @torch.no_grad()
    def compress(self, x: torch.Tensor, level: int) -> tuple[list[bytes], torch.Tensor, torch.Tensor]:
        """Encode ``x`` (B, C, h, w) at ``level``: (one bitstream per sample, the quantised ``q``
        (B, M, h', w'), the rate estimate (B,) in bits under the same tables)."""
        import constriction

        lv = int(self._levels(level, 1)[0])
        tables = self.coding_tables(lv)
        q = self.quantise(self.analyse(x, lv), lv, tables)
        models = [constriction.stream.model.Categorical(pmf.astype(np.float64), perfect=False) for _, pmf in tables]
        out = []
        for i in range(q.shape[0]):
            enc = constriction.stream.queue.RangeEncoder()
            symbols = [(q[i, j].flatten().cpu().long() - lo).numpy().astype(np.int32) for j, (lo, _) in enumerate(tables)]
            for j, sym in enumerate(symbols):
                enc.encode(sym, models[j])
            out.append(_strip(enc.get_compressed()))
        return out, q, self.table_bits(q, tables)

    def encode(self, x: torch.Tensor, level: int) -> list[bytes]:
        """``x`` (B, C, h, w) -> B bitstreams (bytes, trailing zero bits dropped; see `bit_length`)."""
        return self.compress(x, level)[0]

    @torch.no_grad()
    def decode_symbols(self, data: Sequence[bytes], level: int) -> torch.Tensor:
        """B bitstreams of ``level`` -> the quantised values ``q`` (B, M, h', w') float32."""
        import constriction

        if isinstance(data, (bytes, bytearray)) or not all(isinstance(d, (bytes, bytearray)) for d in data):
            raise TypeError("data: expected a sequence of bytes objects (one per sample)")
        lv = int(self._levels(level, 1)[0])
        tables = self.coding_tables(lv)
        models = [constriction.stream.model.Categorical(pmf.astype(np.float64), perfect=False) for _, pmf in tables]
        m, h, w = self.latent_shape
        q = torch.zeros(len(data), m, h, w)
        for i, d in enumerate(data):
            dec = constriction.stream.queue.RangeDecoder(_words(bytes(d)))
            for j, (lo, _) in enumerate(tables):
                q[i, j] = torch.from_numpy(dec.decode(models[j], h * w).astype(np.int64) + lo).float().reshape(h, w)
        return q.to(self.log_gain.device)

    @torch.no_grad()
    def decode(self, data: Sequence[bytes], level: int) -> torch.Tensor:
        """B bitstreams of ``level`` -> ``x_hat`` (B, C, h, w)."""
        return self.synthesise(self.decode_symbols(data, level), level)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' `ModelMixin.save_pretrained` with safetensors only."""
        kwargs["safe_serialization"] = True
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "EntropyModel":
        """Load a folder written by `save_pretrained`, or a zoo name (``"entropy-model"``)."""
        from splitldm.zoo import is_zoo_name, resolve

        if is_zoo_name(pretrained_model_name_or_path):
            pretrained_model_name_or_path = str(resolve(pretrained_model_name_or_path))
        kwargs.setdefault("use_safetensors", True)
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        cfg = model.config
        if cfg.in_mean is not None:
            model.norm_mean.copy_(torch.tensor(cfg.in_mean))
            model.norm_std.copy_(torch.tensor(cfg.in_std))
        return model.eval()
