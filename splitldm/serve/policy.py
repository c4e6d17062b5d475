"""The per-request choice of the ES: split step, merge ratio, transmit power (a replaceable piece).

A policy is any callable ``policy(request, handshake) -> Choice``. The service calls it once per
accepted request, before batching (requests with the same choice and settings batch together).
`FixedRule` is the documented default; a controller (a CVPO policy for steps and merge ratio from
the reported SNR, a PPO power policy) plugs in here with the same signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from splitldm.serve.session import EdgeRequest
from splitldm.serve.wire import MAX_SPLIT_STEP, Handshake, WireError

__all__ = ["Choice", "Policy", "FixedRule", "block_power"]


@dataclass(frozen=True)
class Choice:
    """What the ES does for one request.

    Attributes:
        split_step: k, the ES runs steps ``[0, k)`` (0..63, at most the request's steps).
        merge_ratio: one of the handshake's ratios (the frame carries its 3-bit index).
        power_db: transmit power offset in dB over unit power; the emulated channel runs at
            ``snr_db + power_db`` and the UE learns the SNR it got from the emulated CSI.
    """

    split_step: int
    merge_ratio: float = 0.0
    power_db: float = 0.0


def block_power(choice: Choice, handshake: Handshake) -> tuple[float, ...] | None:
    """The per-block transmit power the ES applies for ``choice`` (None: equal power).

    A choice may carry ``power_split`` (`splitldm.serve.control.ControlledChoice`): M values of mean 1 for
    the session's M fading blocks (``handshake.channel["blocks"]``), applied as is; a one-value split
    ``(1.0,)`` or an all-ones split is equal power. Any other length is a `WireError` naming
    ``power_split`` (a policy that chose for another number of blocks).
    """
    split = getattr(choice, "power_split", None)
    if split is None or all(float(p) == 1.0 for p in split):
        return None
    blocks = int(handshake.channel.get("blocks", 1)) if handshake.channel["kind"] == "rayleigh" else 0
    if len(split) != blocks:
        raise WireError("power_split", f"{len(split)} block powers for a session of {blocks} fading blocks per image")
    return tuple(float(p) for p in split)


class Policy(Protocol):
    def __call__(self, request: EdgeRequest, handshake: Handshake) -> Choice: ...


@dataclass(frozen=True)
class FixedRule:
    """The default rule: the UE's requested split step / merge ratio if given, else these defaults;
    the split step is clipped to the request's number of steps; unit power."""

    split_step: int = 2
    merge_ratio: float = 0.0

    def __call__(self, request: EdgeRequest, handshake: Handshake) -> Choice:
        k = self.split_step if request.split_step is None else request.split_step
        k = min(k, request.steps, MAX_SPLIT_STEP)
        ratio = self.merge_ratio if request.merge_ratio is None else request.merge_ratio
        try:
            handshake.ratio_index(ratio)
        except ValueError as exc:
            raise WireError("merge_ratio", str(exc).split(": ", 1)[1]) from None
        return Choice(split_step=k, merge_ratio=float(ratio))
