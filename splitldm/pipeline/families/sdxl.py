"""Stable Diffusion XL (`StableDiffusionXLPipeline`): two CLIP encoders, pooled text, ``add_time_ids``."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from splitldm.pipeline.families.sd import SDFamily
from splitldm.pipeline.families.base import register


def _size(value, default: tuple[int, int]) -> tuple[int, int]:
    return tuple(int(v) for v in value) if value is not None else default


@register
class SDXLFamily(SDFamily):
    """``StableDiffusionXLPipeline`` (and LCM-SDXL UNets with ``time_cond_proj_dim``).

    Conditioning: ``prompt_embeds`` (rows, 77, D1 + D2) (both encoders' penultimate states side by
    side) and ``add_text_embeds`` (rows, D2) (the second encoder's pooled projection); with
    ``force_zeros_for_empty_prompt`` and no negative prompt the negative rows are zeros. Derived:
    ``add_time_ids`` (rows, 6) = original size, crop corner, target size (options
    ``original_size``, ``crops_coords_top_left``, ``target_size``; default: the image size, (0, 0)).
    """

    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    text_encoder_names = ("text_encoder", "text_encoder_2")
    options = {"original_size": None, "target_size": None, "crops_coords_top_left": (0, 0)}
    default_guidance = 5.0

    def check_options(self, pipe, options):
        for key in ("original_size", "target_size", "crops_coords_top_left"):
            value = options.get(key)
            if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2
                                      or not all(isinstance(v, int) for v in value)):
                raise ValueError(f"{key}: expected None or two ints, got {value!r}")
            if value is not None:
                options[key] = list(value)
        return options

    def encode(self, pipe, settings, device) -> dict[str, torch.Tensor]:
        do_cfg = self.uses_cfg(pipe, settings)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=settings.prompt, device=device, num_images_per_prompt=settings.num_images_per_prompt,
            do_classifier_free_guidance=do_cfg, negative_prompt=settings.negative_prompt)
        if do_cfg:
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        return {"prompt_embeds": embeds.to(device), "add_text_embeds": pooled.to(device)}

    def condition_shapes(self, pipe, settings):
        rows = settings.batch_size * (2 if self.uses_cfg(pipe, settings) else 1)
        encoders = self.text_encoders(pipe)
        width = sum(te.config.hidden_size for te in encoders)
        pooled = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else encoders[0].config.hidden_size
        tok = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
        dtype = encoders[-1].dtype
        return {"prompt_embeds": ((rows, tok.model_max_length, width), dtype), "add_text_embeds": ((rows, pooled), dtype)}

    def set_timesteps(self, pipe, scheduler, settings, device) -> None:
        retrieve_timesteps(scheduler, settings.num_inference_steps, device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    def derived(self, pipe, settings, cond, dtype, device) -> dict[str, Any]:
        out = super().derived(pipe, settings, cond, dtype, device)
        o = settings.options
        size = (settings.height, settings.width)
        pooled = cond["add_text_embeds"]
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        ids = pipe._get_add_time_ids(_size(o.get("original_size"), size), _size(o.get("crops_coords_top_left"), (0, 0)),
                                     _size(o.get("target_size"), size), dtype=cond["prompt_embeds"].dtype,
                                     text_encoder_projection_dim=projection)
        if self.uses_cfg(pipe, settings):
            ids = torch.cat([ids, ids], dim=0)
        out["add_time_ids"] = ids.to(device).repeat(settings.batch_size, 1)
        return out

    def model_kwargs(self, pipe, state, t) -> dict[str, Any]:
        kwargs = super().model_kwargs(pipe, state, t)
        kwargs["added_cond_kwargs"] = {"text_embeds": state.cond["add_text_embeds"],
                                       "time_ids": state.derived["add_time_ids"]}
        return kwargs

    def decode(self, pipe, state, output_type: str):
        latents = state.latents
        needs_upcasting = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        if needs_upcasting:
            pipe.upcast_vae()
            latents = latents.to(next(iter(pipe.vae.post_quant_conv.parameters())).dtype)
        config = pipe.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        if needs_upcasting:
            pipe.vae.to(dtype=torch.float16)
        if pipe.watermark is not None:
            image = pipe.watermark.apply_watermark(image)
        return pipe.image_processor.postprocess(image, output_type=output_type)
