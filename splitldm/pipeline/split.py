"""`SplitPipeline`: one text-to-image generation split between an edge server (ES) and a device (UE).

::

    split = SplitPipeline(pipe, split_step=4, link=Link([...]))
    payload = split.edge("a red circle", num_inference_steps=8, generator=g)   # ES: text + steps [0, 4)
    images = split.device(split.link(payload))                                 # UE: steps [4, 8) + VAE

With ``split_stage=c`` the cut is inside the UNet pass of step ``split_step``: the ES also runs its
stages ``[0, c)`` and the carry (hidden state, skip stack, embeddings) crosses instead (see
`UNetChain.cut_table` for what that costs). With an ideal link the images equal
``pipe(prompt, generator=<same seed>, ...)`` bit for bit, for any scheduler.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from splitldm.pipeline.chain import Carry, UNetChain
from splitldm.link.stack import Link
from splitldm.link.payload import Payload, PayloadError
from splitldm.pipeline.sampling import (
    DenoiseState,
    GenerationSettings,
    decode,
    denoise,
    encode_prompts,
    execution_device,
    fresh_scheduler,
    generator_states,
    generators_from_states,
    guidance_embedding,
    make_settings,
    pack_value,
    prepare,
    restore_scheduler,
    scheduler_state,
    unpack_value,
    uses_cfg,
)

CONDITIONS = ("prompt", "embeddings")
GENERATOR_STATES = ("full", "seed", "none")


def _config_digest(h, config) -> None:
    """Hash a model config, leaving out bookkeeping (``_name_or_path``, library versions, ...)."""
    items = dict(config) if not hasattr(config, "to_dict") else config.to_dict()
    kept = {k: v for k, v in items.items() if not k.startswith("_") and not k.endswith("_version")}
    h.update(json.dumps(kept, sort_keys=True, default=str).encode())


def _tensor_digest(h, t: torch.Tensor | None) -> None:
    if t is not None and t.device.type != "meta":
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())


def latent_space_fingerprint(pipe: StableDiffusionPipeline) -> str:
    """A short hash of what two pipelines must share to hand latents over: VAE and text encoder."""
    h = hashlib.sha256()
    _config_digest(h, pipe.vae.config)
    _config_digest(h, pipe.text_encoder.config)
    for t in (getattr(pipe.vae.post_quant_conv, "weight", None), pipe.vae.decoder.conv_in.weight,
              pipe.text_encoder.get_input_embeddings().weight[:16]):
        _tensor_digest(h, t)
    return h.hexdigest()[:16]


def handoff_timesteps(scheduler, t_start: int, num_steps: int) -> list[int]:
    """``num_steps`` descending timesteps starting at ``t_start`` for a device-side scheduler.

    Uses the scheduler's own training grid where it has one (LCM's ``original_inference_steps``
    skipping grid), so a distilled student is evaluated at timesteps it was trained on.
    """
    n_train = scheduler.config.num_train_timesteps
    original = scheduler.config.get("original_inference_steps")
    grid = list(range(n_train - 1, -1, -(n_train // original))) if original else list(range(n_train - 1, -1, -1))
    below = [t for t in grid if t <= t_start] or [grid[-1]]
    if len(below) <= num_steps:
        return below
    picks = torch.linspace(0, len(below) - 1, num_steps + 1)[:-1].round().long().tolist()
    return [below[i] for i in picks]


def model_fingerprint(pipe: StableDiffusionPipeline) -> str:
    """A short hash identifying a pipeline's models: configs plus a few weight tensors.

    Cheap even for SD-1.5 (a handful of small tensors are hashed, not all weights); two pipelines
    with the same fingerprint produce the same latents for the same inputs.
    """
    h = hashlib.sha256()
    for config in (pipe.unet.config, pipe.vae.config, pipe.text_encoder.config):
        _config_digest(h, config)
    unet = pipe.unet
    for t in (unet.conv_in.weight, unet.conv_in.bias, unet.conv_out.weight, unet.conv_out.bias,
              unet.time_embedding.linear_1.bias, getattr(pipe.vae.post_quant_conv, "weight", None),
              pipe.text_encoder.get_input_embeddings().weight[:16]):
        _tensor_digest(h, t)
    return h.hexdigest()[:16]


def _payload_generator(meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
    """The generator(s) whose state crossed in the payload, or None."""
    if "generator" not in meta:
        return None
    info = meta["generator"]
    if "seeds" in info:
        gens = [torch.Generator(device=d).manual_seed(int(seed)) for d, seed in zip(info["devices"], info["seeds"])]
        return gens if info["list"] else gens[0]
    try:
        states = [tensors[f"generator.{i}"] for i in range(len(info["devices"]))]
    except KeyError as exc:
        raise PayloadError(f"payload: generator state {exc} is missing") from None
    return generators_from_states(states, info["devices"], info["list"])


def _received_conditioning(pipe, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                           settings: GenerationSettings, latents: torch.Tensor) -> torch.Tensor:
    """Check the received latents and return the text embeddings the device conditions on."""
    if not torch.isfinite(latents).all():
        raise PayloadError("payload: latents contain NaN or inf")
    if meta["condition"] == "prompt":
        return encode_prompts(pipe, settings)
    prompt_embeds = tensors["prompt_embeds"].to(execution_device(pipe))
    rows = settings.batch_size * (2 if uses_cfg(pipe, settings.guidance_scale) else 1)
    if prompt_embeds.shape[0] != rows:
        raise PayloadError(f"payload: prompt_embeds batch {prompt_embeds.shape[0]} != {rows}")
    return prompt_embeds


@dataclass
class SplitOutput:
    """Result of a full split generation.

    ``images``: as the pipeline returns them (list of PIL images, (B, H, W, 3) array or (B, 3, H, W)
    tensor). ``sent`` / ``received``: the payload before / after the link. ``link``: `Link.summary`.
    """

    images: Any
    sent: Payload
    received: Payload
    link: dict[str, Any]


class SplitPipeline:
    """A `StableDiffusionPipeline` split at denoising step ``split_step`` (and optionally UNet stage).

    Args:
        pipe: any diffusers `StableDiffusionPipeline` (used as is; its scheduler is never mutated).
        split_step: k: the ES runs steps ``[0, k)``, the UE ``[k, T)``; 0 <= k <= T (checked per call).
        link: the `Link` between them (default: ideal).
        split_stage: cut inside step k's UNet pass before this `UNetChain` stage (1 .. len-1), or None.
        condition: what the UE conditions on: ``"prompt"`` sends the prompt text and the UE runs its
            own text encoder (a few bytes); ``"embeddings"`` sends the text embeddings (no text
            encoder on the UE, but (B, L, D) floats cross).
        device_pipe: the UE's pipeline; default ``pipe``. Without ``device_steps`` it must hold the
            same models (checked by `model_fingerprint`) and the result is exact.
        device_steps: hand over to a *different* UE model (e.g. a distilled LCM student sharing the
            VAE and text encoder, checked by `latent_space_fingerprint`): the UE continues from the
            ES's current timestep with ``device_steps`` steps of its own scheduler (which must accept
            custom timesteps: LCM, Euler, DPM-Solver++). Not exact, by design: dynamic diffusion.
        generator_state: how the UE gets its random numbers (ancestral / LCM schedulers draw noise):
            ``"full"`` sends the generator state (exact; 5,056 bytes for a CPU generator),
            ``"seed"`` sends a 64-bit seed drawn from the ES's generator (reproducible, 8 bytes, but
            not the unsplit pipeline's noise), ``"none"`` sends nothing (deterministic schedulers).
    """

    def __init__(self, pipe: StableDiffusionPipeline, split_step: int = 0, link: Link | None = None,
                 split_stage: int | None = None, condition: str = "prompt",
                 device_pipe: StableDiffusionPipeline | None = None, device_steps: int | None = None,
                 generator_state: str = "full"):
        if not isinstance(pipe, StableDiffusionPipeline):
            raise TypeError(f"pipe: expected a diffusers StableDiffusionPipeline, got {type(pipe).__name__}")
        if not isinstance(split_step, int) or isinstance(split_step, bool) or split_step < 0:
            raise ValueError(f"split_step: must be an int >= 0, got {split_step!r}")
        self.chain = UNetChain(pipe.unet)
        if split_stage is not None and (not isinstance(split_stage, int) or not 1 <= split_stage < len(self.chain)):
            raise ValueError(f"split_stage: must be None or an int in [1, {len(self.chain) - 1}] "
                             f"(stages {self.chain.names}), got {split_stage!r}")
        if link is not None and not isinstance(link, Link):
            raise TypeError(f"link: expected a splitldm.Link, got {type(link).__name__}")
        if condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {CONDITIONS}, got {condition!r}")
        if device_pipe is not None and not isinstance(device_pipe, StableDiffusionPipeline):
            raise TypeError(f"device_pipe: expected a StableDiffusionPipeline, got {type(device_pipe).__name__}")
        if device_steps is not None:
            if not isinstance(device_steps, int) or isinstance(device_steps, bool) or device_steps < 1:
                raise ValueError(f"device_steps: must be None or an int >= 1, got {device_steps!r}")
            if split_stage is not None:
                raise ValueError("split_stage: a cut inside a UNet pass cannot hand over to another model "
                                 "(device_steps is set)")
            scheduler = (device_pipe or pipe).scheduler
            if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
                raise ValueError(f"device_pipe: its scheduler {type(scheduler).__name__} cannot start from an "
                                 "arbitrary timestep; use LCM, Euler or DPM-Solver++ on the device")
        if generator_state not in GENERATOR_STATES:
            raise ValueError(f"generator_state: expected one of {GENERATOR_STATES}, got {generator_state!r}")
        self.generator_state = generator_state
        self.device_steps = device_steps
        self.pipe = pipe
        self.device_pipe = device_pipe or pipe
        self.split_step = split_step
        self.split_stage = split_stage
        self.link = link if link is not None else Link()
        self.condition = condition
        self._fingerprints: dict[int, str] = {}

    def fingerprint(self, pipe: StableDiffusionPipeline) -> str:
        key = id(pipe)
        if key not in self._fingerprints:
            self._fingerprints[key] = model_fingerprint(pipe)
        return self._fingerprints[key]

    # ------------------------------------------------------------------ ES
    @torch.no_grad()
    def edge(self, prompt, *, num_inference_steps: int = 50, guidance_scale: float = 7.5, negative_prompt=None,
             num_images_per_prompt: int = 1, eta: float = 0.0, guidance_rescale: float = 0.0,
             generator=None, height: int | None = None, width: int | None = None,
             latents: torch.Tensor | None = None) -> Payload:
        """ES side: encode the text, run steps ``[0, split_step)`` (and stages ``[0, split_stage)``).

        Arguments as `StableDiffusionPipeline.__call__`. Returns the `Payload` to send.
        """
        pipe = self.pipe
        settings = make_settings(pipe, prompt, num_inference_steps=num_inference_steps,
                                 guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                                 num_images_per_prompt=num_images_per_prompt, eta=eta,
                                 guidance_rescale=guidance_rescale, height=height, width=width)
        state = prepare(pipe, settings, generator, latents)
        k = self.split_step
        if k > state.num_steps or (k == state.num_steps and self.split_stage is not None):
            raise ValueError(f"split_step: must be <= {state.num_steps} (the number of timesteps)"
                             f"{' and < it when split_stage is set' if self.split_stage else ''}, got {k}")
        denoise(pipe, state, stop=k, stop_stage=self.split_stage, chain=self.chain)
        return self._pack(state)

    def _pack(self, state: DenoiseState) -> Payload:
        pipe, settings = self.pipe, state.settings
        tensors: dict[str, torch.Tensor] = {"latents": state.latents.detach().cpu()}
        primary = ["latents"]
        reference = fresh_scheduler(pipe, settings.num_inference_steps)
        sched = pack_value(scheduler_state(state.scheduler, reference), "scheduler", tensors)
        meta: dict[str, Any] = {
            "kind": "splitldm.split",
            "model": self.fingerprint(pipe),
            "latent_space": latent_space_fingerprint(pipe),
            "next_timestep": int(state.timesteps[state.step]) if state.step < state.num_steps else -1,
            "scheduler": type(state.scheduler).__name__,
            "scheduler_state": sched,
            "step": state.step,
            "num_steps": state.num_steps,
            "condition": self.condition,
            "settings": asdict(settings),
            "dtype": str(state.latents.dtype).removeprefix("torch."),
        }
        if self.condition == "embeddings":
            tensors["prompt_embeds"] = state.prompt_embeds.detach().cpu()
            meta["settings"]["prompt"] = [""] * len(settings.prompt)  # the text itself need not cross
            meta["settings"]["negative_prompt"] = None
        if state.generator is not None and self.generator_state != "none":
            gens = state.generator if isinstance(state.generator, list) else [state.generator]
            meta["generator"] = {"devices": [str(g.device) for g in gens], "list": isinstance(state.generator, list)}
            if self.generator_state == "full":
                tensors.update({f"generator.{i}": s for i, s in enumerate(generator_states(state.generator))})
            else:
                meta["generator"]["seeds"] = [int(torch.randint(0, 2**63 - 1, (1,), generator=g, device=g.device))
                                              for g in gens]
        if state.carry is not None:
            carry_tensors = state.carry.tensors()
            if self.condition == "prompt":
                carry_tensors.pop("encoder_hidden_states", None)  # the UE recomputes it from the prompt
            tensors.update({f"carry.{k}": v.detach().cpu() for k, v in carry_tensors.items()})
            primary += [f"carry.{k}" for k in carry_tensors if k == "hidden" or k.startswith("skip.")]
            meta["carry"] = {"stage": state.carry_stage, "layout": state.carry.layout()}
        return Payload(tensors=tensors, meta=meta, primary=tuple(primary))

    # ------------------------------------------------------------------ UE
    @torch.no_grad()
    def device(self, payload: Payload, output_type: str = "pil"):
        """UE side: finish the denoising steps from the (received) payload and decode the images."""
        state = self._unpack(payload)
        denoise(self.device_pipe, state, chain=UNetChain(self.device_pipe.unet))
        return decode(self.device_pipe, state, output_type)

    def _unpack(self, payload: Payload) -> DenoiseState:
        if not isinstance(payload, Payload):
            raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
        pipe, meta, tensors = self.device_pipe, payload.meta, payload.tensors
        if meta.get("kind") != "splitldm.split":
            raise PayloadError("payload: not a SplitPipeline payload (meta['kind'] missing)")
        if self.device_steps is not None:
            return self._unpack_handoff(payload)
        if meta.get("model") != self.fingerprint(pipe):
            raise PayloadError(f"payload: made by a different model (fingerprint {meta.get('model')} != "
                               f"{self.fingerprint(pipe)} of this device's pipeline)")
        if meta.get("scheduler") != type(pipe.scheduler).__name__:
            raise PayloadError(f"payload: made with scheduler {meta.get('scheduler')}, this device uses "
                               f"{type(pipe.scheduler).__name__}")
        try:
            settings = GenerationSettings(**meta["settings"])
            latents = tensors["latents"]
        except (KeyError, TypeError) as exc:
            raise PayloadError(f"payload: incomplete ({exc})") from exc
        device, dtype = execution_device(pipe), pipe.unet.dtype
        expected = (settings.batch_size, pipe.unet.config.in_channels,
                    settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
        if tuple(latents.shape) != expected:
            raise PayloadError(f"payload: latents of shape {tuple(latents.shape)} do not match the settings "
                               f"(batch {settings.batch_size}: expected {expected})")
        prompt_embeds = _received_conditioning(pipe, meta, tensors, settings, latents)
        scheduler = restore_scheduler(pipe, settings.num_inference_steps,
                                      unpack_value(meta["scheduler_state"], tensors, device))
        generator = _payload_generator(meta, tensors)
        state = DenoiseState(settings=settings, scheduler=scheduler, latents=latents.to(device, dtype),
                             step=int(meta["step"]), timesteps=scheduler.timesteps, prompt_embeds=prompt_embeds,
                             timestep_cond=guidance_embedding(pipe, settings, dtype), generator=generator,
                             do_cfg=uses_cfg(pipe, settings.guidance_scale))
        if state.num_steps != meta["num_steps"] or not 0 <= state.step <= state.num_steps:
            raise PayloadError(f"payload: step {state.step} of {meta['num_steps']} does not fit this scheduler "
                               f"({state.num_steps} timesteps)")
        if "carry" in meta:
            carry_tensors = {k[len("carry."):]: v.to(device) for k, v in tensors.items() if k.startswith("carry.")}
            if "encoder_hidden_states" not in carry_tensors:
                carry_tensors["encoder_hidden_states"] = pipe.unet.process_encoder_hidden_states(
                    encoder_hidden_states=prompt_embeds, added_cond_kwargs=None)
            state.carry = Carry.from_tensors(carry_tensors, meta["carry"]["layout"])
            state.carry_stage = int(meta["carry"]["stage"])
        return state

    def _unpack_handoff(self, payload: Payload) -> DenoiseState:
        pipe, meta, tensors = self.device_pipe, payload.meta, payload.tensors
        if meta.get("latent_space") != latent_space_fingerprint(pipe):
            raise PayloadError("payload: made by a model with a different VAE / text encoder than this device's")
        if "carry" in meta:
            raise PayloadError("payload: a cut inside a UNet pass cannot be handed over to another model")
        settings = GenerationSettings(**meta["settings"])
        device, dtype = execution_device(pipe), pipe.unet.dtype
        latents = tensors["latents"]
        prompt_embeds = _received_conditioning(pipe, meta, tensors, settings, latents)
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        done = meta["next_timestep"] < 0
        if not done:
            steps = handoff_timesteps(scheduler, meta["next_timestep"], self.device_steps)
            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # custom schedules are intended here: no warnings
            try:
                scheduler.set_timesteps(timesteps=steps, device=device)
            finally:
                diffusers_logging.set_verbosity(level)
        timesteps = scheduler.timesteps if not done else torch.zeros(0, dtype=torch.long)
        generator = _payload_generator(meta, tensors)
        return DenoiseState(settings=settings, scheduler=scheduler, latents=latents.to(device, dtype), step=0,
                            timesteps=timesteps, prompt_embeds=prompt_embeds,
                            timestep_cond=guidance_embedding(pipe, settings, dtype), generator=generator,
                            do_cfg=uses_cfg(pipe, settings.guidance_scale))

    # ---------------------------------------------------------------- both
    def __call__(self, prompt, *, output_type: str = "pil", link_generator: torch.Generator | None = None,
                 **kwargs) -> SplitOutput:
        """ES -> link -> UE. ``kwargs`` as `edge`; ``link_generator`` drives the link's randomness."""
        sent = self.edge(prompt, **kwargs)
        received = self.link(sent, generator=link_generator)
        images = self.device(received, output_type=output_type)
        return SplitOutput(images=images, sent=sent, received=received, link=Link.summary(received))
