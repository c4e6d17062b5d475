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

from splitldm.pipeline.tokenizer import DEFAULT_WORDS, build_clip_tokenizer
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
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise ValueError(f"scheduler: unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    schedule = dict(SD_SCHEDULE)
    if base_config is not None:
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                    "prediction_type", "timestep_spacing"):
            if key in base_config and base_config[key] is not None:
                schedule[key] = base_config[key]
    return cls(**schedule, **extra)


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


def build_pipeline(name: str = "tiny-random", seed: int = 0, scheduler: str | None = None,
                   words=DEFAULT_WORDS) -> StableDiffusionPipeline:
    """A complete `StableDiffusionPipeline` of config ``name`` with seeded random weights, offline.

    Same ``seed``, same weights. The tokenizer is built from ``words`` (see `splitldm.pipeline.tokenizer`).
    Meant for the tiny config; SD-1.5-size configs build too but take gigabytes of memory.
    """
    spec = get_spec(name)
    if not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
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

_REQUIRED_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")


def load_pipeline(name_or_path: str | os.PathLike = "tiny", *, scheduler: str | None = None,
                  torch_dtype: torch.dtype | None = None, local_files_only: bool | None = None,
                  ) -> StableDiffusionPipeline:
    """Load a `StableDiffusionPipeline`: a shipped name, a local diffusers folder, or a hub id.

    Shipped names (``tiny``, ``tiny-lcm``) resolve to folders in `checkpoints_dir()`. ``*-random``
    names build seeded random weights (`build_pipeline`). A local folder must hold a diffusers
    layout with safetensors weights (no pickles are ever loaded). A hub id is only tried when it is
    not a local path and ``HF_HUB_OFFLINE`` is unset; otherwise a clear error is raised.
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
    if path.exists():
        missing = [f for f in _REQUIRED_FILES if not (path / f).exists()]
        if missing:
            raise FileNotFoundError(f"name_or_path: {path} is not a complete diffusers pipeline folder; missing {missing}")
        local_files_only = True
        source = str(path)
    else:
        looks_local = name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if looks_local or offline or local_files_only:
            why = "HF_HUB_OFFLINE is set" if offline else "no such folder"
            raise FileNotFoundError(f"name_or_path: {name!r} is not a local pipeline folder ({why})")
        source = name
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=torch_dtype, use_safetensors=True, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, local_files_only=bool(local_files_only),
        )
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValueError(f"name_or_path: could not load a pipeline from {source!r}: {exc}") from exc
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_scheduler(pipe: StableDiffusionPipeline, scheduler: str) -> StableDiffusionPipeline:
    """A new pipeline that shares ``pipe``'s modules but uses scheduler ``scheduler``."""
    components = dict(pipe.components, scheduler=make_scheduler(scheduler, dict(pipe.scheduler.config)))
    new = type(pipe)(**components, requires_safety_checker=bool(pipe.config.get("requires_safety_checker", False)))
    new.set_progress_bar_config(disable=True)
    return new
