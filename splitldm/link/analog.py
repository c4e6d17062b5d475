"""`AnalogLink`: uncoded analog transmission of the latent, the reference every learned codec must beat.

The library's one analog scheme (a `Channel` given real tensors uses it too). Each sample is
standardised (its mean and standard deviation cross in the payload as 2 float32 of side information,
so their bits are counted), paired into complex symbols at unit average power (``rho = 1/2`` complex
use per real value) and estimated with linear MMSE at the receiver
(`splitldm.analysis.limits.lmmse_estimate`). Over AWGN its MSE per real value is ``var / (1 + SNR)``
(`splitldm.analysis.limits.lmmse_mse`), the Gaussian OPTA at ``rho = 1/2``.
"""

from __future__ import annotations

import math

import torch

from splitldm.analysis import limits
from splitldm.link.payload import Payload, primary_real_names
from splitldm.link.stack import LinkContext, LinkStage
from splitldm.link.symbols import complex_to_real, real_to_complex

__all__ = ["AnalogLink"]

_META_KEY = "analog_lmmse"


class AnalogLink(LinkStage):
    """Uncoded analog transmission of the primary tensors with an LMMSE receiver. Place it before a channel.

    :input: each real floating primary tensor ``x`` ``(B, *S)``, ``n = prod(S)`` values per sample.
    :output: ``send``: ``x`` becomes ``(B, ceil(n/2))`` complex64 symbols of unit average power (an odd
        ``n`` is padded with one zero) and ``"<name>.stats"`` ``(B, 2)`` float32 (mean, std) is added as
        side information; ``payload.meta["analog_lmmse"]`` records shape, dtype and padding.
        ``receive``: ``x_hat`` ``(B, *S)`` in ``x``'s dtype; the stats and the record are removed.
    :context: ``receive`` reads the channel's model ``z_hat = a z + CN(0, v)`` of each tensor
        (`LinkContext.channel_model`: ``eq_gain`` / ``eq_noise_var``, else ``n0``) and estimates
        ``z = lmmse_estimate(z_hat, a, v)`` per symbol. Writes nothing.

    Example::

        link = Link([AnalogLink(), AWGN(snr_db=10.0, csi="mmse")])
        out = link(payload, generator=torch.Generator().manual_seed(0))
    """

    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        info = {}
        for name in primary_real_names(payload, "AnalogLink"):
            x = tensors[name]
            flat = x.reshape(x.shape[0], -1).float()
            mean = flat.mean(dim=1, keepdim=True)
            std = flat.std(dim=1, unbiased=False, keepdim=True).clamp_min(1e-12)
            u = (flat - mean) / std  # mean 0, mean square 1 per sample
            pad = flat.shape[1] % 2
            if pad:
                u = torch.cat([u, u.new_zeros(u.shape[0], 1)], dim=1)
            z = real_to_complex(u) / math.sqrt(2.0)  # E|z|^2 = 1 per symbol
            tensors[name] = z.to(torch.complex64)
            tensors[f"{name}.stats"] = torch.cat([mean, std], dim=1).detach()
            info[name] = {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch."), "pad": pad}
        meta[_META_KEY] = {**meta.get(_META_KEY, {}), **info}
        return payload.replace(tensors=tensors, meta=meta)

    def receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        info = meta.pop(_META_KEY, {})
        context = LinkContext.coerce(context)
        for name, spec in info.items():
            z_hat = tensors[name]
            a, v = context.channel_model(name, z_hat)
            z_est = limits.lmmse_estimate(z_hat, a, v)
            u = complex_to_real(z_est) * math.sqrt(2.0)
            if spec["pad"]:
                u = u[:, :-1]
            stats = tensors.pop(f"{name}.stats")
            x = stats[:, :1] + stats[:, 1:2] * u
            tensors[name] = x.reshape(x.shape[0], *spec["shape"]).to(getattr(torch, spec["dtype"]))
        return payload.replace(tensors=tensors, meta=meta)

    @staticmethod
    def lmmse_mse(variance: torch.Tensor | float, snr_db: torch.Tensor | float) -> torch.Tensor:
        """Closed-form MSE per real value over AWGN, ``variance / (1 + SNR)`` (float64 tensor):
        `splitldm.analysis.limits.lmmse_mse`."""
        return torch.as_tensor(limits.lmmse_mse(variance, snr_db), dtype=torch.float64)
