"""Cost model of a split generation: FLOPs (counted, not guessed), device profiles, channel rate,
latency and energy.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the ``meta`` device, so any
diffusers config (SD-1.5, SD-2.1, SDXL, the tiny model, a user's own config dict, and the DiTs SD3,
PixArt and Flux of `splitldm.pipeline.dit_specs`) is costed in a second without weights. Attention is counted: on meta, `scaled_dot_product_attention` runs through
its math path (``aten.bmm``), which the counter sees (SD-1.5 at 512 px: 126 GFLOP of its 803).

Cost of one task (``es_steps`` denoising steps on the edge server, ``ue_steps`` on the device)::

    latency = t_ES + t_tx + t_UE + fixed_delay                       [s]
    energy  = e_ES + P_tx * t_tx + e_UE                              [J]
    t_X = FLOPs_X / flops_per_s_X,   e_X = FLOPs_X * joules_per_flop_X
    FLOPs_ES = text encoding + es_steps * UNet step,   FLOPs_UE = ue_steps * UNet step + VAE decode

What crosses: the latent after token merging at ratio ``r`` (a fraction ``r`` of its tokens is
dropped) plus side information. Digital (``rho=None``): ``bits = (1-r) n b + r n s`` with ``n``
latent values, ``b`` bits per value (16) and ``s`` side bits per merged value (1, the convention of
the MEG-CVPO authors' code: 0.56 Mbit for an SDXL latent at r = 0.5), sent at the Shannon rate
``B log2(1 + SNR)``. Analog / JSCC seed (``rho`` complex channel uses per real value): ``rho (1-r) n``
channel uses at ``B`` uses per second, side information digital.

Channel (DOMAIN.md section 3): bandwidth 1 MHz, 30 dBm, noise -94 dBm over the band, path loss
``-(35.3 + 37.6 log10 d[m])`` dB, d ~ U[200, 300] m, Rayleigh power gain ``|h|^2 ~ Exp(1)``.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from splitldm.analysis.limits import awgn_capacity

__all__ = [
    "ModelFlops", "count_flops", "model_flops", "unet_step_flops", "dit_step_flops", "text_encode_flops",
    "vae_decode_flops", "model_params",
    "DeviceProfile", "ES_DEFAULT", "UE_DEFAULT", "load_profiles",
    "ChannelParams", "path_loss_db", "snr_db", "channel_rate_bps", "sample_channel_gain_db",
    "TaskCost", "transmission", "split_cost", "download_cost",
]


# --------------------------------------------------------------------------- FLOP counting

def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` (one multiply-add = 2 FLOPs), via `splitldm.pipeline.flops.count_flops`.

    Run it on meta tensors: nothing is computed.
    """
    from splitldm.pipeline.flops import count_flops as _count

    return int(_count(fn, *args, **kwargs)[0])


@dataclass(frozen=True)
class ModelFlops:
    """Counted FLOPs of one generation's parts, batch 1, no classifier-free guidance.

    ``unet_step``: one denoiser evaluation (the UNet, or the transformer of a DiT: SD3, PixArt, Flux;
    also readable as `denoiser_step`); ``text_encode``: all text encoders once; ``vae_decode``: one
    latent -> image decode. ``latent_shape`` (C, h, w) and ``image_shape`` (3, H, W) size what crosses
    (Flux: the unpacked 16-channel latent; its 2x2 packing moves no values).
    """

    model: str
    unet_step: float
    text_encode: float
    vae_decode: float
    latent_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]

    @property
    def denoiser_step(self) -> float:
        """FLOPs of one denoiser evaluation (same as ``unet_step``, named for any family)."""
        return self.unet_step

    @property
    def latent_values(self) -> int:
        return int(np.prod(self.latent_shape))

    @property
    def image_bits(self) -> int:
        """Bits of the generated image at 8 bit per channel (what generate-then-download sends)."""
        return int(np.prod(self.image_shape)) * 8


