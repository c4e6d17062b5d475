"""The FEC adapter: Sionna's CRC + 5G NR LDPC + Gray QAM blocks behind two calls, for `DigitalLink`.

`_Coder.get(config, device, num_iter)` builds (once per code and device, cached) the encoder chain
``info bits -> CRC -> LDPC5GEncoder (rate-matched) -> Mapper`` and the decoder chain ``symbols -> APP
Demapper -> LDPC5GDecoder (BP) -> syndrome check -> CRC check``. ``config`` is any object with the
fields of `splitldm.link.digital.DigitalConfig` (``info_bits``, ``payload_bits``, ``codeword_bits``,
``bits_per_symbol``, ``crc``). Sionna is imported on first use (it takes seconds).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["_Coder"]


class _Hook:
    """Mixin placed between `LDPC5GDecoder` and `LDPCBPDecoder`: keeps the hard decisions on every
    variable node of the (pruned) mother code, for the syndrome check."""

    def call(self, llr, /, **kwargs):
        out = super().call(llr, **kwargs)
        self._x_full = out
        return out


class _Coder:
    """Sionna CRC + 5G LDPC + QAM blocks for one code on one device (built once, cached)."""

    _cache: dict = {}

    def __init__(self, cfg: Any, device: str, num_iter: int):  # cfg: a DigitalConfig (fields above)
        # Sionna imports take seconds: import on first use only.
        from sionna.phy.fec.crc import CRCDecoder, CRCEncoder
        from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
        from sionna.phy.fec.ldpc.decoding import LDPCBPDecoder
        from sionna.phy.mapping import Demapper, Mapper

        decoder_cls = type("_CheckedLDPC5GDecoder", (LDPC5GDecoder, type("_BPHook", (_Hook, LDPCBPDecoder), {})), {})
        self.crc_enc = self.crc_dec = None
        if cfg.crc is not None:
            self.crc_enc = CRCEncoder(cfg.crc, precision="single", device=device)
            self.crc_dec = CRCDecoder(self.crc_enc, precision="single", device=device)
        self.enc = LDPC5GEncoder(cfg.info_bits, cfg.codeword_bits, num_bits_per_symbol=cfg.bits_per_symbol,
                                 precision="single", device=device)
        self.dec = decoder_cls(self.enc, hard_out=True, return_infobits=True, num_iter=num_iter,
                               precision="single", device=device)
        self.cn_idx = torch.as_tensor(self.dec._cn_idx, dtype=torch.int64, device=device)
        self.vn_idx = torch.as_tensor(self.dec._vn_idx, dtype=torch.int64, device=device)
        self.num_cns = int(self.dec._num_cns)
        self.mapper = Mapper("qam", cfg.bits_per_symbol, precision="single", device=device)
        self.demapper = Demapper("app", "qam", cfg.bits_per_symbol, precision="single", device=device)

    @classmethod
    def get(cls, cfg: Any, device: torch.device, num_iter: int) -> "_Coder":
        key = (cfg.info_bits, cfg.bits_per_symbol, cfg.codeword_bits, cfg.crc, str(device), num_iter)
        if key not in cls._cache:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Sionna warns for rates above 948/1024
                cls._cache[key] = cls(cfg, str(device), num_iter)
        return cls._cache[key]

    def encode(self, info: torch.Tensor) -> torch.Tensor:
        """``(..., payload_bits)`` float {0,1} -> ``(..., codeword_bits / m)`` complex64 symbols."""
        if self.crc_enc is not None:
            info = self.crc_enc(info)
        return self.mapper(self.enc(info))

    def decode(self, y: torch.Tensor, no: torch.Tensor, cw_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Symbols ``(B, L)`` and noise variance ``(B, L)`` -> (info bits ``(*cw_shape[:-1], payload_bits)``,
        ok ``(*cw_shape[:-1])`` bool: every LDPC parity check holds and the CRC, if any, passes)."""
        llr = self.demapper(y, no).reshape(*cw_shape)
        bits = self.dec(llr)
        x = self.dec._x_full  # (codewords, variable nodes) hard decisions in {0, 1}
        syndrome = torch.zeros(x.shape[0], self.num_cns, dtype=x.dtype, device=x.device)
        syndrome.index_add_(1, self.cn_idx, x[:, self.vn_idx])
        ok = (syndrome.remainder(2) == 0).all(dim=1).reshape(bits.shape[:-1])
        if self.crc_dec is not None:
            bits, crc_ok = self.crc_dec(bits)
            ok = ok & crc_ok[..., 0]
        return bits, ok
