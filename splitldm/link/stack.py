"""The link between edge server and device: an ordered stack of stages applied to a `Payload`.

``Link([TokenMerge(0.5), SeedCodec(...), RayleighBlockFading(snr_db=5, csi="mmse")])`` is a protocol
stack: on the way out each stage's `LinkStage.send` runs in order (merge -> encode -> channel), on
the way in each stage's `LinkStage.receive` runs in reverse (equalise -> decode -> unmerge). Before
sending, every stage may `LinkStage.prepare` the shared `LinkContext` (e.g. a channel publishes the
per-sample SNR in dB and its fading gains, which CSI-aware encoders and decoders read).

The context models what both ends know (CSI, the SNR a controller picked); it is never transmitted, so
nothing a receiver needs to undo a stage may live there: side information crosses in the payload, where
its bits are counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Sequence, Union

import torch
from torch import nn

from splitldm.link.payload import Payload, StageRecord

__all__ = ["LinkContext", "LinkStage", "Link", "SerializeBytes", "default_generator"]


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator`` itself, or a CPU generator seeded 0 (so an omitted generator is still deterministic)."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    return generator


@dataclass(eq=False)
class LinkContext(MutableMapping):
    """What both ends of one transmission know, shared by all stages of a `Link` (never transmitted).

    Each field is ``None`` until a stage writes it. Writers and readers among the built-in stages:

    Attributes:
        snr_db: per-sample SNR in dB. Set by the caller before the link runs (a number, a ``(B,)``
            tensor or a ``(low, high)`` range, e.g. chosen by a controller) or by a channel; a `Channel`
            stage's `~splitldm.link.channels.Channel.prepare` resolves it to a ``(B,)`` float32 tensor.
            Read by `SeedCodec` / `SeedCodecBank` (SNR conditioning) and the channel itself.
        n0: ``(B,)`` float32 noise power per complex symbol, ``10^(-snr_db/10)``. Written by
            ``Channel.prepare``; read by `channel_model` when no equaliser model was published.
        h: complex64 fading gains: ``(B, 1)`` (one per sample, written by
            ``RayleighBlockFading.prepare`` so a CSI-aware transmitter can use it), ``(B, M)`` (one per
            fading block, ``RayleighBlockFading(blocks=M)``; with a per-block ``power`` the effective
            gains ``sqrt(p_m) h_m``) or ``(B, n)`` (one per symbol, written by ``Channel.send``). Read by `SeedCodec` (``condition="csi"``) and
            ``Channel.receive``. ``None``: no fading (AWGN).
        channel_layout: ``[(tensor name, symbols per sample), ...]`` the channel sent, in order. Written
            by ``Channel.send``, read by ``Channel.receive``.
        eq_gain, eq_noise_var: tensor name -> the receiver's model of the equalised symbols
            ``z_hat = a z + CN(0, v)``: ``a`` (complex) and ``v`` (real), each shaped like the tensor.
            Written by ``Channel.receive``; read by `AnalogLink` (LMMSE) and `DigitalLink` (LLRs)
            through `channel_model`.
        serialized_bytes: size of the payload `SerializeBytes` sent, bytes.
        digital: ``{"codewords", "codeword_errors", "values_erased"}`` written by ``DigitalLink.receive``.
        extra: anything else a third-party stage stores.

    For stages written against 0.1 (``context: dict``) the context is also a mutable mapping:
    ``context["h"]`` reads field ``h`` (a ``KeyError`` while it is ``None``), ``context["x"] = v`` for a
    key that is not a field goes to `extra`. `Link` accepts a plain dict as ``context`` and writes the
    fields back into it after the call.
    """

    snr_db: Union[float, Sequence[float], torch.Tensor, None] = None
    n0: torch.Tensor | None = None
    h: torch.Tensor | None = None
    channel_layout: list[tuple[str, int]] | None = None
    eq_gain: dict[str, torch.Tensor] | None = None
    eq_noise_var: dict[str, torch.Tensor] | None = None
    serialized_bytes: int | None = None
    digital: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def coerce(cls, context: "LinkContext | Mapping[str, Any] | None") -> "LinkContext":
        """``context`` itself, a fresh context (``None``), or a context built from a mapping of field
        names (other keys go to `extra`). Anything else is a TypeError naming ``context``."""
        if context is None:
            return cls()
        if isinstance(context, cls):
            return context
        if isinstance(context, Mapping):
            out = cls()
            for key, value in context.items():
                out[key] = value
            return out
        raise TypeError(f"context: expected a LinkContext or a mapping of its fields, got {type(context).__name__}")

    @classmethod
    def require(cls, context: Any, who: str) -> "LinkContext":
        """``context`` if it is a `LinkContext`, else a TypeError naming ``context`` and the stage ``who``
        (a stage that writes the context cannot write into a plain dict its caller would not see)."""
        if not isinstance(context, cls):
            raise TypeError(f"context: {who} expects a LinkContext, got {type(context).__name__} (Link converts "
                            "a dict of fields; to call a stage directly pass LinkContext(...))")
        return context

    # ------------------------------------------------------------------ channel model
    def channel_model(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The receiver's model ``z_hat = a z + CN(0, v)`` of tensor ``name``, broadcast to ``like``.

        ``a`` has ``like``'s complex dtype, ``v`` its real dtype. Falls back to ``a = 1, v = n0`` when a
        channel published only its noise power; ValueError naming ``context`` when no channel ran.
        """
        gains, nvars = self.eq_gain or {}, self.eq_noise_var or {}
        if name in gains and name in nvars:
            a, v = gains[name], nvars[name]
        elif self.n0 is not None:  # a channel that published only its noise power: no fading known
            a = torch.ones((), dtype=like.dtype, device=like.device)
            v = self.n0.to(like.device).reshape(-1, *([1] * (like.dim() - 1)))
        else:
            raise ValueError(f"context: no channel model for {name!r}; put a channel stage after this stage in the Link")
        return torch.broadcast_to(a.to(like.device), like.shape).to(like.dtype), \
            torch.broadcast_to(v.to(like.device), like.shape).to(like.real.dtype)

    # ------------------------------------------------------------------ mapping shim (0.1 stages)
    def _is_field(self, key: str) -> bool:
        return key in _CONTEXT_FIELDS

    def __getitem__(self, key: str) -> Any:
        if self._is_field(key):
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or key == "extra":
            raise KeyError(f"context: {key!r} is not a usable key")
        if self._is_field(key):
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if self._is_field(key):
            if getattr(self, key) is None:
                raise KeyError(key)
            setattr(self, key, None)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in _CONTEXT_FIELDS if getattr(self, k) is not None)
        yield from list(self.extra)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"LinkContext({', '.join(self)})"