def _resolve_spec(model):
    """(name, unet config, vae config, text encoder configs, image size) of ``model``."""
    from splitldm.pipeline.models import ModelSpec, get_spec

    if isinstance(model, str):
        spec = get_spec(model)
    elif isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, Mapping):
        for key in ("unet", "vae"):
            if key not in model:
                raise ValueError(f"model: a config dict needs keys 'unet', 'vae' (and optionally "
                                 f"'text_encoders', 'image_size'); missing {key!r}")
        unet, vae = dict(model["unet"]), dict(model["vae"])
        scale = 2 ** (len(vae.get("block_out_channels", (1, 1, 1, 1))) - 1)
        image = int(model.get("image_size", unet.get("sample_size", 64) * scale))
        return (str(model.get("name", "custom")), unet, vae, tuple(model.get("text_encoders", ())), image)
    else:
        raise TypeError(f"model: expected a config name, a ModelSpec or a config dict, got {type(model).__name__}")
    return spec.name, dict(spec.unet), dict(spec.vae), tuple(spec.text_encoders), spec.image_size


def _check_size(image_size, batch_size):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8 or image_size % 8):
        raise ValueError(f"image_size: expected a positive multiple of 8 pixels, got {image_size!r}")


def _meta(factory):
    with torch.device("meta"):
        return factory().eval()


def unet_step_flops(unet_config: Mapping[str, Any], latent_hw: int, batch_size: int = 1,
                    text_len: int = 77) -> int:
    """FLOPs of one UNet evaluation for a diffusers ``UNet2DConditionModel`` config.

    ``latent_hw``: latent side (64 for SD-1.5 at 512 px); ``text_len``: text tokens attended to.
    """
    from diffusers import UNet2DConditionModel

    unet = _meta(lambda: UNet2DConditionModel(**unet_config))
    cfg = unet.config
    b = batch_size
    x = torch.empty(b, cfg.in_channels, latent_hw, latent_hw, device="meta")
    ctx = torch.empty(b, text_len, cfg.cross_attention_dim, device="meta")
    t = torch.full((b,), 10, device="meta", dtype=torch.long)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 size/crop ids
        n_ids = 6
        pooled = cfg.projection_class_embeddings_input_dim - n_ids * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = dict(text_embeds=torch.empty(b, pooled, device="meta"),
                                           time_ids=torch.empty(b, n_ids, device="meta"))
    return count_flops(unet, x, t, encoder_hidden_states=ctx, **kwargs)


def vae_decode_flops(vae_config: Mapping[str, Any], latent_hw: int, batch_size: int = 1) -> int:
    """FLOPs of one ``AutoencoderKL.decode`` of a (B, C, latent_hw, latent_hw) latent."""
    from diffusers import AutoencoderKL

    vae = _meta(lambda: AutoencoderKL(**vae_config))
    z = torch.empty(batch_size, vae.config.latent_channels, latent_hw, latent_hw, device="meta")
    return count_flops(vae.decode, z)


