"""`Family`: what differs between diffusers pipeline families, behind one small interface.

The shared loop (`splitldm.pipeline.sampling`) calls, per generation::

    settings  = make_settings(...)                  # family.options / default_size / size_multiple
    cond      = family.encode(pipe, settings)       # the text conditioning (what "embeddings" sends)
    scheduler = fresh; family.set_timesteps(...)    # the schedule (SD3/Flux: flow matching, shift)
    latents   = family.prepare_latents(...)         # initial noise, in the denoiser's layout
    derived   = family.derived(...)                 # inputs the UE recomputes (time ids, RoPE ids, ...)
    per step: pred = family.predict(pipe, state, t) # denoiser call(s) + guidance
              family.step(pipe, state, pred, t)     # scheduler step
    images    = family.decode(pipe, state, output_type)

Each method performs the very operations of the family's own ``__call__``, in its order, through
the pipeline's own helpers, so a split run equals ``pipe(...)`` bit for bit.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor


@functools.lru_cache(maxsize=64)
def _step_parameters(step_function) -> frozenset[str]:
    return frozenset(inspect.signature(step_function).parameters)


def step_kwargs(scheduler, generator, eta: float) -> dict[str, Any]:
    """``eta`` / ``generator`` for schedulers whose ``step`` takes them (``prepare_extra_step_kwargs``)."""
    params = _step_parameters(type(scheduler).step)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


class Family:
    """One diffusers pipeline family. Subclass it in one file and `register` it (see the package doc).

    Class attributes:
        name: short name (``sd``, ``sdxl``, ``sd3``, ``pixart``, ``flux``), stored in payloads.
        pipeline_classes: diffusers pipeline class names this family runs.
        denoiser_name: the pipeline attribute holding the denoiser (``unet`` or ``transformer``).
        text_encoder_names: pipeline attributes of the text encoders (fingerprints, cost tables).
        options: family-specific call arguments and their defaults (JSON-able; they travel in the
            payload), e.g. Flux's ``true_cfg_scale``, PixArt's ``use_resolution_binning``.
        default_guidance: the ``guidance_scale`` default of the family's ``__call__``.
        supports: which generic arguments mean something here (``negative_prompt``, ``eta``,
            ``guidance_rescale``); others must stay at their neutral value.
    """

    name: ClassVar[str] = ""
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_name: ClassVar[str] = "unet"
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    options: ClassVar[dict[str, Any]] = {}
    default_guidance: ClassVar[float] = 7.5
    supports: ClassVar[frozenset[str]] = frozenset({"negative_prompt", "eta"})

    # ------------------------------------------------------------------ models
    def denoiser(self, pipe) -> torch.nn.Module:
        return getattr(pipe, self.denoiser_name)

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        return [m for m in (getattr(pipe, n, None) for n in self.text_encoder_names) if m is not None]

    def chain(self, pipe):
        """The denoiser as a chain of stages (cuts inside one pass), or None where not supported."""
        return None

    # ---------------------------------------------------------------- settings
    def default_size(self, pipe) -> int:
        """Default image side in pixels (as the pipeline's ``__call__`` picks it)."""
        return self.denoiser(pipe).config.sample_size * pipe.vae_scale_factor

    def size_multiple(self, pipe) -> int:
        """``height`` and ``width`` must be multiples of this."""
        return pipe.vae_scale_factor

    def check_options(self, pipe, options: dict[str, Any]) -> dict[str, Any]:
        """Validate family options (defaults filled in); errors name the option."""
        return dict(options)

    def generation_size(self, pipe, settings) -> tuple[int, int]:
        """(height, width) in pixels the latents are generated at (PixArt bins them)."""
        return settings.height, settings.width

    def uses_cfg(self, pipe, settings) -> bool:
        """Whether unconditional + conditional passes are batched (classifier-free guidance)."""
        return settings.guidance_scale > 1

    # ---------------------------------------------------------------- the call
    def encode(self, pipe, settings, device) -> dict[str, torch.Tensor]:
        """The text conditioning, CFG-batched as the pipeline batches it: name -> (rows, ...) tensor."""
        raise NotImplementedError

    def condition_shapes(self, pipe, settings) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of each `encode` tensor, from the configs alone (no text encoder runs)."""
        raise NotImplementedError

    def latent_shape(self, pipe, settings) -> tuple[int, ...]:
        """Shape of the initial noise ``latents`` (the denoiser's layout; Flux: packed)."""
        h, w = self.generation_size(pipe, settings)
        return (settings.batch_size, self.denoiser(pipe).config.in_channels,
                h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)

    def set_timesteps(self, pipe, scheduler, settings, device) -> None:
        """Set up a fresh ``scheduler`` for this call, as the pipeline does."""
        raise NotImplementedError

    def prepare_latents(self, pipe, settings, scheduler, generator, latents, dtype, device) -> torch.Tensor:
        """Initial latents: drawn from ``generator`` (or the given ``latents``), scaled as the pipeline does."""
        shape = self.latent_shape(pipe, settings)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device)
        return latents * scheduler.init_noise_sigma

    def derived(self, pipe, settings, cond, dtype, device) -> dict[str, Any]:
        """Denoiser inputs recomputed from the settings on either side (never sent)."""
        return {}

    def model_kwargs(self, pipe, state, t) -> dict[str, Any]:
        """Keyword arguments of one denoiser forward (without ``return_dict``); a chain's ``start`` takes them too."""
        raise NotImplementedError

    def guide(self, pipe, state, output: torch.Tensor) -> torch.Tensor:
        """Raw denoiser output -> the prediction the scheduler steps with (CFG, learned sigma, ...)."""
        if state.do_cfg:
            uncond, text = output.chunk(2)
            output = uncond + state.settings.guidance_scale * (text - uncond)
        return output

    def predict(self, pipe, state, t) -> torch.Tensor:
        """The guided prediction at timestep ``t`` (one or more denoiser passes)."""
        return self.guide(pipe, state, self.denoiser(pipe)(**self.model_kwargs(pipe, state, t), return_dict=False)[0])

    def step(self, pipe, state, pred: torch.Tensor, t) -> torch.Tensor:
        """One scheduler step: the new latents."""
        kwargs = step_kwargs(state.scheduler, state.generator, state.settings.eta)
        return state.scheduler.step(pred, t, state.latents, **kwargs, return_dict=False)[0]

    def decode(self, pipe, state, output_type: str):
        """Finished latents -> images, post-processed as the pipeline does."""
        raise NotImplementedError

    # ------------------------------------------------------------------ costs
    def condition_bits(self, pipe, settings) -> int:
        """Raw data bits of the ``embeddings`` condition: every `encode` tensor at its dtype (attention
        masks cross as bool, 8 bits per entry). Add the payload header for the exact wire size."""
        bits = 0
        for shape, dtype in self.condition_shapes(pipe, settings).values():
            size = 8 if dtype in (torch.bool, torch.int64, torch.int32) else torch.finfo(dtype).bits
            bits += math.prod(shape) * size
        return bits


#: Family name -> instance, in registration order.
FAMILIES: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add a `Family` subclass to the registry (its ``name`` must be new)."""
    if not cls.name or cls.name in FAMILIES:
        raise ValueError(f"name: family name {cls.name!r} is empty or already registered")
    FAMILIES[cls.name] = cls()
    return cls


def supported_pipelines() -> list[str]:
    """The diffusers pipeline class names any registered family runs."""
    return [c for fam in FAMILIES.values() for c in fam.pipeline_classes]


def family_of(pipe, argument: str = "pipe") -> Family:
    """The `Family` running ``pipe`` (by class, along its MRO). TypeError names the class and lists the supported ones."""
    for klass in type(pipe).__mro__:
        for fam in FAMILIES.values():
            if klass.__name__ in fam.pipeline_classes:
                return fam
    raise TypeError(f"{argument}: {type(pipe).__name__} is not a supported pipeline; supported: "
                    f"{', '.join(supported_pipelines())}")
