"""PixArt-alpha / PixArt-sigma (`PixArtAlphaPipeline`, `PixArtSigmaPipeline`): T5, DiT with adaLN-single."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
    retrieve_timesteps,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

from splitldm.pipeline.families.base import Family, register, step_kwargs
from splitldm.pipeline.families.sd3 import _dit_chain, check_max_sequence_length

_BINS = {256: ASPECT_RATIO_2048_BIN, 128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}


@register
class PixArtFamily(Family):
    """``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline``: DDPM-type schedulers on (B, 4, H/8, W/8) latents.

    Conditioning: ``prompt_embeds`` (rows, max_sequence_length, 4096) T5 states and
    ``prompt_attention_mask`` (rows, max_sequence_length) (crosses as bool). With
    ``use_resolution_binning`` (the pipelines' default) the latents are generated at the nearest
    aspect-ratio bin and the decoded image is resized and cropped back to (height, width); the
    transformer's ``sample_size`` must then be 32 / 64 / 128 (/ 256 for sigma). A learned-sigma
    output (``out_channels == 2 * in_channels``) keeps its first half, as the pipelines do.
    """

    name = "pixart"
    pipeline_classes = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    denoiser_name = "transformer"
    options = {"use_resolution_binning": True, "max_sequence_length": None, "clean_caption": True}
    default_guidance = 4.5

    @staticmethod
    def is_sigma(pipe) -> bool:
        return any(k.__name__ == "PixArtSigmaPipeline" for k in type(pipe).__mro__)

    def chain(self, pipe):
        return _dit_chain(pipe.transformer)

    def check_options(self, pipe, options):
        if options.get("max_sequence_length") is None:
            options["max_sequence_length"] = 300 if self.is_sigma(pipe) else 120
        check_max_sequence_length(options, 4096)
        for key in ("use_resolution_binning", "clean_caption"):
            if not isinstance(options.get(key), bool):
                raise ValueError(f"{key}: expected a bool, got {options.get(key)!r}")
        if options["use_resolution_binning"] and self._bins(pipe) is None:
            raise ValueError(f"use_resolution_binning: no aspect-ratio bins for transformer sample_size "
                             f"{pipe.transformer.config.sample_size} (need 32, 64, 128{' or 256' if self.is_sigma(pipe) else ''})")
        return options

    def _bins(self, pipe):
        size = pipe.transformer.config.sample_size
        if size == 256 and not self.is_sigma(pipe):
            return None
        return _BINS.get(size)

    def generation_size(self, pipe, settings) -> tuple[int, int]:
        if settings.options["use_resolution_binning"]:
            return pipe.image_processor.classify_height_width_bin(settings.height, settings.width, ratios=self._bins(pipe))
        return settings.height, settings.width

    def encode(self, pipe, settings, device) -> dict[str, torch.Tensor]:
        do_cfg = self.uses_cfg(pipe, settings)
        embeds, mask, negative, negative_mask = pipe.encode_prompt(
            settings.prompt, do_cfg, negative_prompt=settings.negative_prompt or "",
            num_images_per_prompt=settings.num_images_per_prompt, device=device,
            clean_caption=settings.options["clean_caption"], max_sequence_length=settings.options["max_sequence_length"])
        if do_cfg:
            embeds, mask = torch.cat([negative, embeds], dim=0), torch.cat([negative_mask, mask], dim=0)
        if not self.is_sigma(pipe):
            from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import maybe_adjust_dtype_for_device

            mask = mask.to(maybe_adjust_dtype_for_device(mask.dtype, mask.device))
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def condition_shapes(self, pipe, settings):
        rows = settings.batch_size * (2 if self.uses_cfg(pipe, settings) else 1)
        n = settings.options["max_sequence_length"]
        te = pipe.text_encoder
        return {"prompt_embeds": ((rows, n, te.config.d_model), te.dtype),
                "prompt_attention_mask": ((rows, n), torch.int64)}

    def set_timesteps(self, pipe, scheduler, settings, device) -> None:
        retrieve_timesteps(scheduler, settings.num_inference_steps, device, None, None)
        if not self.is_sigma(pipe) and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    def derived(self, pipe, settings, cond, dtype, device) -> dict[str, Any]:
        added = {"resolution": None, "aspect_ratio": None}
        if not self.is_sigma(pipe) and pipe.transformer.config.sample_size == 128:
            h, w = self.generation_size(pipe, settings)
            n = settings.batch_size
            resolution = torch.tensor([h, w]).repeat(n, 1).to(dtype=cond["prompt_embeds"].dtype, device=device)
            aspect = torch.tensor([float(h / w)]).repeat(n, 1).to(dtype=cond["prompt_embeds"].dtype, device=device)
            if self.uses_cfg(pipe, settings):
                resolution, aspect = torch.cat([resolution, resolution], dim=0), torch.cat([aspect, aspect], dim=0)
            added = {"resolution": resolution, "aspect_ratio": aspect}
        return {"added_cond_kwargs": added}

    def model_kwargs(self, pipe, state, t) -> dict[str, Any]:
        x = torch.cat([state.latents] * 2) if state.do_cfg else state.latents
        x = state.scheduler.scale_model_input(x, t)
        timestep = t[None].to(x.device) if t.ndim == 0 else t
        return dict(hidden_states=x, encoder_hidden_states=state.cond["prompt_embeds"],
                    encoder_attention_mask=state.cond["prompt_attention_mask"], timestep=timestep.expand(x.shape[0]),
                    added_cond_kwargs=state.derived["added_cond_kwargs"])

    def guide(self, pipe, state, output):
        output = super().guide(pipe, state, output)
        if pipe.transformer.config.out_channels // 2 == pipe.transformer.config.in_channels:
            output = output.chunk(2, dim=1)[0]
        return output

    def step(self, pipe, state, pred, t):
        kwargs = step_kwargs(state.scheduler, state.generator, state.settings.eta)
        index = 1 if state.num_steps == 1 and not self.is_sigma(pipe) else 0  # PixArt-alpha's 1-step rule
        return state.scheduler.step(pred, t, state.latents, **kwargs, return_dict=False)[index]

    def decode(self, pipe, state, output_type: str):
        latents = state.latents.to(pipe.vae.dtype) if self.is_sigma(pipe) else state.latents
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        if state.settings.options["use_resolution_binning"]:
            image = pipe.image_processor.resize_and_crop_tensor(image, state.settings.width, state.settings.height)
        return pipe.image_processor.postprocess(image, output_type=output_type)