def text_encode_flops(text_config: Mapping[str, Any], batch_size: int = 1, kind: str = "clip",
                      tokens: int | None = None) -> int:
    """FLOPs of one text encoder pass over ``tokens`` tokens.

    ``kind``: ``"clip"`` (`CLIPTextModel`; default ``tokens``: ``max_position_embeddings``),
    ``"clip-proj"`` (`CLIPTextModelWithProjection`, SDXL's / SD3's pooled encoders) or ``"t5"``
    (`T5EncoderModel`, SD3 / PixArt / Flux; ``tokens`` required).
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfg = dict(text_config)
    if kind in ("clip", "clip-proj"):
        cfg.setdefault("vocab_size", 49408)
        cls = CLIPTextModel if kind == "clip" else CLIPTextModelWithProjection
        model = _meta(lambda: cls(CLIPTextConfig(**cfg)))
        tokens = tokens or int(cfg.get("max_position_embeddings", 77))
    elif kind == "t5":
        if not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"tokens: a T5 encoder needs the prompt length in tokens (int >= 1), got {tokens!r}")
        model = _meta(lambda: T5EncoderModel(T5Config(**cfg)))
    else:
        raise ValueError(f"kind: expected 'clip', 'clip-proj' or 't5', got {kind!r}")
    ids = torch.zeros(batch_size, tokens, dtype=torch.long, device="meta")
    return count_flops(model, ids)


def dit_step_flops(spec, latent_hw: int, batch_size: int = 1, text_len: int | None = None) -> int:
    """FLOPs of one transformer evaluation of a `splitldm.pipeline.dit_specs.DiTSpec` (or its name).

    ``latent_hw``: latent side (128 at 1024 px); ``text_len``: text tokens (default: the spec's).
    """
    from splitldm.pipeline.dit_chain import dit_chain
    from splitldm.pipeline.dit_specs import DiTSpec, get_dit_spec

    spec = get_dit_spec(spec) if isinstance(spec, str) else spec
    if not isinstance(spec, DiTSpec):
        raise TypeError(f"spec: expected a DiTSpec or its name, got {type(spec).__name__}")
    model = spec.build_transformer("meta")
    hidden, kwargs = dit_chain(model).meta_inputs(batch_size, latent_hw, latent_hw, text_len or spec.text_length)
    return count_flops(model, hidden, **kwargs)


def _dit_model_flops(spec, image_size, batch_size) -> ModelFlops:
    size = image_size or spec.image_size
    scale = spec.vae_scale_factor
    patch = 2 * scale  # SD3 / PixArt patchify 2x2, Flux packs 2x2
    if size % patch:
        raise ValueError(f"image_size: {size} px is not a multiple of {patch} (VAE {scale}x, 2x2 patches)")
    hw = size // scale
    return ModelFlops(
        model=spec.name,
        unet_step=float(dit_step_flops(spec, hw, batch_size)),
        text_encode=float(sum(text_encode_flops(cfg, batch_size, kind, tokens)
                              for kind, cfg, tokens in spec.text_encoders)),
        vae_decode=float(vae_decode_flops(spec.vae, hw, batch_size)),
        latent_shape=(int(spec.vae["latent_channels"]), hw, hw),
        image_shape=(int(spec.vae.get("out_channels", 3)), size, size),
    )


def _model_flops(model, image_size, batch_size) -> ModelFlops:
    from splitldm.pipeline.dit_specs import DiTSpec, get_dit_spec, is_dit_name

    if is_dit_name(model) or isinstance(model, DiTSpec):
        return _dit_model_flops(get_dit_spec(model) if isinstance(model, str) else model, image_size, batch_size)
    name, unet, vae, texts, default_size = _resolve_spec(model)
    size = image_size or default_size
    scale = 2 ** (len(vae.get("block_out_channels", (1, 1, 1, 1))) - 1)
    if size % scale:
        raise ValueError(f"image_size: {size} px is not a multiple of the VAE downsampling {scale}")
    hw = size // scale
    text_len = int(texts[0].get("max_position_embeddings", 77)) if texts else 77
    return ModelFlops(
        model=name,
        unet_step=float(unet_step_flops(unet, hw, batch_size, text_len)),
        text_encode=float(sum(text_encode_flops(t, batch_size) for t in texts)),
        vae_decode=float(vae_decode_flops(vae, hw, batch_size)),
        latent_shape=(int(vae.get("latent_channels", 4)), hw, hw),
        image_shape=(int(vae.get("out_channels", 3)), size, size),
    )


def model_flops(model="sd15", image_size: int | None = None, batch_size: int = 1) -> ModelFlops:
    """Counted FLOPs of ``model``'s UNet step, text encoding and VAE decode.

    ``model``: a config name (UNets ``tiny``, ``sd15``, ``sd21``, ``sdxl``; DiTs ``sd3``,
    ``sd35-large``, ``pixart``, ``pixart-sigma``, ``flux``, ``flux-schnell``), a
    `splitldm.pipeline.models.ModelSpec` or `splitldm.pipeline.dit_specs.DiTSpec`, or a dict with
    diffusers configs ``{"unet": ..., "vae": ..., "text_encoders": [...], "image_size": px}``.
    ``image_size`` overrides the model's default side in pixels. Named configs are cached (SDXL
    takes ~3 s to count on one core; Flux with T5-XXL ~5 s).
    """
    _check_size(image_size, batch_size)
    if isinstance(model, str):
        from splitldm.pipeline.dit_specs import is_dit_name
        from splitldm.pipeline.models import get_spec

        if is_dit_name(model):
            return _model_flops_cached(model, image_size, batch_size)
        return _model_flops_cached(get_spec(model).name, image_size, batch_size)
    return _model_flops(model, image_size, batch_size)


def model_params(model: str) -> int:
    """Parameters of config ``model``'s weights (denoiser + VAE + text encoders), counted on the meta
    device (no weights are built): UNet names of `splitldm.pipeline.models.SPECS` and DiT names of
    `splitldm.pipeline.dit_specs.DIT_SPECS`. Memory in fp16 is ``2 * model_params(name)`` bytes."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from splitldm.pipeline.dit_specs import get_dit_spec, is_dit_name
    from splitldm.pipeline.models import get_spec

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    if is_dit_name(model):
        spec = get_dit_spec(model)
        n = count(spec.build_transformer("meta")) + count(_meta(lambda: AutoencoderKL(**spec.vae)))
        for kind, cfg, _ in spec.text_encoders:
            if kind == "t5":
                n += count(_meta(lambda: T5EncoderModel(T5Config(**cfg))))
            else:
                cls = CLIPTextModel if kind == "clip" else CLIPTextModelWithProjection
                n += count(_meta(lambda: cls(CLIPTextConfig(**cfg))))
        return n
    from diffusers import UNet2DConditionModel

    spec = get_spec(model)
    n = count(_meta(lambda: UNet2DConditionModel(**spec.unet))) + count(_meta(lambda: AutoencoderKL(**spec.vae)))
    for cfg in spec.text_encoders:
        n += count(_meta(lambda: CLIPTextModel(CLIPTextConfig(**dict({"vocab_size": 49408}, **cfg)))))
    return n


