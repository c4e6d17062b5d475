"""splitldm: mobile edge generation with Stable Diffusion-family latent diffusion models.

Split a diffusers pipeline between an edge server (ES) and a device (UE), across denoising steps or
inside one UNet pass, and send what crosses through a learned, channel-protected `Link`.
"""

from .baselines import AnalogLink, DigitalConfig, DigitalLink, best_digital_config, measure_bler
from .chain import Carry, Cut, UNetChain, format_cut_table
from .channels import (
    AWGN,
    CSI_MODES,
    SNR_DB_RANGE,
    Channel,
    ChannelState,
    RayleighBlockFading,
    RayleighFastFading,
    complex_to_real,
    normalize_power,
    real_to_complex,
)
from .codec import SeedCodec
from .codec_bank import SeedCodecBank
from .costs import (
    ES_DEFAULT,
    UE_DEFAULT,
    ChannelParams,
    DeviceProfile,
    ModelFlops,
    TaskCost,
    download_cost,
    load_profiles,
    model_flops,
    split_cost,
)
from .evaluate import evaluate  # the function shadows the submodule name, as intended
from .flops import count_flops
from .limits import (
    LatentCovariance,
    WaterFilling,
    awgn_capacity,
    capacity,
    gaussian_opta_mse,
    latent_covariance,
    opta_mse,
    rayleigh_ergodic_capacity,
    reverse_water_filling,
    separation_bits,
)
from .link import Link, LinkStage, SerializeBytes
from .merging import MergePlan, TokenMerge, apply_patch, is_patched, merge_tokens, plan_merge, remove_patch, unmerge_tokens
from .models import (
    SPECS,
    ModelSpec,
    build_pipeline,
    build_text_encoder,
    build_unet,
    build_vae,
    get_spec,
    load_pipeline,
    make_scheduler,
    with_scheduler,
)
from .payload import Payload, PayloadError, StageRecord
from .quality import QualityTable, build_quality_table
from .split import SplitOutput, SplitPipeline, handoff_timesteps, latent_space_fingerprint, model_fingerprint
from .tokenizer import build_clip_tokenizer

__version__ = "0.1.0"


def __getattr__(name):
    # Metrics and the evaluation sweep pull in torchmetrics / datasets: import them on first use.
    if name in ("psnr", "ssim", "fid", "frechet_distance", "prompt_adherence", "load_classifier"):
        from . import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'splitldm' has no attribute {name!r}")
