"""What both ends of a session derive from the handshake: the link, the frame layout, the payload meta.

The compact frame (`splitldm.serve.wire`) carries no metadata: the UE rebuilds the received payload's
meta (settings, scheduler position, codec and merge records) from the handshake, its own request and
the 16-bit air header with `expected_meta`, the same function the ES runs. The ES then checks, per
request, that the payload its link really sent has exactly that meta and no other tensor
(`check_expressible`); a configuration the format cannot express (a scheduler with a dynamic state,
a generator the UE would need, an analog link) is refused there with a `WireError` naming the field,
never sent as something the UE would decode into another image.

This is also the hook the families helper may later move into `SplitPipeline` (a public
``meta_for(settings, step)``); until then it lives here, on top of the public API.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from splitldm.link.channels import make_channel, snr_db_to_n0
from splitldm.link.codec import SeedCodec
from splitldm.link.merge import TokenMerge
from splitldm.link.payload import Payload
from splitldm.link.stack import Link, LinkContext
from splitldm.pipeline.families import family_of
from splitldm.pipeline.sampling import GenerationSettings, fresh_scheduler, make_settings
from splitldm.pipeline.split import latent_space_fingerprint, model_fingerprint
from splitldm.serve.wire import MAX_BLOCKS, MAX_SPLIT_STEP, Frame, FrameLayout, Handshake, WireError
from splitldm.tome import side_info_bits

__all__ = ["DEFAULT_RATIOS", "codec_fingerprint", "make_handshake", "build_link", "emulated_fading", "fading_report",
           "settings_for", "frame_layout",
           "expected_meta", "check_expressible", "received_payload", "EdgeRequest"]

#: The default merge ratio table (3-bit index).
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75)
_NAME = "latents"
_INDEX = "latents.merge_index"


def codec_fingerprint(codec: SeedCodec) -> str:
    """SHA-256 (16 hex) of a codec's config and all its weights (a seed codec is small)."""
    h = hashlib.sha256()
    config = {k: v for k, v in dict(codec.config).items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(codec.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def make_handshake(pipe, codec: SeedCodec, *, codec_name: str = "seed-codec", channel: str = "rayleigh",
                   csi: str = "mmse", ratios: Sequence[float] = DEFAULT_RATIOS, sx: int = 2, sy: int = 2,
                   use_rand: bool = False, similarity: str = "euclidean", blocks: int = 1,
                   limits: dict[str, Any] | None = None) -> Handshake:
    """The session handshake of an ES running ``pipe`` with ``codec`` over an emulated ``channel``.

    ``blocks``: fading blocks M an image's channel symbols are spread over (``"rayleigh"``: 1..64, each
    block its own gain, `splitldm.link.channels.block_sizes`; ``"awgn"``: 1).
    """
    if not isinstance(codec, SeedCodec):
        raise TypeError(f"codec: the compact wire format needs a SeedCodec (channel symbols), got {type(codec).__name__}")
    family = family_of(pipe)
    if family.name != "sd":
        raise ValueError(f"pipe: the service batches and rebuilds payloads of SD-type pipelines; got {family.name}")
    sched_cfg = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return Handshake(
        family=family.name,
        model=model_fingerprint(pipe),
        latent_space=latent_space_fingerprint(pipe),
        scheduler=type(pipe.scheduler).__name__,
        scheduler_config=hashlib.sha256(json.dumps(sched_cfg, sort_keys=True, default=str).encode()).hexdigest()[:16],
        condition="prompt",
        dtype=str(family.denoiser(pipe).dtype).removeprefix("torch."),
        codec={"class": type(codec).__name__, "name": str(codec_name), "fingerprint": codec_fingerprint(codec),
               "rho": float(codec.config.rho)},
        merge={"ratios": [float(r) for r in ratios], "sx": int(sx), "sy": int(sy), "use_rand": bool(use_rand),
               "similarity": similarity, "patch": 1},
        channel={"kind": channel, "csi": csi, "blocks": blocks},
        limits=dict(limits or {}),
    )


def build_link(handshake: Handshake, codec: SeedCodec, merge_ratio: float, snr_db: float | None = None,
               power: Sequence[float] | None = None) -> Link:
    """The session's link for one request: ``[TokenMerge(ratio)] + codec + channel(snr_db)``.

    The channel is ``make_channel(kind, csi=..., blocks=M)`` with the handshake's M fading blocks per
    image (`RayleighBlockFading`: each block its own gain, drawn from the link generator). ``power``: the
    per-block transmit power ``p`` (M values, mean 1) the ES applies (None: equal power); it changes the
    send half only: the receiver equalises with the effective gains ``sqrt(p_m) h_m`` it is given.
    Both ends build the link; the UE runs only its receive half (the SNR then comes from the context).
    """
    m = handshake.merge
    stages = []
    if merge_ratio > 0:
        stages.append(TokenMerge(merge_ratio, sx=m["sx"], sy=m["sy"], use_rand=m["use_rand"],
                                 similarity=m["similarity"]))
    stages.append(codec)
    kind, blocks = handshake.channel["kind"], int(handshake.channel["blocks"])
    if kind == "awgn":
        if power is not None:
            raise ValueError("power: an AWGN session has no fading blocks to split power over")
        stages.append(make_channel(kind, snr_db=snr_db, csi=handshake.channel["csi"]))
    else:
        stages.append(make_channel(kind, snr_db=snr_db, csi=handshake.channel["csi"], blocks=blocks, power=power))
    return Link(stages)


def emulated_fading(handshake: Handshake, link_seed: int, images: int = 1) -> torch.Tensor:
    """The per-block fading gains ``h`` complex64 ``(images, M)`` the emulated channel draws for a request
    with ``link_seed`` (before any transmit power): what the UE would measure from pilots and report in
    the request's ``fading`` (row 0 as ``[re_0, im_0, re_1, im_1, ...]``, see `fading_report`).

    The channel draws them first from ``Generator().manual_seed(link_seed)`` (no earlier link stage
    draws); `tests/test_serve_control.py` checks they equal the CSI of the served frame.
    """
    if handshake.channel["kind"] != "rayleigh":
        raise ValueError(f"handshake: a {handshake.channel['kind']} session has no fading gains")
    channel = make_channel("rayleigh", snr_db=0.0, csi=handshake.channel["csi"], blocks=int(handshake.channel["blocks"]))
    context = LinkContext()
    dummy = Payload({_NAME: torch.zeros(images, int(handshake.channel["blocks"]), dtype=torch.complex64)}, primary=(_NAME,))
    channel.prepare(dummy, context, torch.Generator().manual_seed(link_seed))
    return context.h


def fading_report(gains: torch.Tensor) -> list[float]:
    """The request's ``fading`` field for one image's block gains ``h`` complex ``(M,)``:
    ``[re_0, im_0, ..., re_{M-1}, im_{M-1}]``."""
    h = torch.as_tensor(gains).reshape(-1)
    return [float(v) for pair in zip(h.real.tolist(), h.imag.tolist()) for v in pair]


@dataclass
class EdgeRequest:
    """One UE request, validated (the JSON of the request envelope).

    Attributes:
        request_id: the UE's request number (its low 5 bits come back in the air header).
        session: the handshake's session id the UE agreed to.
        model: the UE's `model_fingerprint` (must equal the ES's).
        prompts: 1..max_batch prompts (one image each).
        seed: seed of the initial noise (``torch.Generator().manual_seed(seed)``, as in-process).
        link_seed: seed of the link's generator (SNR draws, fading, channel noise), per request.
        snr_db: the UE's channel report, dB. ``fading``: optional reported per-block gains
            ``[re_0, im_0, ..., re_{M-1}, im_{M-1}]`` (1..64 blocks; for a controller's power split, which
            applies to every image of the request; the emulated channel draws its own gains from
            ``link_seed``: `emulated_fading` gives the ones a UE would measure).
        steps, guidance_scale, height, width, negative_prompt: as `SplitPipeline.edge`.
        split_step, merge_ratio: requested choice (None: the server's rule decides).
    """

    request_id: int
    session: str
    model: str
    prompts: list[str]
    seed: int
    link_seed: int
    snr_db: float
    steps: int
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: list[str] | None = None
    split_step: int | None = None
    merge_ratio: float | None = None
    fading: list[float] | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any], max_prompts: int = 64, max_prompt_chars: int = 1000) -> "EdgeRequest":
        """Validate a decoded request; errors are `WireError` naming the field."""
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(obj) - names)
        if unknown:
            raise WireError(unknown[0], "not a request field")
        for req in ("request_id", "session", "model", "prompts", "seed", "link_seed", "snr_db", "steps"):
            if req not in obj:
                raise WireError(req, "missing from the request")

        def integer(name, lo, hi, optional=False):
            v = obj.get(name)
            if v is None and optional:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise WireError(name, f"expected an int in [{lo}, {hi}], got {v!r}")
            return v

        def number(name, lo, hi, optional=False):
            v = obj.get(name)
            if v is None and optional:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise WireError(name, f"expected a number in [{lo}, {hi}], got {v!r}")
            return float(v)

        def strings(name, optional=False):
            v = obj.get(name)
            if v is None and optional:
                return None
            if not isinstance(v, list) or not 1 <= len(v) <= max_prompts or \
                    not all(isinstance(p, str) and len(p) <= max_prompt_chars for p in v):
                raise WireError(name, f"expected 1..{max_prompts} strings of at most {max_prompt_chars} characters")
            return list(v)

        for name in ("session", "model"):
            if not isinstance(obj[name], str) or len(obj[name]) > 64:
                raise WireError(name, "expected a short string")
        fading = obj.get("fading")
        if fading is not None and (not isinstance(fading, list) or not 2 <= len(fading) <= 2 * MAX_BLOCKS
                                   or len(fading) % 2
                                   or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              and math.isfinite(x) for x in fading)):
            raise WireError("fading", f"expected [re_0, im_0, ...] for 1..{MAX_BLOCKS} blocks, got {fading!r}")
        prompts = strings("prompts")
        negative = strings("negative_prompt", optional=True)
        if negative is not None and len(negative) != len(prompts):
            raise WireError("negative_prompt", f"{len(negative)} negative prompts for {len(prompts)} prompts")
        return cls(request_id=integer("request_id", 0, 2**31 - 1), session=obj["session"], model=obj["model"],
                   prompts=prompts, seed=integer("seed", 0, 2**63 - 1), link_seed=integer("link_seed", 0, 2**63 - 1),
                   snr_db=number("snr_db", -20.0, 40.0), steps=integer("steps", 1, 1000),
                   guidance_scale=number("guidance_scale", 0.0, 100.0, optional=True),
                   height=integer("height", 8, 4096, optional=True), width=integer("width", 8, 4096, optional=True),
                   negative_prompt=negative, split_step=integer("split_step", 0, MAX_SPLIT_STEP, optional=True),
                   merge_ratio=number("merge_ratio", 0.0, 0.999, optional=True),
                   fading=None if fading is None else [float(x) for x in fading])

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def settings_for(pipe, request: EdgeRequest) -> GenerationSettings:
    """The generation settings a request stands for (both ends compute them alike)."""
    try:
        return make_settings(pipe, request.prompts, num_inference_steps=request.steps,
                             guidance_scale=request.guidance_scale, negative_prompt=request.negative_prompt,
                             height=request.height, width=request.width)
    except (TypeError, ValueError) as exc:
        raise WireError("settings", str(exc)) from None