def _disk_cache_path() -> Path:
    import os

    root = os.environ.get("SPLITLDM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "splitldm")
    return Path(root) / "flops.json"


@functools.lru_cache(maxsize=32)
def _model_flops_cached(name: str, image_size: int | None, batch_size: int) -> ModelFlops:
    """Counting SDXL takes seconds: keep counted results on disk, keyed by the exact configs and the
    torch / diffusers / transformers versions (any change re-counts)."""
    import hashlib
    import json

    from importlib.metadata import version

    from splitldm.pipeline.dit_specs import get_dit_spec, is_dit_name
    from splitldm.pipeline.models import get_spec

    spec = get_dit_spec(name) if is_dit_name(name) else get_spec(name)
    key = hashlib.sha256(json.dumps([asdict(spec), image_size, batch_size,
                                     torch.__version__, version("diffusers"), version("transformers")],
                                    sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = _disk_cache_path()
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        d = cache[key]
        return ModelFlops(d["model"], d["unet_step"], d["text_encode"], d["vae_decode"],
                          tuple(d["latent_shape"]), tuple(d["image_shape"]))
    out = _model_flops(name, image_size, batch_size)
    cache[key] = asdict(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    except OSError:  # a read-only home is fine: we just count again next time
        pass
    return out


# --------------------------------------------------------------------------- device profiles

@dataclass(frozen=True)
class DeviceProfile:
    """A compute device: sustained FLOP/s and energy per FLOP (J/FLOP, whole-device power / FLOP/s)."""

    name: str
    flops_per_s: float
    joules_per_flop: float

    def __post_init__(self):
        for f in ("flops_per_s", "joules_per_flop"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{f}: expected a finite number > 0, got {v!r}")

    def time_s(self, flops: float) -> float:
        return float(flops) / self.flops_per_s

    def energy_j(self, flops: float) -> float:
        return float(flops) * self.joules_per_flop

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str | None = None) -> "DeviceProfile":
        if not isinstance(d, Mapping):
            raise TypeError(f"profile: expected a mapping, got {type(d).__name__}")
        need = ("flops_per_s", "joules_per_flop")
        missing = [k for k in need if k not in d]
        if missing:
            raise ValueError(f"profile {name or d.get('name', '?')!r}: missing keys {missing}; "
                             f"a device profile needs {list(need)} (and optionally 'name')")
        unknown = set(d) - {"name", *need}
        if unknown:
            raise ValueError(f"profile {name or d.get('name', '?')!r}: unknown keys {sorted(unknown)}")
        return cls(name=str(d.get("name", name or "device")), flops_per_s=float(d["flops_per_s"]),
                   joules_per_flop=float(d["joules_per_flop"]))


#: Edge server: 100 TFLOP/s sustained (an A100/H100-class GPU in fp16) at 11 pJ/FLOP (about 1.1 kW
#: for the whole server). Chosen so that, for SDXL at 1024 px with guidance, the default 1.8 kJ
#: energy limit binds at 12 steps and the 3 s latency limit binds on weak channels.
ES_DEFAULT = DeviceProfile("edge-server", flops_per_s=100e12, joules_per_flop=1.1e-11)
#: User device: 2x slower, 1.25x more energy per FLOP than the ES (DOMAIN.md section 3).
UE_DEFAULT = DeviceProfile("user-device", flops_per_s=50e12, joules_per_flop=1.25 * 1.1e-11)


def load_profiles(source: str | Path | Mapping[str, Any]) -> tuple[DeviceProfile, DeviceProfile]:
    """(ES, UE) profiles from a YAML file or a mapping ``{"es": {...}, "ue": {...}}``.

    Each entry needs ``flops_per_s`` and ``joules_per_flop``; a missing entry or key is an error
    (no silent defaults in a file that claims to describe hardware).
    """
    if isinstance(source, (str, Path)):
        import yaml

        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"source: no profile file at {path}")
        data = yaml.safe_load(path.read_text())
    else:
        data = source
    if not isinstance(data, Mapping):
        raise ValueError(f"source: expected a mapping with keys 'es' and 'ue', got {type(data).__name__}")
    missing = [k for k in ("es", "ue") if k not in data]
    if missing:
        raise ValueError(f"source: profile file is missing the device(s) {missing}; it needs 'es' and 'ue'")
    return DeviceProfile.from_dict(data["es"], "es"), DeviceProfile.from_dict(data["ue"], "ue")


# --------------------------------------------------------------------------- channel

@dataclass(frozen=True)
class ChannelParams:
    """Downlink ES -> UE. Powers in dBm; ``noise_dbm`` is the noise power over the whole band."""

    bandwidth_hz: float = 1e6
    tx_power_dbm: float = 30.0
    noise_dbm: float = -94.0
    distance_m: tuple[float, float] = (200.0, 300.0)
    rayleigh: bool = True

    def __post_init__(self):
        if not (self.bandwidth_hz > 0 and math.isfinite(self.bandwidth_hz)):
            raise ValueError(f"bandwidth_hz: expected > 0, got {self.bandwidth_hz!r}")
        lo, hi = self.distance_m
        if not (0 < lo <= hi):
            raise ValueError(f"distance_m: expected 0 < min <= max metres, got {self.distance_m!r}")

    @property
    def tx_power_w(self) -> float:
        return 10 ** (self.tx_power_dbm / 10) / 1000

    def mean_snr_db(self, distance_m: float | None = None) -> float:
        """SNR without fading at ``distance_m`` (default: the middle of the range), dB."""
        d = distance_m if distance_m is not None else 0.5 * sum(self.distance_m)
        return snr_db(self.tx_power_dbm, self.noise_dbm, d)


def path_loss_db(distance_m):
    """Path gain in dB (negative): ``-(35.3 + 37.6 log10 d)``, d in metres."""
    d = np.asarray(distance_m, dtype=float)
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"distance_m: expected finite distances > 0 m, got {distance_m!r}")
    out = -(35.3 + 37.6 * np.log10(d))
    return float(out) if out.ndim == 0 else out


def snr_db(tx_power_dbm, noise_dbm, distance_m, fading_power=1.0):
    """Receive SNR in dB: power + path gain + 10 log10 |h|^2 - noise."""
    g = np.asarray(fading_power, dtype=float)
    if np.any(g < 0) or np.any(~np.isfinite(g)):
        raise ValueError(f"fading_power: expected |h|^2 >= 0, got {fading_power!r}")
    out = tx_power_dbm + path_loss_db(distance_m) + 10 * np.log10(np.maximum(g, 1e-30)) - noise_dbm
    return float(out) if np.ndim(out) == 0 else out


def channel_rate_bps(bandwidth_hz: float, snr_db_value) -> float:
    """Shannon rate ``B log2(1 + SNR)`` in bit/s."""
    if not bandwidth_hz > 0:
        raise ValueError(f"bandwidth_hz: expected > 0, got {bandwidth_hz!r}")
    s = np.asarray(snr_db_value, dtype=float)
    if np.any(np.isnan(s)):
        raise ValueError("snr_db: NaN")
    out = bandwidth_hz * np.asarray(awgn_capacity(s))
    return float(out) if out.ndim == 0 else out


def sample_channel_gain_db(rng: np.random.Generator, channel: ChannelParams = ChannelParams(), size=None):
    """SNR draws in dB: distance ~ U[d_min, d_max], path loss, Rayleigh ``|h|^2 ~ Exp(1)``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy Generator, got {type(rng).__name__}")
    d = rng.uniform(*channel.distance_m, size=size)
    fade = rng.exponential(1.0, size=size) if channel.rayleigh else np.ones_like(d)
    return snr_db(channel.tx_power_dbm, channel.noise_dbm, d, fade)


# --------------------------------------------------------------------------- task costs

@dataclass(frozen=True)
class TaskCost:
    """Latency (s) and energy (J) of one task with their parts; ``bits`` / ``channel_uses`` sent."""

    latency_s: float
    energy_j: float
    parts: dict[str, float] = field(default_factory=dict)
    bits: float = 0.0
    channel_uses: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def transmission(latent_values: int, merge_ratio: float = 0.0, rho: float | None = None,
                 bits_per_value: int = 16, side_bits_per_merged_value: float = 1.0) -> tuple[float, float]:
    """(digital bits, complex channel uses) to send a latent of ``latent_values`` real values.

    Token merging drops a fraction ``merge_ratio`` of the values; side information costs
    ``side_bits_per_merged_value`` bits per dropped value. ``rho=None``: everything digital at
    ``bits_per_value``; else the kept values go analog at ``rho`` channel uses per value.
    """
    if not (0.0 <= merge_ratio < 1.0) or not math.isfinite(merge_ratio):
        raise ValueError(f"merge_ratio: expected 0 <= ratio < 1, got {merge_ratio!r}")
    if rho is not None and not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho: expected channel uses per value > 0, got {rho!r}")
    if latent_values <= 0:
        raise ValueError(f"latent_values: expected > 0, got {latent_values!r}")
    kept = (1.0 - merge_ratio) * latent_values
    side = merge_ratio * latent_values * side_bits_per_merged_value
    if rho is None:
        return kept * bits_per_value + side, 0.0
    return side, rho * kept


def _check_steps(name, v):
    if not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {v!r}")


def split_cost(flops: ModelFlops, es_steps: int, ue_steps: int = 0, merge_ratio: float = 0.0,
               snr_db: float = 0.0, rho: float | None = None, *, es: DeviceProfile = ES_DEFAULT,
               ue: DeviceProfile = UE_DEFAULT, channel: ChannelParams = ChannelParams(),
               guidance: bool = True, fixed_delay_s: float = 0.2, bits_per_value: int = 16,
               side_bits_per_merged_value: float = 1.0) -> TaskCost:
    """Latency and energy of one split generation (see the module docstring for the formulas).

    ``snr_db``: receive SNR of this task (e.g. from `sample_channel_gain_db`); ``guidance``: each
    step evaluates the UNet twice (classifier-free guidance).
    """
    _check_steps("es_steps", es_steps)
    _check_steps("ue_steps", ue_steps)
    if es_steps + ue_steps < 1:
        raise ValueError("es_steps, ue_steps: at least one denoising step in total")
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db: expected a finite SNR in dB, got {snr_db!r}")
    if fixed_delay_s < 0:
        raise ValueError(f"fixed_delay_s: expected >= 0, got {fixed_delay_s!r}")
    per_step = flops.unet_step * (2 if guidance else 1)
    f_es = flops.text_encode + es_steps * per_step
    f_ue = ue_steps * per_step + flops.vae_decode
    bits, uses = transmission(flops.latent_values, merge_ratio, rho, bits_per_value, side_bits_per_merged_value)
    rate = channel_rate_bps(channel.bandwidth_hz, snr_db)
    t_tx = bits / rate + uses / channel.bandwidth_hz
    parts = dict(es_compute_s=es.time_s(f_es), tx_s=t_tx, ue_compute_s=ue.time_s(f_ue), fixed_s=fixed_delay_s,
                 es_energy_j=es.energy_j(f_es), tx_energy_j=channel.tx_power_w * t_tx, ue_energy_j=ue.energy_j(f_ue),
                 es_flops=f_es, ue_flops=f_ue)
    latency = parts["es_compute_s"] + t_tx + parts["ue_compute_s"] + fixed_delay_s
    energy = parts["es_energy_j"] + parts["tx_energy_j"] + parts["ue_energy_j"]
    return TaskCost(latency, energy, parts, bits, uses)


def download_cost(flops: ModelFlops, steps: int, snr_db: float = 0.0, *, es: DeviceProfile = ES_DEFAULT,
                  channel: ChannelParams = ChannelParams(), guidance: bool = True,
                  fixed_delay_s: float = 0.2, image_bits: int | None = None) -> TaskCost:
    """Generate-then-download: the ES runs everything and sends the 8-bit image (``image_bits``)."""
    _check_steps("steps", steps)
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db: expected a finite SNR in dB, got {snr_db!r}")
    per_step = flops.unet_step * (2 if guidance else 1)
    f_es = flops.text_encode + steps * per_step + flops.vae_decode
    bits = float(image_bits if image_bits is not None else flops.image_bits)
    t_tx = bits / channel_rate_bps(channel.bandwidth_hz, snr_db)
    parts = dict(es_compute_s=es.time_s(f_es), tx_s=t_tx, ue_compute_s=0.0, fixed_s=fixed_delay_s,
                 es_energy_j=es.energy_j(f_es), tx_energy_j=channel.tx_power_w * t_tx, ue_energy_j=0.0,
                 es_flops=f_es, ue_flops=0.0)
    return TaskCost(parts["es_compute_s"] + t_tx + fixed_delay_s, parts["es_energy_j"] + parts["tx_energy_j"],
                    parts, bits, 0.0)
