"""The ES's work for a batch of requests, in two replaceable steps (`EdgeRunner`).

``denoise(jobs)`` runs text encoding and steps ``[0, k)`` once for the whole batch (the requests'
prompts stacked, each request's initial noise drawn from its own seed) and splits the result back into
one `Payload` per request; ``forward(job, payload)`` runs that request's link send half (merge, codec,
emulated channel, with the request's own link generator) and packs the compact frame. A chain node
(`splitldm.serve.chain.ChainRunner`, LEARN-GDM) overrides ``denoise`` to run each job's first block
``[0, a)``, ``forward`` to pass the payload on to the next node (the last node applies this
``forward``), and ``run`` for received hops (steps ``[a, b)`` by `SplitPipeline.relay`).

Where the channel is emulated: in ``forward``, on the ES, by the channel stage's ``send`` with
``torch.Generator().manual_seed(request.link_seed)`` (the SNR the UE reported plus the choice's power
offset, and the choice's per-block transmit power, `splitldm.serve.policy.block_power`): the frame
carries the channel *output* y and the effective per-block gains. The UE only equalises and decodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from splitldm.link.codec import SeedCodec
from splitldm.link.payload import Payload
from splitldm.link.stack import Link
from splitldm.pipeline.families import family_of
from splitldm.pipeline.sampling import GenerationSettings, execution_device
from splitldm.pipeline.split import SplitPipeline
from splitldm.serve.policy import Choice, block_power
from splitldm.serve.session import (EdgeRequest, build_link, check_expressible, expected_meta, frame_arrays,
                                    frame_layout)
from splitldm.serve.wire import FrameHeader, Handshake, encode_frame

__all__ = ["Job", "EdgeRunner", "split_rows"]

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One accepted request on the ES: ``seq`` is the server's ledger key."""

    seq: int
    request: EdgeRequest
    choice: Choice
    settings: GenerationSettings
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.request.prompts)

    @property
    def key(self) -> tuple:
        """Requests with equal keys run in one batch."""
        s = self.settings
        return (s.num_inference_steps, s.guidance_scale, s.height, s.width, s.negative_prompt is None,
                self.choice.split_step)


def split_rows(payload: Payload, counts: list[int]) -> list[Payload]:
    """Cut a batched ES payload (no link applied yet) into one payload per request of ``counts`` rows."""
    if sum(counts) != payload.tensors["latents"].shape[0]:
        raise ValueError(f"counts: {sum(counts)} rows for a batch of {payload.tensors['latents'].shape[0]}")
    if set(payload.tensors) != {"latents"}:
        raise ValueError(f"payload: only the latents can be split per request, got {sorted(payload.tensors)}")
    out, start = [], 0
    for n in counts:
        meta = dict(payload.meta)
        settings = dict(meta["settings"])
        settings["prompt"] = settings["prompt"][start:start + n]
        if settings["negative_prompt"] is not None:
            settings["negative_prompt"] = settings["negative_prompt"][start:start + n]
        meta["settings"] = settings
        out.append(Payload(tensors={"latents": payload.tensors["latents"][start:start + n].clone()}, meta=meta,
                           primary=payload.primary))
        start += n
    return out


class EdgeRunner:
    """Runs batches of jobs on the ES (`denoise`, then `forward` per job); thread-confined (one batch at a time).

    ``pad_to``: run the denoiser on batches padded to this many images (empty prompts, zero latents), so
    every batch has the same shape and an image is bit-identical whichever requests shared its batch
    (CPU kernels sum in an order that depends on the batch size; padded, it does not). None: no
    padding; a request alone then runs exactly as the in-process `SplitPipeline` call.
    """

    def __init__(self, pipe, codec: SeedCodec, handshake: Handshake, pad_to: int | None = None):
        if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1):
            raise ValueError(f"pad_to: expected None or an int >= 1, got {pad_to!r}")
        self.pad_to = pad_to
        self.threads = torch.get_num_threads()  # the batches run in a worker thread: use the same count
        self.pipe = pipe
        self.codec = codec
        self.handshake = handshake
        self._splits: dict[int, SplitPipeline] = {}

    def split(self, split_step: int) -> SplitPipeline:
        if split_step not in self._splits:
            self._splits[split_step] = SplitPipeline(self.pipe, split_step=split_step, link=Link(),
                                                     generator_state="none")
        return self._splits[split_step]

    def initial_noise(self, settings: GenerationSettings, seed: int) -> torch.Tensor:
        """The request's initial noise, as the pipeline draws it from ``Generator().manual_seed(seed)``."""
        family = family_of(self.pipe)
        return randn_tensor(tuple(family.latent_shape(self.pipe, settings)), generator=torch.Generator().manual_seed(seed),
                            device=execution_device(self.pipe), dtype=family.denoiser(self.pipe).dtype)

    def denoise(self, jobs: list[Job]) -> list[Payload]:
        """Text encoding + steps [0, k) for the batch (same `Job.key`); one payload per job."""
        first = jobs[0]
        s = first.settings
        prompts = [p for j in jobs for p in j.request.prompts]
        negatives = None if s.negative_prompt is None else [p for j in jobs for p in j.request.negative_prompt]
        rows = len(prompts)
        if self.pad_to is None and len(jobs) == 1:  # exactly the in-process call
            generator, latents = torch.Generator().manual_seed(first.request.seed), None
        else:
            generator = None
            latents = torch.cat([self.initial_noise(j.settings, j.request.seed) for j in jobs])
            pad = max(0, (self.pad_to or 0) - rows)
            if pad:  # a fixed batch shape: an image does not depend on which requests shared its batch
                prompts = prompts + [""] * pad
                negatives = None if negatives is None else negatives + [""] * pad
                latents = torch.cat([latents, latents.new_zeros((pad, *latents.shape[1:]))])
        payload = self.split(first.choice.split_step).edge(
            prompts, num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
            negative_prompt=negatives, height=s.height, width=s.width, generator=generator, latents=latents)
        if len(prompts) > rows:
            payload = split_rows(payload, [rows, len(prompts) - rows])[0]
        return split_rows(payload, [j.rows for j in jobs])

    def forward(self, job: Job, payload: Payload) -> bytes:
        """The job's link send half (channel emulated here) and its compact frame."""
        hs, choice = self.handshake, job.choice
        link = build_link(hs, self.codec, choice.merge_ratio, job.request.snr_db + choice.power_db,
                          power=block_power(choice, hs))
        sent, context = link.send_half(payload, generator=torch.Generator().manual_seed(job.request.link_seed))
        layout = frame_layout(hs, self.codec, self.pipe, job.settings, choice.merge_ratio)
        check_expressible(sent, context, expected_meta(hs, self.pipe, job.settings, choice.split_step,
                                                       choice.merge_ratio), layout)
        header = FrameHeader(job.request.request_id % 32, choice.split_step, hs.ratio_index(choice.merge_ratio))
        return encode_frame(header, layout, hs.session_seed, **frame_arrays(sent, context))

    def run(self, jobs: list[Job]) -> list[bytes | Exception]:
        """Frames (or the exception that ended each job), in job order."""
        if torch.get_num_threads() != self.threads:  # OpenMP's thread count is per thread
            torch.set_num_threads(self.threads)
        try:
            payloads = self.denoise(jobs)
        except Exception as exc:  # the batch failed: every job ends with this error
            logger.exception("edge: batch of %d jobs failed", len(jobs))
            return [exc] * len(jobs)
        out: list[bytes | Exception] = []
        for job, payload in zip(jobs, payloads):
            try:
                out.append(self.forward(job, payload))
            except Exception as exc:
                out.append(exc)
        return out
