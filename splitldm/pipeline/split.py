"""`SplitPipeline`: one text-to-image generation split between an edge server (ES) and a device (UE).

Every family in `splitldm.pipeline.families` splits the same way: SD 1.x/2.x, SDXL, SD3, PixArt-alpha /
sigma and Flux (`supported_pipelines()`); what differs between them is a small `Family` adapter.

::

    split = SplitPipeline(pipe, split_step=4, link=Link([...]))
    payload = split.edge("a red circle", num_inference_steps=8, generator=g)   # ES: text + steps [0, 4)
    images = split.device(split.link(payload))                                 # UE: steps [4, 8) + VAE

With ``split_stage=c`` the cut is inside the denoiser pass of step ``split_step``: the ES also runs its
stages ``[0, c)`` and the carry (hidden state, skip stack / text stream, embeddings) crosses instead
(see `UNetChain.cut_table` for what that costs). With an ideal link the images equal
``pipe(prompt, generator=<same seed>, ...)`` bit for bit, for any scheduler the family supports.

What the condition modes cost (`SplitPipeline.condition_bits`, per image, fp32, CFG doubles the rows):
``"prompt"`` sends the prompt text (a few bytes); ``"embeddings"`` sends the text-encoder outputs:
SD-1.5 77 x 768 (1.9 Mbit), SDXL 77 x 2048 + 1280 pooled (5.1 Mbit), SD3 (77 + 256) x 4096 + 2048
pooled (43.7 Mbit), PixArt-alpha 120 x 4096 + mask (15.7 Mbit; sigma 300 tokens: 39.3 Mbit), Flux
512 x 4096 + 768 pooled (67.1 Mbit): for the T5 families the embeddings outweigh the latents by far.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging

from splitldm.checks import check_generation_inputs
from splitldm.pipeline.chain import Carry, UNetChain
from splitldm.link.stack import Link
from splitldm.link.payload import Payload, PayloadError
from splitldm.pipeline.families import Family, family_of, supported_pipelines
from splitldm.pipeline.payload_schema import check_resumed_schedule, check_split_payload
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
    make_settings,
    new_state,
    pack_value,
    prepare,
    restore_scheduler,
    scheduler_state,
    unpack_value,
)

CONDITIONS = ("prompt", "embeddings")
GENERATOR_STATES = ("full", "seed", "none")


#: Config keys transformers fills in on `save_pretrained` (they do not change what a model computes).
_BOOKKEEPING = frozenset({"architectures", "dtype", "torch_dtype"})


def _config_digest(h, config) -> None:
    """Hash a model config, leaving out bookkeeping (``_name_or_path``, library versions, ...)."""
    items = dict(config) if not hasattr(config, "to_dict") else config.to_dict()
    kept = {k: v for k, v in items.items() if not k.startswith("_") and not k.endswith("_version")
            and k not in _BOOKKEEPING}
    h.update(json.dumps(kept, sort_keys=True, default=str).encode())


def _tensor_digest(h, t: torch.Tensor | None) -> None:
    if t is not None and t.device.type != "meta":
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())


def latent_space_fingerprint(pipe) -> str:
    """A short hash of what two pipelines must share to hand latents over: VAE and text encoder(s)."""
    family = family_of(pipe)
    h = hashlib.sha256()
    h.update(family.name.encode())
    _config_digest(h, pipe.vae.config)
    for te in family.text_encoders(pipe):
        _config_digest(h, te.config)
    for t in (getattr(pipe.vae.post_quant_conv, "weight", None) if pipe.vae.post_quant_conv is not None else None,
              pipe.vae.decoder.conv_in.weight):
        _tensor_digest(h, t)
    for te in family.text_encoders(pipe):
        _tensor_digest(h, te.get_input_embeddings().weight[:16])
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


def handoff_sigmas(scheduler, sigma_start: float, num_steps: int) -> list[float]:
    """``num_steps`` flow-matching sigmas for a device-side scheduler, the first one ``sigma_start``.

    The spacing is Flux's (``linspace(s, s / n, n)``); the scheduler's fixed ``shift`` is inverted
    first, so after `set_timesteps` applies it the schedule starts exactly at ``sigma_start``.
    Schedulers with dynamic shifting are refused (their shift depends on the image size).
    """
    if scheduler.config.get("use_dynamic_shifting", False):
        raise ValueError("device_pipe: a flow-matching scheduler with use_dynamic_shifting cannot start from a "
                         "given sigma; use a fixed shift (e.g. Flux-schnell's shift=1)")
    if not 0 < sigma_start <= 1:
        raise PayloadError(f"payload: next_sigma {sigma_start} is not in (0, 1]")
    shift = float(scheduler.config.get("shift", 1.0))
    targets = [sigma_start * (1 - i / num_steps) for i in range(num_steps)]
    return [y / (shift - (shift - 1) * y) for y in targets]


def model_fingerprint(pipe) -> str:
    """A short hash identifying a pipeline's models: configs plus a few weight tensors.

    Cheap even for large models (a handful of small tensors are hashed, not all weights); two
    pipelines with the same fingerprint produce the same latents for the same inputs.
    """
    family = family_of(pipe)
    denoiser = family.denoiser(pipe)
    h = hashlib.sha256()
    h.update(latent_space_fingerprint(pipe).encode())
    _config_digest(h, denoiser.config)
    params = [p for p in denoiser.parameters()]
    for t in params[:2] + params[-2:]:
        _tensor_digest(h, t)
    if family.name in ("sd", "sdxl"):  # as before: the time embedding's bias too
        _tensor_digest(h, denoiser.time_embedding.linear_1.bias)
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
                           settings: GenerationSettings, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Check the received latents and return the text conditioning the device uses."""
    if not torch.isfinite(latents).all():
        raise PayloadError("payload: latents contain NaN or inf")
    if meta["condition"] == "prompt":
        return encode_prompts(pipe, settings)
    family, device = family_of(pipe), execution_device(pipe)
    cond = {}
    for name, (shape, dtype) in family.condition_shapes(pipe, settings).items():
        if name not in tensors:
            raise PayloadError(f"payload: conditioning tensor {name!r} is missing")
        value = tensors[name]
        if tuple(value.shape) != tuple(shape):
            what = "batch" if value.shape[:1] != shape[:1] else "shape"
            raise PayloadError(f"payload: {name} {what} {tuple(value.shape)} != {tuple(shape)}")
        wire = meta.get("cond_dtypes", {}).get(name)
        cond[name] = value.to(device, getattr(torch, wire)) if wire else value.to(device)
    return cond


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
    """A diffusers pipeline split at denoising step ``split_step`` (and optionally a denoiser stage).

    Args:
        pipe: a diffusers pipeline of a supported family (`supported_pipelines()`: SD, SDXL, SD3,
            PixArt-alpha / sigma, Flux); used as is, its scheduler is never mutated. Others: TypeError.
        split_step: k: the ES runs steps ``[0, k)``, the UE ``[k, T)``; 0 <= k <= T (checked per call).
        link: the `Link` between them (default: ideal).
        split_stage: cut inside step k's denoiser pass before this chain stage (1 .. len-1), or None.
        condition: what the UE conditions on: ``"prompt"`` sends the prompt text and the UE runs its
            own text encoder(s) (a few bytes); ``"embeddings"`` sends the text conditioning tensors (no
            text encoder on the UE, but they are large: see `condition_bits`).
        device_pipe: the UE's pipeline; default ``pipe``. Without ``device_steps`` it must hold the
            same models (checked by `model_fingerprint`) and the result is exact.
        device_steps: hand over to a *different* UE model (e.g. a distilled LCM student sharing the
            VAE and text encoder, checked by `latent_space_fingerprint`): the UE continues from the
            ES's current timestep with ``device_steps`` steps of its own scheduler (which must accept
            custom timesteps: LCM, Euler, DPM-Solver++, flow-matching Euler). Not exact, by design.
        generator_state: how the UE gets its random numbers (ancestral / LCM schedulers draw noise):
            ``"full"`` sends the generator state (exact; 5,056 bytes for a CPU generator),
            ``"seed"`` sends a 64-bit seed drawn from the ES's generator (reproducible, 8 bytes, but
            not the unsplit pipeline's noise), ``"none"`` sends nothing (deterministic schedulers).
    """

    def __init__(self, pipe, split_step: int = 0, link: Link | None = None,
                 split_stage: int | None = None, condition: str = "prompt",
                 device_pipe=None, device_steps: int | None = None, generator_state: str = "full"):
        self.family: Family = family_of(pipe)
        if not isinstance(split_step, int) or isinstance(split_step, bool) or split_step < 0:
            raise ValueError(f"split_step: must be an int >= 0, got {split_step!r}")
        self.chain = self.family.chain(pipe)
        if split_stage is not None:
            if self.chain is None:
                raise ValueError(f"split_stage: a {self.family.name} denoiser cannot be cut inside a pass here")
            if not isinstance(split_stage, int) or not 1 <= split_stage < len(self.chain):
                raise ValueError(f"split_stage: must be None or an int in [1, {len(self.chain) - 1}] "
                                 f"(stages {self.chain.names}), got {split_stage!r}")
        if link is not None and not isinstance(link, Link):
            raise TypeError(f"link: expected a splitldm.Link, got {type(link).__name__}")
        if condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {CONDITIONS}, got {condition!r}")
        if device_pipe is not None and family_of(device_pipe, "device_pipe") is not self.family:
            raise TypeError(f"device_pipe: a {family_of(device_pipe).name} pipeline cannot continue a "
                            f"{self.family.name} generation")
        if device_steps is not None:
            if not isinstance(device_steps, int) or isinstance(device_steps, bool) or device_steps < 1:
                raise ValueError(f"device_steps: must be None or an int >= 1, got {device_steps!r}")
            if split_stage is not None:
                raise ValueError("split_stage: a cut inside a denoiser pass cannot hand over to another model "
                                 "(device_steps is set)")
            scheduler = (device_pipe or pipe).scheduler
            params = inspect.signature(scheduler.set_timesteps).parameters
            if "timesteps" not in params and "sigmas" not in params:
                raise ValueError(f"device_pipe: its scheduler {type(scheduler).__name__} cannot start from an "
                                 "arbitrary timestep; use LCM, Euler, DPM-Solver++ or flow-matching Euler on the device")
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

    def fingerprint(self, pipe) -> str:
        key = id(pipe)
        if key not in self._fingerprints:
            self._fingerprints[key] = model_fingerprint(pipe)
        return self._fingerprints[key]

    def condition_bits(self, prompt, **kwargs) -> dict[str, int]:
        """What each condition mode makes cross for this call, in bits (payload data, no header).

        ``"prompt"``: the UTF-8 JSON of the prompt and negative prompt lists (as in the payload
        meta); ``"embeddings"``: the conditioning tensors (`Family.condition_shapes`, fp32 -> 32 bits
        a value, masks 8). Computed from the configs: no text encoder runs. ``kwargs`` as `edge`.
        """
        kwargs.pop("generator", None)
        kwargs.pop("latents", None)
        settings = make_settings(self.pipe, prompt, **kwargs)
        text = json.dumps([settings.prompt, settings.negative_prompt])
        return {"prompt": 8 * len(text.encode()), "embeddings": self.family.condition_bits(self.pipe, settings)}

    # ------------------------------------------------------------------ ES
    @torch.no_grad()
    def edge(self, prompt, *, num_inference_steps: int = 50, guidance_scale: float | None = None,
             negative_prompt=None, num_images_per_prompt: int = 1, eta: float = 0.0, guidance_rescale: float = 0.0,
             generator=None, height: int | None = None, width: int | None = None,
             latents: torch.Tensor | None = None, **options) -> Payload:
        """ES side: encode the text, run steps ``[0, split_step)`` (and stages ``[0, split_stage)``).

        Arguments as the pipeline's ``__call__`` (``guidance_scale`` None: the family's default;
        ``options``: the family's own arguments, `Family.options`). Returns the `Payload` to send.
        """
        pipe = self.pipe
        check_generation_inputs(latents=latents, dtype=self.family.denoiser(pipe).dtype, height=height, width=width)
        settings = make_settings(pipe, prompt, num_inference_steps=num_inference_steps,
                                 guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                                 num_images_per_prompt=num_images_per_prompt, eta=eta,
                                 guidance_rescale=guidance_rescale, height=height, width=width, **options)
        state = prepare(pipe, settings, generator, latents)
        k = self.split_step
        if k > state.num_steps or (k == state.num_steps and self.split_stage is not None):
            raise ValueError(f"split_step: must be <= {state.num_steps} (the number of timesteps)"
                             f"{' and < it when split_stage is set' if self.split_stage else ''}, got {k}")
        if self.split_stage is not None and type(self.family).predict is not Family.predict and state.do_cfg:
            raise ValueError(f"split_stage: a {self.family.name} step with true CFG runs two denoiser passes; "
                             "cut between steps instead")
        denoise(pipe, state, stop=k, stop_stage=self.split_stage, chain=self.chain)
        return self._pack(state)

    def _pack(self, state: DenoiseState, generator_state: str | None = None, condition: str | None = None) -> Payload:
        """``state`` as a payload; ``generator_state`` / ``condition``: None, this pipeline's (`relay` keeps the received ones)."""
        pipe, settings = self.pipe, state.settings
        generator_state = self.generator_state if generator_state is None else generator_state
        condition = self.condition if condition is None else condition
        tensors: dict[str, torch.Tensor] = {"latents": state.latents.detach().cpu()}
        primary = ["latents"]
        reference = fresh_scheduler(pipe, settings)
        sched = pack_value(scheduler_state(state.scheduler, reference), "scheduler", tensors)
        next_t = state.timesteps[state.step] if state.step < state.num_steps else None
        meta: dict[str, Any] = {
            "kind": "splitldm.split",
            "family": self.family.name,
            "model": self.fingerprint(pipe),
            "latent_space": latent_space_fingerprint(pipe),
            "next_timestep": -1 if next_t is None else (int(next_t) if not next_t.is_floating_point()
                                                        or float(next_t).is_integer() else float(next_t)),
            "scheduler": type(state.scheduler).__name__,
            "scheduler_state": sched,
            "step": state.step,
            "num_steps": state.num_steps,
            "condition": condition,
            "settings": asdict(settings),
            "dtype": str(state.latents.dtype).removeprefix("torch."),
        }
        if next_t is not None and hasattr(state.scheduler, "sigmas") and getattr(state.scheduler.config, "use_flow_sigmas", True) \
                and type(state.scheduler).__name__.startswith("FlowMatch"):
            meta["next_sigma"] = float(state.scheduler.sigmas[state.step])
        if condition == "embeddings":
            wire = {}
            for name, value in state.cond.items():
                value = value.detach().cpu()
                if not value.is_floating_point() and value.numel() and bool(((value == 0) | (value == 1)).all()):
                    wire[name] = str(value.dtype).removeprefix("torch.")
                    value = value.bool()  # attention masks: 8 bits an entry instead of 64
                tensors[name] = value
            if wire:
                meta["cond_dtypes"] = wire
            meta["settings"]["prompt"] = [""] * len(settings.prompt)  # the text itself need not cross
            if settings.negative_prompt is not None:  # its presence matters (Flux true CFG), not its text
                meta["settings"]["negative_prompt"] = [""] * len(settings.negative_prompt)
        if state.generator is not None and generator_state != "none":
            gens = state.generator if isinstance(state.generator, list) else [state.generator]
            meta["generator"] = {"devices": [str(g.device) for g in gens], "list": isinstance(state.generator, list)}
            if generator_state == "full":
                tensors.update({f"generator.{i}": s for i, s in enumerate(generator_states(state.generator))})
            else:
                meta["generator"]["seeds"] = [int(torch.randint(0, 2**63 - 1, (1,), generator=g, device=g.device))
                                              for g in gens]
        if state.carry is not None:
            carry_tensors = state.carry.tensors()
            if condition == "prompt" and isinstance(self.chain, UNetChain):
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
        chain = self.chain if self.device_pipe is self.pipe else self.family.chain(self.device_pipe)
        denoise(self.device_pipe, state, chain=chain)
        return decode(self.device_pipe, state, output_type)

    @torch.no_grad()
    def relay(self, payload: Payload, stop: int, stop_stage: int | None = None) -> Payload:
        """A middle node of a chain: continue a received payload with steps ``[a, stop)`` and repack it.

        ``a`` is the payload's step (``meta["step"]``); with ``stop_stage`` the pass of step ``stop`` is
        cut inside before that stage (as ``split_stage``). The payload is checked as `device` checks it
        (`check_split_payload`, model fingerprint, scheduler) and repacked as `edge` packs it: the same
        condition mode, and the generator state carried on if it came (``"full"``: exact; ``"seed"``:
        a fresh seed drawn per hop, reproducible but not the two-node images). So with ideal links
        ``device(relay(relay(edge(0..a), b), c))`` equals ``device(edge(0..c))`` and the unsplit
        pipeline bit for bit, for every ``0 <= a <= b <= c <= T``.

        Args:
            payload: a `Payload` made by `edge` or `relay` of a pipeline with this pipeline's models.
            stop: the step to stop before, ``a <= stop <= T`` (T: the payload's ``num_steps``).
            stop_stage: None, or a stage in ``[1, len(chain) - 1]`` (``stop < T``).

        Returns the `Payload` at step ``stop`` (latents (B, C, h, w); Flux: packed (B, N, 4C)).
        """
        if self.device_steps is not None:
            raise ValueError("device_steps: a relay continues the ES's schedule; it cannot hand over to another model")
        if isinstance(stop, bool) or not isinstance(stop, int):
            raise ValueError(f"stop: expected an int, got {stop!r}")
        if stop_stage is not None:
            if self.chain is None:
                raise ValueError(f"stop_stage: a {self.family.name} denoiser cannot be cut inside a pass here")
            if isinstance(stop_stage, bool) or not isinstance(stop_stage, int) or not 1 <= stop_stage < len(self.chain):
                raise ValueError(f"stop_stage: must be None or an int in [1, {len(self.chain) - 1}], got {stop_stage!r}")
        state = self._unpack(payload)
        if not state.step <= stop <= state.num_steps or (stop == state.num_steps and stop_stage is not None):
            raise ValueError(f"stop: must be an int in [{state.step}, {state.num_steps}] (the payload is at step "
                             f"{state.step} of {state.num_steps}){' and < the last when stop_stage is set' if stop_stage else ''}, got {stop}")
        if stop_stage is not None and type(self.family).predict is not Family.predict and state.do_cfg:
            raise ValueError(f"stop_stage: a {self.family.name} step with true CFG runs two denoiser passes; "
                             "cut between steps instead")
        chain = self.chain if self.device_pipe is self.pipe else self.family.chain(self.device_pipe)
        denoise(self.device_pipe, state, stop=stop, stop_stage=stop_stage, chain=chain)
        info = payload.meta.get("generator")
        mode = "none" if info is None else ("seed" if "seeds" in info else "full")
        return self._pack(state, generator_state=mode, condition=payload.meta["condition"])

    def _settings(self, meta: dict[str, Any]) -> GenerationSettings:
        try:
            return GenerationSettings(**meta["settings"])
        except (KeyError, TypeError) as exc:
            raise PayloadError(f"payload: incomplete ({exc})") from exc

    def _unpack(self, payload: Payload) -> DenoiseState:
        if not isinstance(payload, Payload):
            raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
        pipe, meta, tensors = self.device_pipe, payload.meta, payload.tensors
        check_split_payload(payload, pipe, handoff=self.device_steps is not None)
        if meta.get("kind") != "splitldm.split":
            raise PayloadError("payload: not a SplitPipeline payload (meta['kind'] missing)")
        if meta.get("family", "sd") != self.family.name:
            raise PayloadError(f"payload: made by a {meta.get('family')} pipeline, this device runs {self.family.name}")
        if self.device_steps is not None:
            return self._unpack_handoff(payload)
        if meta.get("model") != self.fingerprint(pipe):
            raise PayloadError(f"payload: made by a different model (fingerprint {meta.get('model')} != "
                               f"{self.fingerprint(pipe)} of this device's pipeline)")
        if meta.get("scheduler") != type(pipe.scheduler).__name__:
            raise PayloadError(f"payload: made with scheduler {meta.get('scheduler')}, this device uses "
                               f"{type(pipe.scheduler).__name__}")
        settings = self._settings(meta)
        if "latents" not in tensors:
            raise PayloadError("payload: incomplete ('latents' missing)")
        latents = tensors["latents"]
        device, dtype = execution_device(pipe), self.family.denoiser(pipe).dtype
        expected = self.family.latent_shape(pipe, settings)
        if tuple(latents.shape) != tuple(expected):
            raise PayloadError(f"payload: latents of shape {tuple(latents.shape)} do not match the settings "
                               f"(batch {settings.batch_size}: expected {tuple(expected)})")
        cond = _received_conditioning(pipe, meta, tensors, settings, latents)
        scheduler = restore_scheduler(pipe, settings, unpack_value(meta["scheduler_state"], tensors, device))
        state = new_state(pipe, settings, scheduler, latents.to(device, dtype), int(meta["step"]), cond,
                          _payload_generator(meta, tensors))
        if state.num_steps != meta["num_steps"] or not 0 <= state.step <= state.num_steps:
            raise PayloadError(f"payload: step {state.step} of {meta['num_steps']} does not fit this scheduler "
                               f"({state.num_steps} timesteps)")
        check_resumed_schedule(meta, state)
        if "carry" in meta:
            chain = self.chain if pipe is self.pipe else self.family.chain(pipe)
            carry_tensors = {k[len("carry."):]: v.to(device) for k, v in tensors.items() if k.startswith("carry.")}
            if isinstance(chain, UNetChain):
                if "encoder_hidden_states" not in carry_tensors:
                    carry_tensors["encoder_hidden_states"] = pipe.unet.process_encoder_hidden_states(
                        encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=None)
                state.carry = Carry.from_tensors(carry_tensors, meta["carry"]["layout"])
            else:
                state.carry = chain.carry_from_tensors(carry_tensors, meta["carry"]["layout"])
            state.carry_stage = int(meta["carry"]["stage"])
        return state

    def _unpack_handoff(self, payload: Payload) -> DenoiseState:
        pipe, meta, tensors = self.device_pipe, payload.meta, payload.tensors
        if meta.get("latent_space") != latent_space_fingerprint(pipe):
            raise PayloadError("payload: made by a model with a different VAE / text encoder than this device's")
        if "carry" in meta:
            raise PayloadError("payload: a cut inside a denoiser pass cannot be handed over to another model")
        settings = self._settings(meta)
        device, dtype = execution_device(pipe), self.family.denoiser(pipe).dtype
        latents = tensors["latents"]
        cond = _received_conditioning(pipe, meta, tensors, settings, latents)
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        done = meta["next_timestep"] < 0
        if not done:
            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # custom schedules are intended here: no warnings
            try:
                if "next_sigma" in meta:
                    scheduler.set_timesteps(sigmas=handoff_sigmas(scheduler, meta["next_sigma"], self.device_steps),
                                            device=device)
                else:
                    steps = handoff_timesteps(scheduler, int(meta["next_timestep"]), self.device_steps)
                    scheduler.set_timesteps(timesteps=steps, device=device)
            finally:
                diffusers_logging.set_verbosity(level)
        state = new_state(pipe, settings, scheduler, latents.to(device, dtype), 0, cond, _payload_generator(meta, tensors))
        if done:
            state.timesteps = torch.zeros(0, dtype=torch.long)
        return state

    # ---------------------------------------------------------------- both
    def __call__(self, prompt, *, output_type: str = "pil", link_generator: torch.Generator | None = None,
                 **kwargs) -> SplitOutput:
        """ES -> link -> UE. ``kwargs`` as `edge`; ``link_generator`` drives the link's randomness."""
        sent = self.edge(prompt, **kwargs)
        received = self.link(sent, generator=link_generator)
        images = self.device(received, output_type=output_type)
        return SplitOutput(images=images, sent=sent, received=received, link=Link.summary(received))
