"""A denoising loop that runs steps ``[a, b)`` of any diffusers scheduler and resumes exactly.

It performs the very operations of `StableDiffusionPipeline.__call__` (prompt encoding, latent
preparation, classifier-free guidance, guidance rescale, the scheduler step, VAE decoding) through
the pipeline's own methods, so running steps ``[0, k)`` here and ``[k, T)`` elsewhere gives the images
``pipe(...)`` gives, bit for bit.

Resuming elsewhere needs the scheduler's *dynamic* state (step index, multistep history, ...) and the
random generator's state; `scheduler_state` captures what differs from a freshly set-up scheduler
(generic: no per-scheduler code) and `restore_scheduler` applies it to a new one.
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

from splitldm.pipeline.chain import Carry, UNetChain


@dataclass
class GenerationSettings:
    """The settings of one generation call, JSON-able (they travel in the payload)."""

    prompt: list[str]
    negative_prompt: list[str] | None
    num_inference_steps: int
    guidance_scale: float
    guidance_rescale: float
    eta: float
    num_images_per_prompt: int
    height: int
    width: int

    @property
    def batch_size(self) -> int:
        return len(self.prompt) * self.num_images_per_prompt


@dataclass
class DenoiseState:
    """Everything the loop needs to continue from timestep index ``step``.

    Attributes:
        latents: (B, C, h, w) current latents.
        step: index into ``timesteps`` of the next step to run.
        timesteps: (S,) the scheduler's timesteps (S = T for first-order schedulers).
        prompt_embeds: (B or 2B, L, D) text embeddings, ``[negative, positive]`` when CFG is on.
        timestep_cond: (B, D_w) guidance embedding for LCM-style UNets, else None.
        generator: the random generator(s) the scheduler and decoder draw from.
        carry: a UNet pass interrupted at a stage (`UNetChain`), else None.
        carry_stage: the first stage the carry still has to run.
        scheduler: this generation's own scheduler object (``pipe.scheduler`` is never mutated).
    """

    settings: GenerationSettings
    scheduler: Any
    latents: torch.Tensor
    step: int
    timesteps: torch.Tensor
    prompt_embeds: torch.Tensor
    timestep_cond: torch.Tensor | None
    generator: torch.Generator | list[torch.Generator] | None
    do_cfg: bool
    carry: Carry | None = None
    carry_stage: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


# --------------------------------------------------------------------------------- inputs
def _as_prompt_list(prompt, name: str = "prompt") -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        if not prompt:
            raise ValueError(f"{name}: the prompt list is empty")
        return list(prompt)
    raise TypeError(f"{name}: expected a str or a list of str, got {type(prompt).__name__}")


def _check_generator(generator, batch_size: int):
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(f"generator: a list of {len(generator)} generators for a batch of {batch_size} images")
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise TypeError("generator: every list element must be a torch.Generator")
        return list(generator)
    raise TypeError(f"generator: expected a torch.Generator or a list of them, got {type(generator).__name__}")


def execution_device(pipe: StableDiffusionPipeline) -> torch.device:
    """``execution_device(pipe)``, computed once per pipeline object and module placement.

    diffusers' property walks every module on each access (it looks for offloading hooks), which
    costs more than a tiny UNet pass; the cache key is the UNet's current device.
    """
    placement = next(pipe.unet.parameters()).device
    cached = _DEVICE_CACHE.get(pipe)
    if cached is None or cached[0] != placement:
        cached = _DEVICE_CACHE[pipe] = (placement, pipe._execution_device)
    return cached[1]


_DEVICE_CACHE: "weakref.WeakKeyDictionary[StableDiffusionPipeline, tuple]" = weakref.WeakKeyDictionary()


def uses_cfg(pipe: StableDiffusionPipeline, guidance_scale: float) -> bool:
    """Whether the pipeline batches unconditional + conditional passes (as diffusers decides)."""
    return guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None


def make_settings(pipe: StableDiffusionPipeline, prompt, *, num_inference_steps: int = 50,
                  guidance_scale: float = 7.5, negative_prompt=None, num_images_per_prompt: int = 1,
                  eta: float = 0.0, guidance_rescale: float = 0.0, height: int | None = None,
                  width: int | None = None) -> GenerationSettings:
    """Validate a call's arguments into `GenerationSettings` (errors name the argument)."""
    prompts = _as_prompt_list(prompt)
    negatives = None
    if negative_prompt is not None:
        negatives = _as_prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1 and len(prompts) > 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt: {len(negatives)} negative prompts for {len(prompts)} prompts")
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps: must be an int >= 1, got {num_inference_steps!r}")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt: must be an int >= 1, got {num_images_per_prompt!r}")
    for name, value in (("guidance_scale", guidance_scale), ("eta", eta), ("guidance_rescale", guidance_rescale)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or default, width or default
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < pipe.vae_scale_factor or value % pipe.vae_scale_factor:
            raise ValueError(f"{name}: must be a positive multiple of {pipe.vae_scale_factor}, got {value!r}")
    return GenerationSettings(prompts, negatives, num_inference_steps, float(guidance_scale),
                              float(guidance_rescale), float(eta), num_images_per_prompt, height, width)


# ---------------------------------------------------------------------------- the loop
def encode_prompts(pipe: StableDiffusionPipeline, settings: GenerationSettings) -> torch.Tensor:
    """Text embeddings as the pipeline builds them: ``[negative; positive]`` when CFG is on."""
    do_cfg = uses_cfg(pipe, settings.guidance_scale)
    embeds, negative = pipe.encode_prompt(settings.prompt, execution_device(pipe), settings.num_images_per_prompt,
                                          do_cfg, settings.negative_prompt)
    return torch.cat([negative, embeds]) if do_cfg else embeds


def guidance_embedding(pipe: StableDiffusionPipeline, settings: GenerationSettings, dtype) -> torch.Tensor | None:
    """The LCM-style guidance-scale embedding, for UNets with ``time_cond_proj_dim`` (else None)."""
    dim = pipe.unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.tensor(settings.guidance_scale - 1).repeat(settings.batch_size)
    return pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(device=execution_device(pipe), dtype=dtype)


def prepare(pipe: StableDiffusionPipeline, settings: GenerationSettings, generator=None,
            latents: torch.Tensor | None = None) -> DenoiseState:
    """Everything before the first denoising step: text, timesteps, initial noise (pipeline order)."""
    generator = _check_generator(generator, settings.batch_size)
    prompt_embeds = encode_prompts(pipe, settings)
    device = execution_device(pipe)
    scheduler = fresh_scheduler(pipe, settings.num_inference_steps)
    shape = (settings.batch_size, pipe.unet.config.in_channels, settings.height // pipe.vae_scale_factor,
             settings.width // pipe.vae_scale_factor)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
    elif not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
        raise ValueError(f"latents: expected a tensor of shape {shape}, got {getattr(latents, 'shape', type(latents))}")
    else:
        latents = latents.to(device)
    latents = latents * scheduler.init_noise_sigma  # as StableDiffusionPipeline.prepare_latents
    return DenoiseState(settings=settings, scheduler=scheduler, latents=latents, step=0, timesteps=scheduler.timesteps,
                        prompt_embeds=prompt_embeds, timestep_cond=guidance_embedding(pipe, settings, latents.dtype),
                        generator=generator, do_cfg=uses_cfg(pipe, settings.guidance_scale))


def _model_input(state: DenoiseState, t) -> torch.Tensor:
    x = torch.cat([state.latents] * 2) if state.do_cfg else state.latents
    if hasattr(state.scheduler, "scale_model_input"):
        x = state.scheduler.scale_model_input(x, t)
    return x


def _finish_step(pipe, state: DenoiseState, noise_pred: torch.Tensor, t) -> None:
    s = state.settings
    if state.do_cfg:
        noise_uncond, noise_text = noise_pred.chunk(2)
        noise_pred = noise_uncond + s.guidance_scale * (noise_text - noise_uncond)
        if s.guidance_rescale > 0.0:
            noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale=s.guidance_rescale)
    kwargs = step_kwargs(state.scheduler, state.generator, s.eta)
    state.latents = state.scheduler.step(noise_pred, t, state.latents, **kwargs, return_dict=False)[0]
    state.step += 1
    state.carry, state.carry_stage = None, 0


@functools.lru_cache(maxsize=64)
def _step_parameters(step_function) -> frozenset[str]:
    return frozenset(inspect.signature(step_function).parameters)


def step_kwargs(scheduler, generator, eta: float) -> dict[str, Any]:
    """``eta`` / ``generator`` for schedulers whose ``step`` takes them (as the pipeline passes them)."""
    params = _step_parameters(type(scheduler).step)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@torch.no_grad()
def denoise(pipe: StableDiffusionPipeline, state: DenoiseState, stop: int | None = None,
            stop_stage: int | None = None, chain: UNetChain | None = None) -> DenoiseState:
    """Run denoising steps ``[state.step, stop)``; optionally also stages ``[0, stop_stage)`` of step ``stop``.

    With ``stop_stage`` the UNet pass of step ``stop`` is cut inside (see `UNetChain`): the state then
    holds the carry, and the next call finishes that pass first. Mutates and returns ``state``.
    """
    n = state.num_steps
    stop = n if stop is None else stop
    if not isinstance(stop, int) or not state.step <= stop <= n:
        raise ValueError(f"stop: must be an int in [{state.step}, {n}], got {stop!r}")
    if chain is None and (stop_stage is not None or state.carry is not None):
        chain = UNetChain(pipe.unet)
    if stop_stage is not None:
        if not isinstance(stop_stage, int) or not 0 <= stop_stage <= len(chain):
            raise ValueError(f"stop_stage: must be an int in [0, {len(chain)}], got {stop_stage!r}")
        if stop_stage and stop == n:
            raise ValueError(f"stop_stage: there is no step {stop} to cut inside (only {n} steps)")
    unet_kwargs = dict(encoder_hidden_states=state.prompt_embeds, timestep_cond=state.timestep_cond)
    if state.carry is not None:  # finish an interrupted UNet pass
        t = state.timesteps[state.step]
        noise_pred = chain.run(state.carry, state.carry_stage).hidden
        _finish_step(pipe, state, noise_pred, t)
    while state.step < stop:
        t = state.timesteps[state.step]
        noise_pred = pipe.unet(_model_input(state, t), t, cross_attention_kwargs=None,
                               added_cond_kwargs=None, return_dict=False, **unet_kwargs)[0]
        _finish_step(pipe, state, noise_pred, t)
    if stop_stage:
        t = state.timesteps[state.step]
        carry = chain.start(_model_input(state, t), t, **unet_kwargs)
        state.carry, state.carry_stage = chain.run(carry, 0, stop_stage), stop_stage
    return state


@torch.no_grad()
def decode(pipe: StableDiffusionPipeline, state: DenoiseState, output_type: str = "pil"):
    """VAE-decode and post-process finished latents exactly as the pipeline does."""
    if state.step != state.num_steps or state.carry is not None:
        raise ValueError(f"state: only {state.step} of {state.num_steps} steps are done; finish denoising first")
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"output_type: expected 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
    if output_type == "latent":
        return state.latents
    image = pipe.vae.decode(state.latents / pipe.vae.config.scaling_factor, return_dict=False,
                            generator=state.generator)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type,
                                            do_denormalize=[True] * image.shape[0])


