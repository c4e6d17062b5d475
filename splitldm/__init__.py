"""splitldm: mobile edge generation with Stable Diffusion-family latent diffusion models.

Split a diffusers pipeline between an edge server (ES) and a device (UE), across denoising steps or
inside one UNet pass, and send what crosses through a learned, channel-protected `Link`.
"""

from .models import SPECS, ModelSpec, build_pipeline, build_unet, build_vae, build_text_encoder, get_spec, load_pipeline, make_scheduler, with_scheduler
from .tokenizer import build_clip_tokenizer

__version__ = "0.1.0"
