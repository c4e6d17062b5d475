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
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from .chain import Carry, UNetChain
from .link import Link
from .payload import Payload, PayloadError
from .sampling import (
    DenoiseState,
    GenerationSettings,
    decode,
    denoise,
    encode_prompts,
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


def _tensor_digest(h, t: torch.Tensor | None) -> None:
    if t is not None and t.device.type != "meta":
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())


def model_fingerprint(pipe: StableDiffusionPipeline) -> str:
    """A short hash identifying a pipeline's models: configs plus a few weight tensors.

    Cheap even for SD-1.5 (a handful of small tensors are hashed, not all weights); two pipelines
    with the same fingerprint produce the same latents for the same inputs.
    """
    h = hashlib.sha256()
    for module in (pipe.unet, pipe.vae):
        h.update(json.dumps(dict(module.config), sort_keys=True, default=str).encode())
    h.update(json.dumps(pipe.text_encoder.config.to_dict(), sort_keys=True, default=str).encode())
    unet = pipe.unet
    for t in (unet.conv_in.weight, unet.conv_in.bias, unet.conv_out.weight, unet.conv_out.bias,
              unet.time_embedding.linear_1.bias, getattr(pipe.vae.post_quant_conv, "weight", None),
              pipe.text_encoder.get_input_embeddings().weight[:16]):
        _tensor_digest(h, t)
    return h.hexdigest()[:16]


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
        device_pipe: the UE's pipeline if it is a different object holding the same models
            (checked by `model_fingerprint`); default ``pipe``.
    """

    def __init__(self, pipe: StableDiffusionPipeline, split_step: int = 0, link: Link | None = None,
                 split_stage: int | None = None, condition: str = "prompt",
                 device_pipe: StableDiffusionPipeline | None = None):
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
        states = generator_states(state.generator)
        if states is not None:
            gens = state.generator if isinstance(state.generator, list) else [state.generator]
            meta["generator"] = {"devices": [str(g.device) for g in gens], "list": isinstance(state.generator, list)}
            tensors.update({f"generator.{i}": s for i, s in enumerate(states)})
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
        device, dtype = pipe._execution_device, pipe.unet.dtype
        expected = (settings.batch_size, pipe.unet.config.in_channels,
                    settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
        if tuple(latents.shape) != expected:
            raise PayloadError(f"payload: latents of shape {tuple(latents.shape)} do not match the settings "
                               f"(batch {settings.batch_size}: expected {expected})")
        if not torch.isfinite(latents).all():
            raise PayloadError("payload: latents contain NaN or inf")
        if meta["condition"] == "prompt":
            prompt_embeds = encode_prompts(pipe, settings)
        else:
            prompt_embeds = tensors["prompt_embeds"].to(device)
            rows = settings.batch_size * (2 if uses_cfg(pipe, settings.guidance_scale) else 1)
            if prompt_embeds.shape[0] != rows:
                raise PayloadError(f"payload: prompt_embeds batch {prompt_embeds.shape[0]} != {rows}")
        scheduler = restore_scheduler(pipe, settings.num_inference_steps,
                                      unpack_value(meta["scheduler_state"], tensors, device))
        generator = None
        if "generator" in meta:
            info = meta["generator"]
            states = [tensors[f"generator.{i}"] for i in range(len(info["devices"]))]
            generator = generators_from_states(states, info["devices"], info["list"])
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

    # ---------------------------------------------------------------- both
    def __call__(self, prompt, *, output_type: str = "pil", link_generator: torch.Generator | None = None,
                 **kwargs) -> SplitOutput:
        """ES -> link -> UE. ``kwargs`` as `edge`; ``link_generator`` drives the link's randomness."""
        sent = self.edge(prompt, **kwargs)
        received = self.link(sent, generator=link_generator)
        images = self.device(received, output_type=output_type)
        return SplitOutput(images=images, sent=sent, received=received, link=Link.summary(received))