# ------------------------------------------------------------------ scheduler state
def fresh_scheduler(pipe: StableDiffusionPipeline, num_inference_steps: int):
    """A new scheduler like ``pipe.scheduler``, set up for ``num_inference_steps`` as the pipeline does."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    retrieve_timesteps(scheduler, num_inference_steps, execution_device(pipe))
    return scheduler


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def scheduler_state(scheduler, reference) -> dict[str, Any]:
    """The attributes of ``scheduler`` that differ from ``reference`` (a fresh, set-up scheduler).

    That is exactly the dynamic state a receiver cannot recompute: e.g. ``_step_index`` for Euler /
    LCM, ``model_outputs`` and ``lower_order_nums`` for DPM-Solver++, ``ets`` for PNDM.
    """
    ref = vars(reference)
    return {k: v for k, v in vars(scheduler).items()
            if k not in ("_internal_dict", "config") and (k not in ref or not _same(v, ref[k]))}


def restore_scheduler(pipe: StableDiffusionPipeline, num_inference_steps: int, state: dict[str, Any]):
    """A fresh scheduler like ``pipe.scheduler`` for ``num_inference_steps`` with ``state`` applied."""
    scheduler = fresh_scheduler(pipe, num_inference_steps)
    for key, value in state.items():
        setattr(scheduler, key, value)
    return scheduler


def pack_value(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of a nested value; tensors / arrays go to ``tensors`` under ``prefix``-based names."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu()
        return {"__tensor__": prefix}
    if isinstance(value, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": prefix}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot send a dict with non-str keys at {prefix!r}")
        return {"__dict__": {k: pack_value(v, f"{prefix}.{k}", tensors) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"__seq__": [pack_value(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)],
                "tuple": isinstance(value, tuple)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot send a value of type {type(value).__name__} at {prefix!r}")


def unpack_value(value: Any, tensors: dict[str, torch.Tensor], device=None) -> Any:
    """Inverse of `pack_value`."""
    if isinstance(value, dict) and "__tensor__" in value:
        t = tensors[value["__tensor__"]]
        return t.to(device) if device is not None else t
    if isinstance(value, dict) and "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().copy()
    if isinstance(value, dict) and "__dict__" in value:
        return {k: unpack_value(v, tensors, device) for k, v in value["__dict__"].items()}
    if isinstance(value, dict) and "__seq__" in value:
        items = [unpack_value(v, tensors, device) for v in value["__seq__"]]
        return tuple(items) if value.get("tuple") else items
    return value


def generator_states(generator) -> list[torch.Tensor] | None:
    """The state tensor(s) of a generator or list of generators (uint8), or None."""
    if generator is None:
        return None
    gens = generator if isinstance(generator, list) else [generator]
    return [g.get_state() for g in gens]


def generators_from_states(states: list[torch.Tensor], devices: list[str], as_list: bool):
    """Rebuild generators on ``devices`` from `generator_states` output."""
    gens = []
    for state, device in zip(states, devices):
        g = torch.Generator(device=device)
        g.set_state(state)
        gens.append(g)
    return gens if as_list else gens[0]