def _merge_plan_size(handshake: Handshake, h: int, w: int, ratio: float) -> int:
    """``r``: tokens a merge at ``ratio`` removes from an ``h x w`` grid (as `splitldm.tome.plan_merge`)."""
    m = handshake.merge
    n_dst = (h // m["sy"]) * (w // m["sx"])
    return min(int(ratio * h * w), h * w - n_dst)


def frame_layout(handshake: Handshake, codec: SeedCodec, pipe, settings: GenerationSettings,
                 ratio: float) -> FrameLayout:
    """The sizes of a request's frame at merge ``ratio`` (P images, k symbols each, index map bits)."""
    shape = tuple(family_of(pipe).latent_shape(pipe, settings))  # (P, C, h, w)
    p, c, h, w = shape
    index_bits = 0
    if ratio > 0:
        m = handshake.merge
        r = _merge_plan_size(handshake, h, w, ratio)
        index_bits = side_info_bits((h, w), r, m["sx"], m["sy"], bool(m["use_rand"]) and m["sx"] * m["sy"] > 1, p)
        shape = (p, c, 1, h * w - r)
    k = codec.num_symbols(shape[1:])
    blocks = int(handshake.channel["blocks"]) if handshake.channel["kind"] == "rayleigh" else 0
    if blocks > k:
        raise WireError("channel.blocks", f"{blocks} fading blocks need at least {blocks} channel symbols per image, "
                                          f"the request has {k}")
    return FrameLayout(images=p, symbols=k, index_bits=index_bits, gains=blocks)


def expected_meta(handshake: Handshake, pipe, settings: GenerationSettings, split_step: int,
                  ratio: float) -> dict[str, Any]:
    """The meta of the payload the UE receives (after the channel, before the receive half)."""
    scheduler = fresh_scheduler(pipe, settings)
    timesteps = scheduler.timesteps
    n = len(timesteps)
    if not 0 <= split_step <= n:
        raise WireError("split_step", f"{split_step} not in [0, {n}] for {settings.num_inference_steps} steps")
    next_t = timesteps[split_step] if split_step < n else None
    meta: dict[str, Any] = {
        "kind": "splitldm.split",
        "family": handshake.family,
        "model": handshake.model,
        "latent_space": handshake.latent_space,
        "next_timestep": -1 if next_t is None else (int(next_t) if not next_t.is_floating_point()
                                                    or float(next_t).is_integer() else float(next_t)),
        "scheduler": handshake.scheduler,
        "scheduler_state": {"__dict__": {}},
        "step": split_step,
        "num_steps": n,
        "condition": handshake.condition,
        "settings": asdict(settings),
        "dtype": handshake.dtype,
    }
    p, c, h, w = tuple(family_of(pipe).latent_shape(pipe, settings))
    shape = [p, c, h, w]
    if ratio > 0:
        m = handshake.merge
        r = _merge_plan_size(handshake, h, w, ratio)
        random = bool(m["use_rand"]) and m["sx"] * m["sy"] > 1
        meta["token_merge"] = {_NAME: {"size": [h, w], "r": r, "sx": m["sx"], "sy": m["sy"], "random": random,
                                       "batch": p, "side_info_bits": side_info_bits((h, w), r, m["sx"], m["sy"], random, p)}}
        shape = [p, c, 1, h * w - r]
    meta["seed_codec"] = {_NAME: {"shape": shape, "dtype": handshake.dtype}}
    return meta


def _first_difference(a: Any, b: Any, path: str = "meta") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}"
            d = _first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    return None if a == b else path


