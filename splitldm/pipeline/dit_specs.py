"""The real DiT architectures (SD3, PixArt, Flux) as config dicts: built on the meta device, no weights.

The twin of `splitldm.pipeline.models.SPECS` (SD-1.5, SD-2.1, SDXL) for the transformer families; what
cut tables (`splitldm profile`) and FLOP counts (`splitldm.analysis.costs.model_flops`) need. The
dicts are the ``config.json`` files of the public diffusers repositories, written out (no download):

| name | model | image (px) | text tokens |
|---|---|---|---|
| ``sd3`` | Stable Diffusion 3 medium: 24 joint blocks, 2.0 B | 1024 | 77 CLIP + 256 T5 |
| ``sd35-large`` | Stable Diffusion 3.5 large: 38 joint blocks (QK-norm) | 1024 | 77 CLIP + 256 T5 |
| ``pixart`` | PixArt-alpha XL-2 1024-MS: 28 blocks, 0.6 B | 1024 | 120 T5 |
| ``pixart-sigma`` | PixArt-sigma XL-2 1024-MS | 1024 | 300 T5 |
| ``flux`` | FLUX.1-dev: 19 double + 38 single blocks, 11.9 B | 1024 | 512 T5 (+ pooled CLIP) |
| ``flux-schnell`` | FLUX.1-schnell (no guidance embedding) | 1024 | 256 T5 (+ pooled CLIP) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DiTSpec", "DIT_SPECS", "get_dit_spec", "is_dit_name"]

_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.18215)
_VAE16 = dict(_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)

_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
_CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
#: google/t5-v1_1-xxl encoder (what SD3, PixArt and Flux use).
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False)

_SD3 = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, pos_embed_max_size=192)
_PIXART = dict(sample_size=128, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
               caption_channels=4096, in_channels=4, out_channels=8, cross_attention_dim=1152, attention_bias=True,
               activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
               norm_elementwise_affine=False, norm_eps=1e-6)
_FLUX = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
             axes_dims_rope=(16, 56, 56), guidance_embeds=True)


@dataclass(frozen=True)
class DiTSpec:
    """One DiT model's architecture.

    ``transformer_class``: the diffusers class name; ``transformer`` / ``vae``: their configs;
    ``text_encoders``: ``(kind, config, tokens)`` per encoder, kind ``"clip"`` (`CLIPTextModel`),
    ``"clip-proj"`` (`CLIPTextModelWithProjection`) or ``"t5"`` (`T5EncoderModel`), ``tokens`` its
    prompt length; ``text_length``: text tokens the denoiser attends to; ``image_size``: default side, px.
    """

    name: str
    family: str
    transformer_class: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[tuple[str, dict[str, Any], int], ...]
    text_length: int
    image_size: int = 1024

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    def build_transformer(self, device: str | torch.device = "meta") -> torch.nn.Module:
        """The transformer without weights (``device="meta"``: no memory) or randomly initialised."""
        import diffusers

        cls = getattr(diffusers, self.transformer_class)
        with torch.device(device):
            return cls(**self.transformer).eval()


DIT_SPECS: dict[str, DiTSpec] = {
    "sd3": DiTSpec("sd3", "sd3", "SD3Transformer2DModel", _SD3,
                   dict(_VAE16, scaling_factor=1.5305, shift_factor=0.0609),
                   (("clip-proj", _CLIP_L, 77), ("clip-proj", _CLIP_BIGG, 77), ("t5", _T5_XXL, 256)), 77 + 256),
    "sd35-large": DiTSpec("sd35-large", "sd3", "SD3Transformer2DModel",
                          dict(_SD3, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                               qk_norm="rms_norm"),
                          dict(_VAE16, scaling_factor=1.5305, shift_factor=0.0609),
                          (("clip-proj", _CLIP_L, 77), ("clip-proj", _CLIP_BIGG, 77), ("t5", _T5_XXL, 256)), 77 + 256),
    "pixart": DiTSpec("pixart", "pixart", "PixArtTransformer2DModel", dict(_PIXART, use_additional_conditions=True),
                      _VAE, (("t5", _T5_XXL, 120),), 120),
    "pixart-sigma": DiTSpec("pixart-sigma", "pixart", "PixArtTransformer2DModel",
                            dict(_PIXART, use_additional_conditions=False, interpolation_scale=2),
                            _VAE, (("t5", _T5_XXL, 300),), 300),
    "flux": DiTSpec("flux", "flux", "FluxTransformer2DModel", _FLUX,
                    dict(_VAE16, scaling_factor=0.3611, shift_factor=0.1159),
                    (("clip", _CLIP_L, 77), ("t5", _T5_XXL, 512)), 512),
    "flux-schnell": DiTSpec("flux-schnell", "flux", "FluxTransformer2DModel", dict(_FLUX, guidance_embeds=False),
                            dict(_VAE16, scaling_factor=0.3611, shift_factor=0.1159),
                            (("clip", _CLIP_L, 77), ("t5", _T5_XXL, 256)), 256),
}


def is_dit_name(name: object) -> bool:
    """Whether ``name`` names a `DIT_SPECS` architecture."""
    return isinstance(name, str) and name in DIT_SPECS


def get_dit_spec(name: str) -> DiTSpec:
    """The `DiTSpec` registered under ``name``; ValueError listing the names otherwise."""
    if not is_dit_name(name):
        raise ValueError(f"name: unknown DiT config {name!r}; choose from {sorted(DIT_SPECS)}")
    return DIT_SPECS[name]
