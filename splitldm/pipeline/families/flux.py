"""FLUX.1 (`FluxPipeline`): CLIP (pooled) + T5, MMDiT on packed latents with RoPE ids, flow matching."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from splitldm.pipeline.families.base import Family, register
from splitldm.pipeline.families.sd3 import _dit_chain, check_max_sequence_length


@register
class FluxFamily(Family):
    """``FluxPipeline`` (dev: ``guidance_embeds``; schnell: none).

    Latents cross packed, as the transformer sees them: (B, (H/16)(W/16), 4 C) (2 x 2 patches of
    the (B, C, H/8, W/8) VAE latent). Conditioning: ``prompt_embeds`` (B, max_sequence_length,
    4096) T5 states and ``pooled_prompt_embeds`` (B, 768) pooled CLIP; with true CFG
    (``true_cfg_scale > 1`` and a ``negative_prompt``) also ``negative_prompt_embeds`` /
    ``negative_pooled_prompt_embeds``: two transformer passes per step, no batching. ``guidance_scale``
    is the distilled-guidance input (dev), not CFG. Derived: RoPE ids of text (zeros) and image
    tokens, the guidance vector. The schedule: ``sigmas = linspace(1, 1/T, T)`` shifted by
    ``mu = calculate_shift(image tokens)`` (dynamic shifting).
    """

    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    options = {"max_sequence_length": 512, "true_cfg_scale": 1.0}
    default_guidance = 3.5
    supports = frozenset({"negative_prompt"})

    def chain(self, pipe):
        return _dit_chain(pipe.transformer)

    def default_size(self, pipe) -> int:
        return pipe.default_sample_size * pipe.vae_scale_factor

    def size_multiple(self, pipe) -> int:
        return pipe.vae_scale_factor * 2

    def check_options(self, pipe, options):
        check_max_sequence_length(options, 512)
        scale = options.get("true_cfg_scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
            raise ValueError(f"true_cfg_scale: must be a finite number, got {scale!r}")
        options["true_cfg_scale"] = float(scale)
        return options

    def uses_cfg(self, pipe, settings) -> bool:
        """True CFG: two separate passes (never batched)."""
        return settings.options["true_cfg_scale"] > 1 and settings.negative_prompt is not None

    def encode(self, pipe, settings, device) -> dict[str, torch.Tensor]:
        n, length = settings.num_images_per_prompt, settings.options["max_sequence_length"]
        embeds, pooled, _ = pipe.encode_prompt(prompt=settings.prompt, prompt_2=None, device=device,
                                               num_images_per_prompt=n, max_sequence_length=length)
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if self.uses_cfg(pipe, settings):
            negative, negative_pooled, _ = pipe.encode_prompt(prompt=settings.negative_prompt, prompt_2=None,
                                                              device=device, num_images_per_prompt=n,
                                                              max_sequence_length=length)
            cond.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
        return cond

    def condition_shapes(self, pipe, settings):
        cfg, b = pipe.transformer.config, settings.batch_size
        dtype = next(te.dtype for te in self.text_encoders(pipe))
        shapes = {"prompt_embeds": ((b, settings.options["max_sequence_length"], cfg.joint_attention_dim), dtype),
                  "pooled_prompt_embeds": ((b, cfg.pooled_projection_dim), dtype)}
        if self.uses_cfg(pipe, settings):
            shapes.update({f"negative_{k}": v for k, v in shapes.items()})
        return shapes

    def latent_shape(self, pipe, settings) -> tuple[int, ...]:
        h = 2 * (settings.height // (pipe.vae_scale_factor * 2))
        w = 2 * (settings.width // (pipe.vae_scale_factor * 2))
        return (settings.batch_size, (h // 2) * (w // 2), pipe.transformer.config.in_channels)

    def set_timesteps(self, pipe, scheduler, settings, device) -> None:
        n = settings.num_inference_steps
        sigmas = np.linspace(1.0, 1 / n, n)
        if hasattr(scheduler.config, "use_flow_sigmas") and scheduler.config.use_flow_sigmas:
            sigmas = None
        c = scheduler.config
        mu = calculate_shift(self.latent_shape(pipe, settings)[1], c.get("base_image_seq_len", 256),
                             c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, n, device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)

    def prepare_latents(self, pipe, settings, scheduler, generator, latents, dtype, device):
        latents, _ = pipe.prepare_latents(settings.batch_size, pipe.transformer.config.in_channels // 4,
                                          settings.height, settings.width, dtype, device, generator, latents)
        return latents

    def derived(self, pipe, settings, cond, dtype, device) -> dict[str, Any]:
        h = 2 * (settings.height // (pipe.vae_scale_factor * 2))
        w = 2 * (settings.width // (pipe.vae_scale_factor * 2))
        text = cond["prompt_embeds"]
        out = {"img_ids": pipe._prepare_latent_image_ids(settings.batch_size, h // 2, w // 2, device, dtype),
               "txt_ids": torch.zeros(text.shape[1], 3).to(device=device, dtype=text.dtype), "guidance": None}
        if "negative_prompt_embeds" in cond:
            neg = cond["negative_prompt_embeds"]
            out["negative_txt_ids"] = torch.zeros(neg.shape[1], 3).to(device=device, dtype=neg.dtype)
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full([1], settings.guidance_scale, device=device, dtype=torch.float32)
            out["guidance"] = guidance.expand(settings.batch_size)
        return out

    def model_kwargs(self, pipe, state, t, negative: bool = False) -> dict[str, Any]:
        timestep = t.expand(state.latents.shape[0]).to(state.latents.dtype)
        prefix = "negative_" if negative else ""
        return dict(hidden_states=state.latents, timestep=timestep / 1000, guidance=state.derived["guidance"],
                    pooled_projections=state.cond[prefix + "pooled_prompt_embeds"],
                    encoder_hidden_states=state.cond[prefix + "prompt_embeds"],
                    txt_ids=state.derived[prefix + "txt_ids"], img_ids=state.derived["img_ids"],
                    joint_attention_kwargs={})

    def guide(self, pipe, state, output):
        return output

    def predict(self, pipe, state, t) -> torch.Tensor:
        transformer = pipe.transformer
        with transformer.cache_context("cond"):
            pred = transformer(**self.model_kwargs(pipe, state, t), return_dict=False)[0]
        if state.do_cfg:
            with transformer.cache_context("uncond"):
                neg = transformer(**self.model_kwargs(pipe, state, t, negative=True), return_dict=False)[0]
            pred = neg + state.settings.options["true_cfg_scale"] * (pred - neg)
        return pred

    def step(self, pipe, state, pred, t):
        return state.scheduler.step(pred, t, state.latents, return_dict=False)[0]

    def decode(self, pipe, state, output_type: str):
        latents = pipe._unpack_latents(state.latents, state.settings.height, state.settings.width, pipe.vae_scale_factor)
        latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type)
