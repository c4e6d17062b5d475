"""`AnalogLink`: uncoded analog transmission of the latent, the reference every learned codec must beat.

Each sample is standardised (its mean and standard deviation cross as 2 float32 of side information),
paired into complex symbols at unit average power (``rho = 1/2`` complex use per real value) and
estimated with linear MMSE at the receiver. Over AWGN its MSE per real value is ``var / (1 + SNR)``, the
Gaussian OPTA at ``rho = 1/2``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from splitldm.link.channels import complex_to_real, equalized_model, real_to_complex
from splitldm.link.payload import Payload, primary_real_names
from splitldm.link.stack import LinkStage

__all__ = ["AnalogLink"]


class AnalogLink(LinkStage):
    """Uncoded analog transmission of the primary tensors with an LMMSE receiver.

    ``send``: each primary real tensor ``(B, *S)`` becomes ``(B, ceil(n/2))`` complex64 symbols of unit
    average power (``n = prod(S)``; an odd ``n`` is padded with one zero); ``<name>.stats`` ``(B, 2)``
    float32 (mean, std) crosses as side information. ``receive``: with the channel's published model
    ``z_hat = a z + CN(0, v)`` (``context["eq_gain"]``/``["eq_noise_var"]``, see `Channel.receive`), the
    LMMSE estimate ``conj(a) z_hat / (|a|^2 + v)`` per symbol, de-standardised.
    """

    def send(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
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
        meta["analog_lmmse"] = {**meta.get("analog_lmmse", {}), **info}
        return payload.replace(tensors=tensors, meta=meta)

    def receive(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        tensors, meta = dict(payload.tensors), dict(payload.meta)
        info = meta.pop("analog_lmmse", {})
        for name, spec in info.items():
            z_hat = tensors[name]
            a, v = equalized_model(context, name, z_hat)
            z_est = a.conj() * z_hat / (a.abs().square() + v)
            u = complex_to_real(z_est) * math.sqrt(2.0)
            if spec["pad"]:
                u = u[:, :-1]
            stats = tensors.pop(f"{name}.stats")
            x = stats[:, :1] + stats[:, 1:2] * u
            tensors[name] = x.reshape(x.shape[0], *spec["shape"]).to(getattr(torch, spec["dtype"]))
        return payload.replace(tensors=tensors, meta=meta)

    @staticmethod
    def lmmse_mse(variance: torch.Tensor | float, snr_db: torch.Tensor | float) -> torch.Tensor:
        """Closed-form MSE per real value over AWGN: ``variance / (1 + SNR)`` (``rho = 1/2``)."""
        snr = 10 ** (torch.as_tensor(snr_db, dtype=torch.float64) / 10)
        return torch.as_tensor(variance, dtype=torch.float64) / (1 + snr)
