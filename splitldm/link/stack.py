"""The link between edge server and device: an ordered stack of stages applied to a `Payload`.

``Link([TokenMerge(0.5), SeedCodec(...), RayleighBlockFading(snr_db=5, csi="mmse")])`` is a protocol
stack: on the way out each stage's `LinkStage.send` runs in order (merge -> encode -> channel), on
the way in each stage's `LinkStage.receive` runs in reverse (equalise -> decode -> unmerge). Before
sending, every stage may `LinkStage.prepare` the shared ``context`` (e.g. a channel publishes the
per-sample SNR in dB and its fading gains, which CSI-aware encoders and decoders read).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from splitldm.link.payload import Payload, StageRecord


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator`` itself, or a CPU generator seeded 0 (so an omitted generator is still deterministic)."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    return generator


class LinkStage(nn.Module):
    """One layer of the link. Subclasses override what they need; every method defaults to identity.

    All randomness must come from the ``generator`` argument. ``context`` is a dict shared by all stages
    for one transmission; it is not transmitted (it models what both ends know, e.g. CSI).
    """

    def prepare(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> None:
        """Publish state both ends know before transmission (e.g. ``context["snr_db"]``: Tensor (B,))."""

    def send(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        """ES side (for channel stages: the channel itself)."""
        return payload

    def receive(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        """UE side: undo `send` as well as possible."""
        return payload

    def note(self) -> dict[str, Any]:
        """Settings worth recording in the link history (JSON-able)."""
        return {}


class SerializeBytes(LinkStage):
    """Sends the payload as bytes and parses it back on the device: proves the digital part is lossless."""

    def send(self, payload, context, generator):
        data = payload.to_bytes()
        context["serialized_bytes"] = len(data)
        out = Payload.from_bytes(data)
        out.history = list(payload.history)
        return out


class Link(nn.Module):
    """An ordered list of `LinkStage`s applied to a payload: ``link(payload, generator=g) -> payload``.

    ``Link()`` (no stages) is an ideal link. After a call, the returned payload's ``history`` lists a
    `StageRecord` per stage and direction: the bits and channel uses right after that stage.
    """

    def __init__(self, stages: Iterable[LinkStage] = ()):
        super().__init__()
        stages = list(stages)
        for i, stage in enumerate(stages):
            if not isinstance(stage, LinkStage):
                raise TypeError(f"stages[{i}]: expected a LinkStage, got {type(stage).__name__}")
        self.stages = nn.ModuleList(stages)

    def __len__(self) -> int:
        return len(self.stages)

    def forward(self, payload: Payload, generator: torch.Generator | None = None,
                context: dict[str, Any] | None = None) -> Payload:
        if not isinstance(payload, Payload):
            raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
        generator = default_generator(generator)
        context = {} if context is None else context
        for stage in self.stages:
            stage.prepare(payload, context, generator)
        payload = payload.replace()
        payload.history.append(StageRecord("input", "send", payload.num_bits(), payload.channel_uses()))
        for stage in self.stages:
            payload = self._record(stage, "send", stage.send(payload, context, generator))
        for stage in reversed(self.stages):
            payload = self._record(stage, "receive", stage.receive(payload, context, generator))
        return payload

    @staticmethod
    def _record(stage: LinkStage, direction: str, payload: Payload) -> Payload:
        if not isinstance(payload, Payload):
            raise TypeError(f"{type(stage).__name__}.{direction} returned {type(payload).__name__}, not a Payload")
        payload.history.append(StageRecord(type(stage).__name__, direction, payload.num_bits(),
                                           payload.channel_uses(), stage.note()))
        return payload

    @staticmethod
    def summary(payload: Payload) -> dict[str, Any]:
        """What crossed: the largest digital size (bits) and symbol count seen on the way out."""
        sent = [r for r in payload.history if r.direction == "send"]
        if not sent:
            return {"bits": payload.num_bits(), "channel_uses": payload.channel_uses(), "stages": []}
        last = sent[-1]
        return {
            "input_bits": sent[0].bits,
            "bits": last.bits,
            "channel_uses": last.channel_uses,
            "stages": [vars(r) for r in payload.history],
        }
