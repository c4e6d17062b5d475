"""Stable Diffusion 1.x / 2.x (`StableDiffusionPipeline`): one CLIP encoder, a UNet, DDPM-type schedulers."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps

from splitldm.pipeline.families.base import Family, register


@register
class SDFamily(Family):
    """``StableDiffusionPipeline``: text (B, 77, D) -> UNet on (B, 4, H/8, W/8) latents.

    Conditioning: ``prompt_embeds`` (rows, L, D), ``[negative; positive]`` rows with CFG. Derived:
    the LCM guidance embedding ``timestep_cond`` for UNets with ``time_cond_proj_dim``.
    """

    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    supports = frozenset({"negative_prompt", "eta", "guidance_rescale"})

    def chain(self, pipe):
        from splitldm.pipeline.chain import UNetChain

        return UNetChain(pipe.unet)

    def uses_cfg(self, pipe, settings) -> bool:
        return settings.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None

    def encode(self, pipe, settings, device) -> dict[str, torch.Tensor]:
        do_cfg = self.uses_cfg(pipe, settings)
        embeds, negative = pipe.encode_prompt(settings.prompt, device, settings.num_images_per_prompt, do_cfg,
                                              settings.negative_prompt)
        return {"prompt_embeds": torch.cat([negative, embeds]) if do_cfg else embeds}

    def condition_shapes(self, pipe, settings):
        rows = settings.batch_size * (2 if self.uses_cfg(pipe, settings) else 1)
        te = pipe.text_encoder
        return {"prompt_embeds": ((rows, pipe.tokenizer.model_max_length, te.config.hidden_size), te.dtype)}

    def set_timesteps(self, pipe, scheduler, settings, device) -> None:
        retrieve_timesteps(scheduler, settings.num_inference_steps, device)

    def derived(self, pipe, settings, cond, dtype, device) -> dict[str, Any]:
        dim = pipe.unet.config.time_cond_proj_dim
        if dim is None:
            return {}
        w = torch.tensor(settings.guidance_scale - 1).repeat(settings.batch_size)
        return {"timestep_cond": pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(device=device, dtype=dtype)}

    def model_input(self, state, t) -> torch.Tensor:
        x = torch.cat([state.latents] * 2) if state.do_cfg else state.latents
        return state.scheduler.scale_model_input(x, t)

    def model_kwargs(self, pipe, state, t) -> dict[str, Any]:
        return dict(sample=self.model_input(state, t), timestep=t, encoder_hidden_states=state.cond["prompt_embeds"],
                    timestep_cond=state.derived.get("timestep_cond"), cross_attention_kwargs=None,
                    added_cond_kwargs=None)

    def guide(self, pipe, state, output):
        s = state.settings
        if state.do_cfg:
            uncond, text = output.chunk(2)
            output = uncond + s.guidance_scale * (text - uncond)
            if s.guidance_rescale > 0.0:
                output = rescale_noise_cfg(output, text, guidance_rescale=s.guidance_rescale)
        return output

    def decode(self, pipe, state, output_type: str):
        image = pipe.vae.decode(state.latents / pipe.vae.config.scaling_factor, return_dict=False,
                                generator=state.generator)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * image.shape[0])
