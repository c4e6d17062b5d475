"""Stable Diffusion-family components built offline from named configs, and pipeline loading.

Three ways to get a pipeline:

* `build_pipeline("tiny-random", seed=0)`: the tiny SD architecture with seeded random weights
  (tests, and the architecture the shipped checkpoint uses);
* `load_pipeline("tiny")`: a shipped checkpoint from ``checkpoints/`` (offline);
* `load_pipeline("/path/to/diffusers/folder")` or a hub id when online: any real
  `StableDiffusionPipeline` (SD-1.5, SD-2.1, ...).

`build_unet("sd15", device="meta")` and friends build the real SD-1.5 / SD-2.1 / SDXL
architectures without weights, which is what FLOP counting and cut tables need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from splitldm.pipeline.tokenizer import DEFAULT_WORDS, build_clip_tokenizer, build_t5_tokenizer
from splitldm.checks import check_pipeline_folder
from splitldm.zoo import checkpoints_dir

#: Noise schedule shared by SD-1.x / SD-2.x (``scaled_linear`` betas).
SD_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)

SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
    "euler": (EulerDiscreteScheduler, dict(steps_offset=1)),
    "euler-a": (EulerAncestralDiscreteScheduler, dict(steps_offset=1)),
    "dpm++": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2, steps_offset=1)),
    "lcm": (LCMScheduler, dict(clip_sample=False, set_alpha_to_one=True, steps_offset=1)),
    "pndm": (PNDMScheduler, dict(skip_prk_steps=True, steps_offset=1)),
}

#: Schedulers of the flow-matching families (SD3, Flux), by short name. The flow-sigma solvers take
#: their shift from the pipeline's own scheduler config (``shift`` -> ``flow_shift``).
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow-dpm++": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2,
                                                       use_flow_sigmas=True, prediction_type="flow_prediction")),
    "flow-unipc": ("UniPCMultistepScheduler", dict(use_flow_sigmas=True, prediction_type="flow_prediction")),
}


@dataclass(frozen=True)
class ModelSpec:
    """The architecture of one SD-family model: diffusers / transformers config dicts.

    ``text_encoders`` lists CLIP text configs (SDXL has two). ``image_size`` is the default image
    side in pixels; the latent side is ``image_size // 2**(len(vae block_out_channels) - 1)``.
    """

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[dict[str, Any], ...]
    image_size: int
    scheduler: str = "ddim"
    added_cond: dict[str, int] = field(default_factory=dict)  # SDXL: text_embeds / time_ids widths

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor


_SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
_OPENCLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                   num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")
_OPENCLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                      num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu")

SPECS: dict[str, ModelSpec] = {
    # 64x64 RGB images -> 4x8x8 latents (SD's 8x downsampling), cross-attention at two resolutions.
    "tiny": ModelSpec(
        name="tiny",
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64, 64),  # ~1.5 M parameters: trains on a CPU, ships in a few MB
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            block_out_channels=(16, 16, 32, 64),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=4, sample_size=64, scaling_factor=1.0,
        ),
        text_encoders=(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu"),),
        image_size=64,
    ),
    # The smallest complete SD architecture: 32x32 images -> 4x4x4 latents. For fast tests.
    "micro": ModelSpec(
        name="micro",
        unet=dict(
            sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            block_out_channels=(16, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=8, sample_size=32, scaling_factor=1.0,
        ),
        text_encoders=(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16, hidden_act="quick_gelu"),),
        image_size=32,
    ),
    "sd15": ModelSpec(
        name="sd15",
        unet=dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8,
        ),
        vae=dict(_SD_VAE, sample_size=512),
        text_encoders=(_CLIP_L,),
        image_size=512,
    ),
    "sd21": ModelSpec(
        name="sd21",
        unet=dict(
            sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        ),
        vae=dict(_SD_VAE, sample_size=768),
        text_encoders=(_OPENCLIP_H,),
        image_size=768,
    ),
    "sdxl": ModelSpec(
        name="sdxl",
        unet=dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        vae=dict(_SD_VAE, sample_size=1024, scaling_factor=0.13025),
        text_encoders=(_CLIP_L, _OPENCLIP_BIGG),
        image_size=1024,
        added_cond={"text_embeds": 1280, "time_ids": 6},
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The `ModelSpec` registered under ``name`` (``micro``, ``tiny``, ``sd15``, ``sd21``, ``sdxl``)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    key = name.removesuffix("-random")
    if key not in SPECS:
        raise ValueError(f"name: unknown model config {name!r}; choose from {sorted(SPECS)}")
    return SPECS[key]


def make_scheduler(name: str, base_config: dict[str, Any] | None = None):
    """A diffusers scheduler by short name (``ddim``, ``euler``, ``euler-a``, ``dpm++``, ``lcm``, ``pndm``).

    ``base_config`` (e.g. an existing scheduler's ``config``) supplies the noise schedule, so a real
    pipeline keeps its betas; the short name's own settings override the solver options.
    """
    if isinstance(name, str) and name in FLOW_SCHEDULERS:
        return _make_flow_scheduler(name, base_config)
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise ValueError(f"scheduler: unknown scheduler {name!r}; choose from {sorted(SCHEDULERS) + sorted(FLOW_SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    schedule = dict(SD_SCHEDULE)
    if base_config is not None:
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                    "prediction_type", "timestep_spacing"):
            if key in base_config and base_config[key] is not None:
                schedule[key] = base_config[key]
    return cls(**schedule, **extra)


_FLOW_KEYS = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
              "base_image_seq_len", "max_image_seq_len", "time_shift_type")


def _make_flow_scheduler(name: str, base_config: dict[str, Any] | None):
    import diffusers

    cls_name, extra = FLOW_SCHEDULERS[name]
    base = {k: base_config[k] for k in _FLOW_KEYS if base_config and base_config.get(k) is not None}
    if cls_name == "FlowMatchEulerDiscreteScheduler":
        return diffusers.FlowMatchEulerDiscreteScheduler(**base)
    kwargs = dict(extra, num_train_timesteps=base.get("num_train_timesteps", 1000),
                  flow_shift=float(base.get("shift", 1.0)))
    if base.get("use_dynamic_shifting"):  # Flux: the shift comes from the image size (mu) each call
        kwargs.update(use_dynamic_shifting=True, time_shift_type="exponential")
    return getattr(diffusers, cls_name)(**kwargs)


def build_unet(name: str = "tiny", seed: int = 0, device: str | torch.device = "cpu") -> UNet2DConditionModel:
    """The UNet of config ``name``; seeded random weights, or no weights on ``device="meta"``."""
    spec = get_spec(name)
    return _build(lambda: UNet2DConditionModel(**spec.unet), seed, device)


def build_vae(name: str = "tiny", seed: int = 0, device: str | torch.device = "cpu") -> AutoencoderKL:
    """The AutoencoderKL of config ``name``."""
    spec = get_spec(name)
    return _build(lambda: AutoencoderKL(**spec.vae), seed, device)


def build_text_encoder(name: str = "tiny", seed: int = 0, vocab_size: int | None = None,
                       device: str | torch.device = "cpu", index: int = 0) -> CLIPTextModel:
    """The CLIP text encoder of config ``name`` (``index`` picks SDXL's second encoder)."""
    spec = get_spec(name)
    cfg = dict(spec.text_encoders[index])
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    cfg.setdefault("vocab_size", 49408)
    if cfg["vocab_size"] < 49408:  # our own tokenizer: BOS/EOS are ids 0/1 (see splitldm.pipeline.tokenizer)
        cfg.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return _build(lambda: CLIPTextModel(CLIPTextConfig(**cfg)), seed, device)


def _build(factory, seed: int, device):
    if str(device) == "meta":
        with torch.device("meta"):
            return factory().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.to(device).eval()


# ---------------------------------------------------------------- tiny pipelines of every family
# Seeded random weights, built offline in well under a second; sized like diffusers' own tests'
# ``get_dummy_components()`` but with the real latent layouts (SD3 / Flux: 16 latent channels, 8x VAE).
_TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=16, hidden_act="gelu", projection_dim=32, layer_norm_eps=1e-5)
_TINY_T5 = dict(d_model=64, d_kv=16, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8,
                relative_attention_max_distance=16, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
                is_encoder_decoder=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _tiny_vae(latent_channels: int = 4, **kwargs) -> dict[str, Any]:
    """An 8x AutoencoderKL of 16-channel blocks (64 px images <-> ``latent_channels`` x 8 x 8)."""
    return dict(in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
                block_out_channels=(16, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64, **kwargs)


def _tiny_clip(seed: int, vocab_size: int, projection: bool):
    from transformers import CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**_TINY_CLIP, vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return _build(lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg), seed, "cpu")


def _tiny_t5(seed: int, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return _build(lambda: T5EncoderModel(T5Config(**_TINY_T5, vocab_size=vocab_size)), seed, "cpu")


def _tiny_sdxl(seed: int, scheduler: str | None, words):
    from diffusers import StableDiffusionXLPipeline

    tok = build_clip_tokenizer(words, model_max_length=_TINY_CLIP["max_position_embeddings"])
    unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                use_linear_projection=True, transformer_layers_per_block=(1, 2), norm_num_groups=8,
                cross_attention_dim=64,  # the two encoders' hidden states side by side: 32 + 32
                addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 32)  # 6 time ids x 8 + pooled (projection) 32
    return StableDiffusionXLPipeline(
        vae=_build(lambda: AutoencoderKL(**_tiny_vae(scaling_factor=0.13025, force_upcast=False)), seed, "cpu"),
        text_encoder=_tiny_clip(seed + 1, len(tok), projection=False),
        text_encoder_2=_tiny_clip(seed + 2, len(tok), projection=True),
        tokenizer=tok, tokenizer_2=tok,
        unet=_build(lambda: UNet2DConditionModel(**unet), seed + 3, "cpu"),
        scheduler=make_scheduler(scheduler or "euler", dict(SD_SCHEDULE, timestep_spacing="leading")),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def _tiny_sd3(seed: int, scheduler: str | None, words):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = build_clip_tokenizer(words, model_max_length=_TINY_CLIP["max_position_embeddings"])
    t5_tok = build_t5_tokenizer(words)
    transformer = dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                       attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                       joint_attention_dim=64,  # T5 width; the CLIP pair (32 + 32) is zero-padded to it
                       pooled_projection_dim=64, pos_embed_max_size=16)
    base = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return StableDiffusion3Pipeline(
        vae=_build(lambda: AutoencoderKL(**_tiny_vae(16, use_quant_conv=False, use_post_quant_conv=False,
                                                     shift_factor=0.0609, scaling_factor=1.5035)), seed, "cpu"),
        text_encoder=_tiny_clip(seed + 1, len(tok), projection=True), tokenizer=tok,
        text_encoder_2=_tiny_clip(seed + 2, len(tok), projection=True), tokenizer_2=tok,
        text_encoder_3=_tiny_t5(seed + 3, len(t5_tok)), tokenizer_3=t5_tok,
        transformer=_build(lambda: SD3Transformer2DModel(**transformer), seed + 4, "cpu"),
        scheduler=make_scheduler(scheduler, dict(base.config)) if scheduler else base,
    )


def _tiny_pixart(seed: int, scheduler: str | None, words, sigma: bool = False):
    from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5_tok = build_t5_tokenizer(words)
    transformer = dict(sample_size=32,  # 32 -> the 256 px aspect-ratio bins (resolution binning works)
                       num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
                       caption_channels=64, in_channels=4, out_channels=8,  # learned sigma: 2 x 4
                       cross_attention_dim=24, attention_bias=True, activation_fn="gelu-approximate",
                       num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                       norm_eps=1e-6)
    schedule = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(
        tokenizer=t5_tok, text_encoder=_tiny_t5(seed + 1, len(t5_tok)),
        vae=_build(lambda: AutoencoderKL(**_tiny_vae(scaling_factor=0.18215)), seed, "cpu"),
        transformer=_build(lambda: PixArtTransformer2DModel(**transformer), seed + 2, "cpu"),
        scheduler=make_scheduler(scheduler or "dpm++", schedule),
    )


def _tiny_flux(seed: int, scheduler: str | None, words, dev: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok = build_clip_tokenizer(words, model_max_length=_TINY_CLIP["max_position_embeddings"])
    t5_tok = build_t5_tokenizer(words)
    transformer = dict(patch_size=1, in_channels=64,  # 16 latent channels packed 2 x 2
                       num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                       joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
                       guidance_embeds=dev)
    # FLUX.1-dev: guidance-distilled, dynamic shift; FLUX.1-schnell: no guidance input, fixed shift 1.
    base = (FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096) if dev
            else FlowMatchEulerDiscreteScheduler(shift=1.0))
    return FluxPipeline(
        vae=_build(lambda: AutoencoderKL(**_tiny_vae(16, use_quant_conv=False, use_post_quant_conv=False,
                                                     shift_factor=0.1159, scaling_factor=0.3611)), seed, "cpu"),
        text_encoder=_tiny_clip(seed + 1, len(tok), projection=False), tokenizer=tok,
        text_encoder_2=_tiny_t5(seed + 2, len(t5_tok)), tokenizer_2=t5_tok,
        transformer=_build(lambda: FluxTransformer2DModel(**transformer), seed + 3, "cpu"),
        scheduler=make_scheduler(scheduler, dict(base.config)) if scheduler else base,
    )


#: Tiny random pipelines of the other families, by `build_pipeline` name. Images: 64 px (PixArt's
#: default is 256 px, its smallest aspect-ratio bin; Flux's default is 1024 px: pass ``height``/``width``).
TINY_FAMILIES: dict[str, Any] = {
    "sdxl-tiny-random": _tiny_sdxl,
    "sd3-tiny-random": _tiny_sd3,
    "pixart-tiny-random": _tiny_pixart,
    "pixart-sigma-tiny-random": lambda seed, scheduler, words: _tiny_pixart(seed, scheduler, words, sigma=True),
    "flux-tiny-random": _tiny_flux,
    "flux-schnell-tiny-random": lambda seed, scheduler, words: _tiny_flux(seed, scheduler, words, dev=False),
}


def build_pipeline(name: str = "tiny-random", seed: int = 0, scheduler: str | None = None,
                   words=DEFAULT_WORDS):
    """A complete pipeline of config ``name`` with seeded random weights, offline.

    ``tiny-random`` / ``micro-random`` (and the spec names, e.g. ``sd15-random``) give a
    `StableDiffusionPipeline`; the `TINY_FAMILIES` names give the other families' tiny pipelines
    (``sdxl-tiny-random``, ``sd3-tiny-random``, ``pixart-tiny-random``, ``pixart-sigma-tiny-random``,
    ``flux-tiny-random`` (dev-like), ``flux-schnell-tiny-random``). Same ``seed``, same weights.
    Tokenizers are built from ``words`` (see `splitldm.pipeline.tokenizer`). ``scheduler``: a
    `SCHEDULERS` name, or a `FLOW_SCHEDULERS` name for SD3 / Flux. SD-1.5-size configs build too but
    take gigabytes of memory.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if isinstance(name, str) and name in TINY_FAMILIES:
        pipe = TINY_FAMILIES[name](seed, scheduler, words)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    spec = get_spec(name)
    tokenizer = build_clip_tokenizer(words, model_max_length=spec.text_encoders[0]["max_position_embeddings"])
    pipe = StableDiffusionPipeline(
        vae=build_vae(spec.name, seed),
        text_encoder=build_text_encoder(spec.name, seed + 1, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        unet=build_unet(spec.name, seed + 2),
        scheduler=make_scheduler(scheduler or spec.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: Shipped checkpoint names -> folder under `checkpoints_dir()`.
SHIPPED = {"tiny": "tiny", "tiny-lcm": "tiny-lcm"}

_REQUIRED_FILES = ("model_index.json", "vae/config.json")


def _folder_family(path: Path):
    """Check a diffusers folder (model index, VAE, denoiser, tokenizer) and return its `Family`."""
    import json

    from splitldm.pipeline.families import FAMILIES, supported_pipelines

    missing = [f for f in _REQUIRED_FILES if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"name_or_path: {path} is not a complete diffusers pipeline folder; missing {missing}")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"name_or_path: {path}/model_index.json is not valid JSON: {exc}") from exc
    cls = index.get("_class_name")
    family = next((f for f in FAMILIES.values() if cls in f.pipeline_classes), None)
    if family is None:
        raise ValueError(f"name_or_path: {path} holds a {cls}, not a supported pipeline; supported: "
                         f"{', '.join(supported_pipelines())}")
    denoiser = f"{family.denoiser_name}/config.json"
    missing = [f for f in (denoiser,) + tuple(f"{n}/config.json" for n in family.text_encoder_names[:1])
               if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"name_or_path: {path} is not a complete diffusers pipeline folder; missing {missing}")
    tokenizers = [k for k, v in index.items() if k.startswith("tokenizer") and isinstance(v, list) and v[0]]
    absent = [k for k in tokenizers if not (path / k).is_dir()]
    if not tokenizers or absent:
        raise FileNotFoundError(f"name_or_path: {path} has no tokenizer ({absent or 'none in model_index.json'}); "
                                "a split pipeline encodes prompts on the ES (and, with condition='prompt', the UE): "
                                "save the pipeline with its tokenizer(s)")
    return family


def load_pipeline(name_or_path: str | os.PathLike = "tiny", *, scheduler: str | None = None,
                  torch_dtype: torch.dtype | None = None, local_files_only: bool | None = None):
    """Load a pipeline of any supported family: a shipped name, a local diffusers folder, or a hub id.

    Shipped names (``tiny``, ``tiny-lcm``) resolve to folders in `checkpoints_dir()`. ``*-random``
    names build seeded random weights (`build_pipeline`). A local folder must hold a diffusers
    layout (``model_index.json`` naming a `supported_pipelines()` class: SD, SDXL, SD3, PixArt,
    Flux) with safetensors weights (no pickles are ever loaded) and its tokenizer(s). A hub id is only
    tried when it is not a local path and ``HF_HUB_OFFLINE`` is unset; otherwise a clear error is raised.
    ``scheduler``: a `SCHEDULERS` / `FLOW_SCHEDULERS` name replacing the saved scheduler (schedule kept).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a name or a path, got {type(name_or_path).__name__}")
    name = str(name_or_path)
    if name.endswith("-random"):
        return build_pipeline(name, scheduler=scheduler)
    if name in SHIPPED:
        path = checkpoints_dir() / SHIPPED[name]
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"name_or_path: shipped checkpoint {name!r} not found at {path}; "
                f"use 'tiny-random' for the tiny architecture with random weights")
    else:
        path = Path(name).expanduser()
    family = None
    if path.exists():
        check_pipeline_folder(path, require_index=False)  # no symlink out, sane sizes: before any allocation
        family = _folder_family(path)
        local_files_only = True
        source = str(path)
    else:
        looks_local = name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if looks_local or offline or local_files_only:
            why = "HF_HUB_OFFLINE is set" if offline else "no such folder"
            raise FileNotFoundError(f"name_or_path: {name!r} is not a local pipeline folder ({why})")
        source = name
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = dict(torch_dtype=torch_dtype, use_safetensors=True,
                                  local_files_only=bool(local_files_only))
    if family is None or family.name == "sd":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValueError(f"name_or_path: could not load a pipeline from {source!r}: {exc}") from exc
    if scheduler is not None:
        pipe = with_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_scheduler(pipe, scheduler: str):
    """A new pipeline of the same class that shares ``pipe``'s modules but uses scheduler ``scheduler``.

    ``scheduler``: a `SCHEDULERS` name (SD, SDXL, PixArt) or a `FLOW_SCHEDULERS` name (SD3, Flux);
    the noise schedule (betas, shift) of ``pipe.scheduler`` is kept.
    """
    import inspect

    components = dict(pipe.components, scheduler=make_scheduler(scheduler, dict(pipe.scheduler.config)))
    params = inspect.signature(type(pipe).__init__).parameters
    kwargs = {k: v for k, v in components.items() if k in params}
    for key, value in pipe.config.items():  # registered non-module options (force_zeros_for_empty_prompt, ...)
        if key in params and key not in kwargs and not key.startswith("_") and not isinstance(value, (list, tuple)):
            kwargs[key] = value
    if "add_watermarker" in params:
        kwargs["add_watermarker"] = getattr(pipe, "watermark", None) is not None
    new = type(pipe)(**kwargs)
    new.set_progress_bar_config(disable=True)
    return new
