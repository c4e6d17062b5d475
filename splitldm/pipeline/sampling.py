"""One denoising loop for every pipeline family: runs steps ``[a, b)`` of any scheduler and resumes exactly.

It performs the very operations of the family's own ``__call__`` (prompt encoding, latent
preparation, guidance, the scheduler step, VAE decoding) through the pipeline's own methods, so
running steps ``[0, k)`` here and ``[k, T)`` elsewhere gives the images ``pipe(...)`` gives, bit for
bit. What differs between families (SD, SDXL, SD3, PixArt, Flux) lives in a small adapter,
`splitldm.pipeline.families.Family`; this module holds what they share.

Resuming elsewhere needs the scheduler's *dynamic* state (step index, multistep history, ...) and the
random generator's state; `scheduler_state` captures what differs from a freshly set-up scheduler
(generic: no per-scheduler code) and `restore_scheduler` applies it to a new one.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from splitldm.pipeline.families import Family, family_of, step_kwargs
from splitldm.pipeline.payload_schema import apply_scheduler_state

__all__ = ["GenerationSettings", "DenoiseState", "make_settings", "encode_prompts", "prepare", "denoise", "decode",
           "fresh_scheduler", "scheduler_state", "restore_scheduler", "pack_value", "unpack_value",
           "generator_states", "generators_from_states", "execution_device", "uses_cfg", "step_kwargs"]


@dataclass
class GenerationSettings:
    """The settings of one generation call, JSON-able (they travel in the payload).

    ``height`` / ``width``: the requested image size in pixels. ``options``: the family's own call
    arguments (`Family.options`, e.g. Flux's ``true_cfg_scale``), defaults filled in.
    """

    prompt: list[str]
    negative_prompt: list[str] | None
    num_inference_steps: int
    guidance_scale: float
    guidance_rescale: float
    eta: float
    num_images_per_prompt: int
    height: int
    width: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.prompt) * self.num_images_per_prompt


@dataclass
class DenoiseState:
    """Everything the loop needs to continue from timestep index ``step``.

    Attributes:
        latents: current latents in the denoiser's layout: (B, C, h, w); Flux: packed (B, N, 4C).
        step: index into ``timesteps`` of the next step to run.
        timesteps: (S,) the scheduler's timesteps (S = T for first-order schedulers).
        cond: the text conditioning by name (`Family.encode`), CFG rows ``[negative; positive]``:
            e.g. ``prompt_embeds`` (rows, L, D), ``add_text_embeds`` / ``pooled_prompt_embeds`` (rows, D).
        derived: denoiser inputs recomputed from the settings (`Family.derived`): ``timestep_cond``,
            ``add_time_ids``, RoPE ids, the guidance vector, ...
        generator: the random generator(s) the scheduler and decoder draw from.
        carry: a denoiser pass interrupted at a stage (`UNetChain` / DiT chain), else None.
        carry_stage: the first stage the carry still has to run.
        scheduler: this generation's own scheduler object (``pipe.scheduler`` is never mutated).
        family: the `Family` adapter of the pipeline.
    """

    settings: GenerationSettings
    scheduler: Any
    latents: torch.Tensor
    step: int
    timesteps: torch.Tensor
    cond: dict[str, torch.Tensor]
    derived: dict[str, Any]
    generator: torch.Generator | list[torch.Generator] | None
    do_cfg: bool
    family: Family
    carry: Any = None
    carry_stage: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """(rows, L, D) the main text embeddings (``cond["prompt_embeds"]``)."""
        return self.cond["prompt_embeds"]

    @property
    def timestep_cond(self) -> torch.Tensor | None:
        """(B, D_w) LCM guidance embedding, or None."""
        return self.derived.get("timestep_cond")


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


def execution_device(pipe) -> torch.device:
    """``pipe._execution_device``, computed once per pipeline object and module placement.

    diffusers' property walks every module on each access (it looks for offloading hooks), which
    costs more than a tiny denoiser pass; the cache key is the denoiser's current device.
    """
    placement = next(family_of(pipe).denoiser(pipe).parameters()).device
    cached = _DEVICE_CACHE.get(pipe)
    if cached is None or cached[0] != placement:
        cached = _DEVICE_CACHE[pipe] = (placement, pipe._execution_device)
    return cached[1]


_DEVICE_CACHE: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def uses_cfg(pipe, settings_or_scale) -> bool:
    """Whether the pipeline runs classifier-free guidance for these settings (as diffusers decides).

    Accepts `GenerationSettings` or, for SD-type pipelines, a bare ``guidance_scale``.
    """
    family = family_of(pipe)
    if not isinstance(settings_or_scale, GenerationSettings):
        settings_or_scale = GenerationSettings([""], None, 1, float(settings_or_scale), 0.0, 0.0, 1, 8, 8,
                                               dict(family.options))
    return family.uses_cfg(pipe, settings_or_scale)


def make_settings(pipe, prompt, *, num_inference_steps: int = 50, guidance_scale: float | None = None,
                  negative_prompt=None, num_images_per_prompt: int = 1, eta: float = 0.0,
                  guidance_rescale: float = 0.0, height: int | None = None, width: int | None = None,
                  **options) -> GenerationSettings:
    """Validate a call's arguments into `GenerationSettings` (errors name the argument).

    ``guidance_scale`` None takes the family's default (SD 7.5, SDXL 5, SD3 7, PixArt 4.5, Flux 3.5);
    ``options`` are the family's own arguments (`Family.options`).
    """
    family = family_of(pipe)
    unknown = sorted(set(options) - set(family.options))
    if unknown:
        raise TypeError(f"{unknown[0]}: not an argument of a {family.name} generation; "
                        f"family options: {sorted(family.options) or 'none'}")
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
    if guidance_scale is None:
        guidance_scale = family.default_guidance
    for name, value in (("guidance_scale", guidance_scale), ("eta", eta), ("guidance_rescale", guidance_rescale)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
    for name, value in (("eta", eta), ("guidance_rescale", guidance_rescale)):
        if value and name not in family.supports:
            raise ValueError(f"{name}: a {family.name} pipeline does not use it; leave it at 0")
    multiple = family.size_multiple(pipe)
    default = family.default_size(pipe)
    height = default if height is None else height  # 0 is refused, not read as "the default"
    width = default if width is None else width
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < multiple or value % multiple:
            raise ValueError(f"{name}: must be a positive multiple of {multiple}, got {value!r}")
    merged = family.check_options(pipe, {**family.options, **options})
    return GenerationSettings(prompts, negatives, num_inference_steps, float(guidance_scale),
                              float(guidance_rescale), float(eta), num_images_per_prompt, height, width,
                              _jsonable(merged))


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


# ---------------------------------------------------------------------------- the loop
def encode_prompts(pipe, settings: GenerationSettings) -> dict[str, torch.Tensor]:
    """The text conditioning as the pipeline builds it (`Family.encode`): name -> tensor."""
    return family_of(pipe).encode(pipe, settings, execution_device(pipe))


def new_state(pipe, settings: GenerationSettings, scheduler, latents: torch.Tensor, step: int,
              cond: dict[str, torch.Tensor], generator) -> DenoiseState:
    """A `DenoiseState` with the family's derived inputs computed (either side of the link)."""
    family = family_of(pipe)
    derived = family.derived(pipe, settings, cond, latents.dtype, execution_device(pipe))
    return DenoiseState(settings=settings, scheduler=scheduler, latents=latents, step=step,
                        timesteps=scheduler.timesteps, cond=cond, derived=derived, generator=generator,
                        do_cfg=family.uses_cfg(pipe, settings), family=family)


def prepare(pipe, settings: GenerationSettings, generator=None, latents: torch.Tensor | None = None) -> DenoiseState:
    """Everything before the first denoising step: text, timesteps, initial noise (pipeline order)."""
    family = family_of(pipe)
    generator = _check_generator(generator, settings.batch_size)
    cond = encode_prompts(pipe, settings)
    device = execution_device(pipe)
    scheduler = fresh_scheduler(pipe, settings)
    shape = family.latent_shape(pipe, settings)
    if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
        raise ValueError(f"latents: expected a tensor of shape {shape}, got {getattr(latents, 'shape', type(latents))}")
    latents = family.prepare_latents(pipe, settings, scheduler, generator, latents, cond["prompt_embeds"].dtype, device)
    return new_state(pipe, settings, scheduler, latents, 0, cond, generator)


def _finish_step(pipe, state: DenoiseState, pred: torch.Tensor, t) -> None:
    state.latents = state.family.step(pipe, state, pred, t)
    state.step += 1
    state.carry, state.carry_stage = None, 0


@torch.no_grad()
def denoise(pipe, state: DenoiseState, stop: int | None = None, stop_stage: int | None = None,
            chain=None) -> DenoiseState:
    """Run denoising steps ``[state.step, stop)``; optionally also stages ``[0, stop_stage)`` of step ``stop``.

    With ``stop_stage`` the denoiser pass of step ``stop`` is cut inside (`UNetChain` or a DiT chain,
    from `Family.chain`): the state then holds the carry, and the next call finishes that pass first.
    Mutates and returns ``state``.
    """
    family = state.family
    n = state.num_steps
    stop = n if stop is None else stop
    if not isinstance(stop, int) or not state.step <= stop <= n:
        raise ValueError(f"stop: must be an int in [{state.step}, {n}], got {stop!r}")
    if chain is None and (stop_stage is not None or state.carry is not None):
        chain = family.chain(pipe)
        if chain is None:
            raise ValueError(f"stop_stage: a {family.name} denoiser cannot be cut inside a pass")
    if stop_stage is not None:
        if not isinstance(stop_stage, int) or not 0 <= stop_stage <= len(chain):
            raise ValueError(f"stop_stage: must be an int in [0, {len(chain)}], got {stop_stage!r}")
        if stop_stage and stop == n:
            raise ValueError(f"stop_stage: there is no step {stop} to cut inside (only {n} steps)")
    if state.carry is not None:  # finish an interrupted denoiser pass
        t = state.timesteps[state.step]
        output = chain.run(state.carry, state.carry_stage).hidden
        _finish_step(pipe, state, family.guide(pipe, state, output), t)
    while state.step < stop:
        t = state.timesteps[state.step]
        _finish_step(pipe, state, family.predict(pipe, state, t), t)
    if stop_stage:
        t = state.timesteps[state.step]
        carry = chain.start(**family.model_kwargs(pipe, state, t))
        state.carry, state.carry_stage = chain.run(carry, 0, stop_stage), stop_stage
    return state


@torch.no_grad()
def decode(pipe, state: DenoiseState, output_type: str = "pil"):
    """VAE-decode and post-process finished latents exactly as the pipeline does."""
    if state.step != state.num_steps or state.carry is not None:
        raise ValueError(f"state: only {state.step} of {state.num_steps} steps are done; finish denoising first")
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"output_type: expected 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
    if output_type == "latent":
        return state.latents
    return state.family.decode(pipe, state, output_type)


# ------------------------------------------------------------------ scheduler state
def fresh_scheduler(pipe, settings: GenerationSettings):
    """A new scheduler like ``pipe.scheduler``, set up for ``settings`` as the pipeline does (`Family.set_timesteps`)."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    family_of(pipe).set_timesteps(pipe, scheduler, settings, execution_device(pipe))
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


def restore_scheduler(pipe, settings: GenerationSettings, state: dict[str, Any]):
    """A fresh scheduler like ``pipe.scheduler`` for ``settings`` with ``state`` applied (only to the
    attributes its class carries, each value checked: `payload_schema.apply_scheduler_state`)."""
    scheduler = fresh_scheduler(pipe, settings)
    return apply_scheduler_state(scheduler, state, family_of(pipe).latent_shape(pipe, settings))


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
