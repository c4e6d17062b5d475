"""Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`): two CLIP encoders + T5, MMDiT, flow matching."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

from splitldm.pipeline.families.base import Family, register


def check_max_sequence_length(options: dict[str, Any], limit: int) -> dict[str, Any]:
    n = options.get("max_sequence_length")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limit:
        raise ValueError(f"max_sequence_length: must be an int in [1, {limit}], got {n!r}")
    return options


@register
class SD3Family(Family):
    """``StableDiffusion3Pipeline``: flow matching on (B, 16, H/8, W/8) latents, no ``scale_model_input``.

    Conditioning: ``prompt_embeds`` (rows, 77 + max_sequence_length, joint_attention_dim) (the CLIP
    pair zero-padded to the T5 width, then the T5 tokens) and ``pooled_prompt_embeds`` (rows,
    pooled_projection_dim). The schedule is the scheduler's own (SD3: fixed ``shift``); with
    ``use_dynamic_shifting`` (SD3.5-style configs) ``mu`` comes from the image token count.
    Skip-layer guidance is not supported.
    """

    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    options = {"max_sequence_length": 256}
    default_guidance = 7.0
    supports = frozenset({"negative_prompt"})

    def chain(self, pipe):
        return _dit_chain(pipe.transformer)

    def default_size(self, pipe) -> int:
        return pipe.default_sample_size * pipe.vae_scale_factor

    def size_multiple(self, pipe) -> int:
        return pipe.vae_scale_factor * pipe.patch_size

    def check_options(self, pipe, options):
        return check_max_sequence_length(options, 512)

    def encode(self, pipe, settings, device) -> dict[str, torch.Tensor]:
        do_cfg = self.uses_cfg(pipe, settings)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=settings.prompt, prompt_2=None, prompt_3=None, negative_prompt=settings.negative_prompt,
            do_classifier_free_guidance=do_cfg, device=device, num_images_per_prompt=settings.num_images_per_prompt,
            max_sequence_length=settings.options["max_sequence_length"])
        if do_cfg:
            embeds, pooled = torch.cat([negative, embeds], dim=0), torch.cat([negative_pooled, pooled], dim=0)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def condition_shapes(self, pipe, settings):
        rows = settings.batch_size * (2 if self.uses_cfg(pipe, settings) else 1)
        cfg = pipe.transformer.config
        dtype = next(te.dtype for te in self.text_encoders(pipe))
        length = pipe.tokenizer_max_length + settings.options["max_sequence_length"]
        return {"prompt_embeds": ((rows, length, cfg.joint_attention_dim), dtype),
                "pooled_prompt_embeds": ((rows, cfg.pooled_projection_dim), dtype)}

    def set_timesteps(self, pipe, scheduler, settings, device) -> None:
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            h, w = self.latent_shape(pipe, settings)[-2:]
            p = pipe.transformer.config.patch_size
            kwargs["mu"] = calculate_shift((h // p) * (w // p), scheduler.config.get("base_image_seq_len", 256),
                                           scheduler.config.get("max_image_seq_len", 4096),
                                           scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.16))
        retrieve_timesteps(scheduler, settings.num_inference_steps, device, sigmas=None, **kwargs)

    def prepare_latents(self, pipe, settings, scheduler, generator, latents, dtype, device):
        shape = self.latent_shape(pipe, settings)
        return pipe.prepare_latents(shape[0], shape[1], settings.height, settings.width, dtype, device, generator,
                                    latents)

    def model_kwargs(self, pipe, state, t) -> dict[str, Any]:
        x = torch.cat([state.latents] * 2) if state.do_cfg else state.latents
        return dict(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=state.cond["prompt_embeds"],
                    pooled_projections=state.cond["pooled_prompt_embeds"], joint_attention_kwargs=None)

    def step(self, pipe, state, pred, t):
        return state.scheduler.step(pred, t, state.latents, return_dict=False)[0]

    def decode(self, pipe, state, output_type: str):
        latents = (state.latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type)


def _dit_chain(model):
    """The cuts helper's DiT chain for ``model`` when available (splitldm.pipeline.dit_chain), else None."""
    try:
        from splitldm.pipeline.dit_chain import dit_chain
    except ImportError:  # pragma: no cover - the DiT chain module is optional here
        return None
    return dit_chain(model)