def check_expressible(sent: Payload, context: LinkContext, meta: dict[str, Any], layout: FrameLayout) -> None:
    """ES side: the payload the link sent is exactly what a compact frame + `expected_meta` rebuild.

    Raises `WireError` naming the first field that differs (the request then ends with an error).
    """
    diff = _first_difference(sent.meta, meta)
    if diff:
        raise WireError(diff, "the compact wire format cannot express this payload field (the UE would "
                              "rebuild another value); use a deterministic scheduler (e.g. DDIM, eta=0) and a "
                              "seed-codec link")
    allowed = {_NAME, _INDEX} if layout.index_bits else {_NAME}
    extra = sorted(set(sent.tensors) - allowed)
    if extra:
        raise WireError(f"tensors.{extra[0]}", "a payload tensor the compact wire format does not carry")
    z = sent.tensors.get(_NAME)
    if z is None or z.dtype != torch.complex64 or tuple(z.shape) != (layout.images, layout.symbols):
        raise WireError("symbols", f"expected complex64 ({layout.images}, {layout.symbols}) channel symbols")
    if context.extra or context.channel_layout != [(_NAME, layout.symbols)]:
        raise WireError("context", "the link left receiver state the frame does not carry")
    if layout.gains and (context.h is None or tuple(context.h.shape) != (layout.images, layout.gains)):
        raise WireError("gains", f"the channel's fading gains are not {layout.gains} per image (one per block)")


def frame_arrays(sent: Payload, context: LinkContext) -> dict[str, torch.Tensor | None]:
    """The arrays of a frame from the ES's sent payload and context."""
    return {"symbols": sent.tensors[_NAME], "index_map": sent.tensors.get(_INDEX),
            "snr_db": context.snr_db, "gains": context.h}


def received_payload(frame: Frame, meta: dict[str, Any]) -> tuple[Payload, LinkContext]:
    """UE side: the received payload and the receiver's `LinkContext` from a decoded frame."""
    tensors = {_NAME: frame.symbols}
    if frame.index_map is not None:
        tensors[_INDEX] = frame.index_map
    context = LinkContext(snr_db=frame.snr_db, n0=snr_db_to_n0(frame.snr_db), h=frame.gains,
                          channel_layout=[(_NAME, frame.symbols.shape[1])])
    return Payload(tensors=tensors, meta=meta, primary=(_NAME,)), context
