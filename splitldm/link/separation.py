"""`Separation`: the ideal separation reference (source coding + a capacity-achieving channel code).

Separate source and channel coding at its best: the digital quantiser of `DigitalLink` at the most
bits per value that a capacity-achieving code carries in the channel-use budget
(`separation_bits_per_value`, `splitldm.analysis.limits.separation_bits`), delivered without error.
No symbols cross (it simulates the decoded result), so use it alone in a `Link`; the sweeps of
`splitldm.eval.evaluate` report its channel uses as the budget ``k``.
"""

from __future__ import annotations

import torch

from splitldm.analysis.limits import separation_bits_per_value
from splitldm.link.digital import DigitalConfig, DigitalLink
from splitldm.link.payload import Payload
from splitldm.link.stack import LinkContext, LinkStage

__all__ = ["Separation", "separation_bits_per_value"]


class Separation(LinkStage):
    """Ideal separation: the digital quantiser's output at ``bits_per_value``, delivered error-free.

    Args:
        bits_per_value: bits per real value (``0``: nothing is sent, every value becomes its sample mean).

    :input: each primary tensor ``x`` ``(B, *S)`` real.
    :output: ``send``: `DigitalLink.quantized` ``(x)`` (the legacy per-value quantiser over the sample's
        ``[min, max]``), same shape and dtype; ``receive`` is the identity.
    :context: neither reads nor writes it.
    """

    def __init__(self, bits_per_value: int):
        super().__init__()
        if isinstance(bits_per_value, bool) or not isinstance(bits_per_value, int) or not 0 <= bits_per_value <= 16:
            raise ValueError(f"bits_per_value: expected an int in [0, 16], got {bits_per_value!r}")
        self.bits_per_value = bits_per_value
        self.digital = DigitalLink(config=DigitalConfig(bits_per_value)) if bits_per_value > 0 else None

    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        tensors = dict(payload.tensors)
        for name in payload.primary:
            x = tensors[name]
            if self.digital is None:
                mean = x.reshape(x.shape[0], -1).mean(1).reshape(-1, *[1] * (x.dim() - 1))
                tensors[name] = mean.expand_as(x).clone()
            else:
                tensors[name] = self.digital.quantized(x)
        return payload.replace(tensors=tensors)

    def note(self):
        return {"bits_per_value": self.bits_per_value}


_Separation = Separation  # the name in splitldm.eval.evaluate of 0.1