_CONTEXT_FIELDS = tuple(f.name for f in fields(LinkContext) if f.name != "extra")


class LinkStage(nn.Module):
    """One layer of the link. Subclasses override what they need; every method defaults to identity.

    Each method receives the payload, the `LinkContext` shared by all stages for one transmission
    (what both ends know, e.g. CSI; never transmitted) and the link's ``torch.Generator``, from which all
    randomness must come. A stage's docstring states its contract in Sionna's style:

    * ``:input:`` / ``:output:``: which payload tensors ``send`` reads and writes, with shapes and dtypes
      (``receive`` maps them back);
    * ``:context:``: the `LinkContext` fields it reads and writes.
    """

    def prepare(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> None:
        """Publish state both ends know before transmission (e.g. ``context.snr_db``: Tensor (B,))."""

    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        """ES side (for channel stages: the channel itself)."""
        return payload

    def receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        """UE side: undo `send` as well as possible."""
        return payload

    def note(self) -> dict[str, Any]:
        """Settings worth recording in the link history (JSON-able)."""
        return {}


class SerializeBytes(LinkStage):
    """Sends the payload as bytes and parses it back on the device: proves the digital part is lossless.

    :input: any payload.
    :output: an equal payload, rebuilt from its safetensors bytes (`Payload.to_bytes`).
    :context: writes ``serialized_bytes``.
    """

    def send(self, payload, context, generator):
        data = payload.to_bytes()
        LinkContext.require(context, "SerializeBytes").serialized_bytes = len(data)
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
                context: LinkContext | dict[str, Any] | None = None) -> Payload:
        """Send ``payload`` through every stage and back; returns the received payload.

        Args:
            payload: what the ES sends (not modified).
            generator: all randomness of the link (None: a CPU generator seeded 0).
            context: a `LinkContext` (filled in place), a dict of its fields (e.g. ``{"snr_db": 5.0}``;
                the fields the stages wrote are copied back into it), or None.
        """
        if not isinstance(payload, Payload):
            raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
        generator = default_generator(generator)
        ctx = LinkContext.coerce(context)
        try:
            return self._run(payload, ctx, generator)
        finally:
            if isinstance(context, MutableMapping) and context is not ctx:  # a dict: give back what stages wrote
                context.update(ctx.items())

    def _run(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        return self._receive(self._send(payload, context, generator), context, generator)

    def _send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        for stage in self.stages:
            stage.prepare(payload, context, generator)
        payload = payload.replace()
        payload.history.append(StageRecord("input", "send", payload.num_bits(), payload.channel_uses()))
        for stage in self.stages:
            payload = self._record(stage, "send", stage.send(payload, context, generator))
        return payload

    def _receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        for stage in reversed(self.stages):
            payload = self._record(stage, "receive", stage.receive(payload, context, generator))
        return payload

    def send_half(self, payload: Payload, generator: torch.Generator | None = None,
                  context: LinkContext | dict[str, Any] | None = None) -> tuple[Payload, LinkContext]:
        """The ES half: every stage's ``prepare``, then every ``send`` in order (the channel included).

        Returns ``(sent, context)``: what leaves the channel and the `LinkContext` the stages filled.
        ``send_half`` then `receive_half` with the same context and generator equals one `forward`
        call, bit for bit (`splitldm.serve` runs the two halves in two processes).
        """
        if not isinstance(payload, Payload):
            raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
        ctx = LinkContext.coerce(context)
        return self._send(payload, ctx, default_generator(generator)), ctx

    def receive_half(self, payload: Payload, context: LinkContext | dict[str, Any],
                     generator: torch.Generator | None = None) -> Payload:
        """The UE half: every stage's ``receive`` in reverse order, reading ``context`` (what the
        receiver knows: SNR, fading gains, channel layout; see `LinkContext`)."""
        if not isinstance(payload, Payload):
            raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
        if context is None:
            raise TypeError("context: receive_half needs the LinkContext of the send half (what the receiver knows)")
        return self._receive(payload, LinkContext.coerce(context), default_generator(generator))

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
