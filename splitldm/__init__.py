"""splitldm: mobile edge generation with Stable Diffusion-family latent diffusion models.

Split a diffusers pipeline between an edge server (ES) and a device (UE), across denoising steps or
inside one UNet pass, and send what crosses through a learned, channel-protected `Link`.
"""

from .chain import Carry, Cut, UNetChain
from .flops import count_flops
from .link import Link, LinkStage, SerializeBytes
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
from .split import SplitOutput, SplitPipeline, model_fingerprint
from .tokenizer import build_clip_tokenizer

__version__ = "0.1.0"
