"""splitldm: mobile edge generation with Stable Diffusion-family latent diffusion models.

Split a diffusers pipeline between an edge server (ES) and a device (UE), across denoising steps or
inside one denoiser pass, and send what crosses through a learned, channel-protected `Link`.

The package reads in data-flow order: `splitldm.pipeline` (prompt -> ES -> UE -> image),
`splitldm.link` (what crosses), `splitldm.tome` (token merging), `splitldm.analysis` (limits, costs),
`splitldm.eval` (metrics, sweeps, demo), `splitldm.rl` (controllers), `splitldm.recipes` (training),
`splitldm.zoo` (shipped models), `splitldm.cli` (the command).

Importing it is cheap: the public names below are resolved on first use (as diffusers does), so
``import splitldm`` does not import diffusers, Lightning or Sionna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> module that defines it. `__all__` is the curated face; the other entries stay importable
# from the top level for code written against 0.1 (they are documented in their own modules).
_CURATED = {
    "load_pipeline": "splitldm.pipeline.models",
    "build_pipeline": "splitldm.pipeline.models",
    "SplitPipeline": "splitldm.pipeline.split",
    "SplitOutput": "splitldm.pipeline.split",
    "UNetChain": "splitldm.pipeline.chain",
    "Payload": "splitldm.link.payload",
    "PayloadError": "splitldm.link.payload",
    "Link": "splitldm.link.stack",
    "LinkStage": "splitldm.link.stack",
    "TokenMerge": "splitldm.link.merge",
    "SeedCodec": "splitldm.link.codec",
    "SeedCodecBank": "splitldm.link.codec_bank",
    "AWGN": "splitldm.link.channels",
    "RayleighBlockFading": "splitldm.link.channels",
    "RayleighFastFading": "splitldm.link.channels",
    "make_channel": "splitldm.link.channels",
    "AnalogLink": "splitldm.link.analog",
    "DigitalLink": "splitldm.link.digital",
    "apply_patch": "splitldm.tome",
    "remove_patch": "splitldm.tome",
    "model_flops": "splitldm.analysis.costs",
    "split_cost": "splitldm.analysis.costs",
    "evaluate": "splitldm.eval.evaluate",
    "psnr": "splitldm.eval.metrics",
    "ssim": "splitldm.eval.metrics",
}
_COMPAT = {
    "Carry": "splitldm.pipeline.chain", "Cut": "splitldm.pipeline.chain",
    "format_cut_table": "splitldm.pipeline.chain",
    "SPECS": "splitldm.pipeline.models", "ModelSpec": "splitldm.pipeline.models",
    "build_text_encoder": "splitldm.pipeline.models", "build_unet": "splitldm.pipeline.models",
    "build_vae": "splitldm.pipeline.models", "get_spec": "splitldm.pipeline.models",
    "make_scheduler": "splitldm.pipeline.models", "with_scheduler": "splitldm.pipeline.models",
    "handoff_timesteps": "splitldm.pipeline.split", "latent_space_fingerprint": "splitldm.pipeline.split",
    "model_fingerprint": "splitldm.pipeline.split",
    "count_flops": "splitldm.pipeline.flops",
    "build_clip_tokenizer": "splitldm.pipeline.tokenizer",
    "StageRecord": "splitldm.link.payload",
    "SerializeBytes": "splitldm.link.stack",
    "CSI_MODES": "splitldm.link.channels", "SNR_DB_RANGE": "splitldm.link.channels",
    "Channel": "splitldm.link.channels", "ChannelState": "splitldm.link.channels",
    "complex_to_real": "splitldm.link.channels", "normalize_power": "splitldm.link.channels",
    "real_to_complex": "splitldm.link.channels",
    "DigitalConfig": "splitldm.link.digital", "best_digital_config": "splitldm.link.digital",
    "measure_bler": "splitldm.link.digital",
    "MergePlan": "splitldm.tome", "is_patched": "splitldm.tome", "merge_tokens": "splitldm.tome",
    "plan_merge": "splitldm.tome", "unmerge_tokens": "splitldm.tome",
    "ES_DEFAULT": "splitldm.analysis.costs", "UE_DEFAULT": "splitldm.analysis.costs",
    "ChannelParams": "splitldm.analysis.costs", "DeviceProfile": "splitldm.analysis.costs",
    "ModelFlops": "splitldm.analysis.costs", "TaskCost": "splitldm.analysis.costs",
    "download_cost": "splitldm.analysis.costs", "load_profiles": "splitldm.analysis.costs",
    "LatentCovariance": "splitldm.analysis.limits", "WaterFilling": "splitldm.analysis.limits",
    "awgn_capacity": "splitldm.analysis.limits", "capacity": "splitldm.analysis.limits",
    "gaussian_opta_mse": "splitldm.analysis.limits", "latent_covariance": "splitldm.analysis.limits",
    "opta_mse": "splitldm.analysis.limits", "rayleigh_ergodic_capacity": "splitldm.analysis.limits",
    "reverse_water_filling": "splitldm.analysis.limits", "separation_bits": "splitldm.analysis.limits",
    "QualityTable": "splitldm.eval.quality", "build_quality_table": "splitldm.eval.quality",
    "fid": "splitldm.eval.metrics", "frechet_distance": "splitldm.eval.metrics",
    "prompt_adherence": "splitldm.eval.metrics", "load_classifier": "splitldm.eval.metrics",
}
_SUBMODULES = ("pipeline", "link", "tome", "analysis", "eval", "rl", "recipes", "zoo", "cli")

__all__ = [*_CURATED, "zoo", "__version__"]


def __getattr__(name: str) -> Any:
    module = _CURATED.get(name) or _COMPAT.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # resolve once
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"splitldm.{name}")
    raise AttributeError(f"module 'splitldm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CURATED, *_COMPAT, *_SUBMODULES})


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from splitldm.analysis.costs import model_flops, split_cost
    from splitldm.eval.evaluate import evaluate
    from splitldm.eval.metrics import psnr, ssim
    from splitldm.link.analog import AnalogLink
    from splitldm.link.channels import AWGN, RayleighBlockFading, RayleighFastFading, make_channel
    from splitldm.link.codec import SeedCodec
    from splitldm.link.codec_bank import SeedCodecBank
    from splitldm.link.digital import DigitalLink
    from splitldm.link.merge import TokenMerge
    from splitldm.link.payload import Payload, PayloadError
    from splitldm.link.stack import Link, LinkStage
    from splitldm.pipeline.chain import UNetChain
    from splitldm.pipeline.models import build_pipeline, load_pipeline
    from splitldm.pipeline.split import SplitOutput, SplitPipeline
    from splitldm.tome import apply_patch, remove_patch
