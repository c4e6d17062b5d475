"""`SeedCodecBank`: one `SeedCodec` per primary tensor, so any payload can cross as channel symbols.

A cut inside the UNet pass (`SplitPipeline(..., split_stage=c)`) sends the latents plus the carry's
hidden state and skip connections: features of different channel counts and resolutions (see
`splitldm.pipeline.chain.Carry.layout`). A single `SeedCodec` codes one feature shape; the bank holds one codec
per tensor name and codes each primary tensor with its own::

    payload = SplitPipeline(pipe, split_step=2, split_stage=3).edge(prompt, ...)
    bank = SeedCodecBank.for_payload(payload, rho=1 / 8)              # or SeedCodecBank.load(folder)
    received = Link([bank, AWGN(snr_db=10)])(payload)

Channel uses: tensor ``name`` of shape (B, C, h, w) becomes (B, k_name) complex64 symbols with
``k_name = floor(rho C h w)`` (`num_symbols`); the payload counts them exactly. Training: see
``splitldm/recipes/codec_bank.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from splitldm.link.codec import SeedCodec
from splitldm.link.stack import LinkStage
from splitldm.link.payload import Payload

BANK_CONFIG = "bank.json"
_META_KEY = "seed_codec_bank"


def _shape(value: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(value)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"layout[{name!r}]: expected (C, h, w) positive ints, got {value!r}")
    return shape


class SeedCodecBank(LinkStage):
    """A `LinkStage` holding one `SeedCodec` per tensor name.

    Args:
        codecs: tensor name -> `SeedCodec` (names as in the payload, e.g. ``carry.skip.0``). Each codec
            codes features of shape ``(in_channels, *sample_size)`` only.

    ``send`` encodes every primary tensor of the payload with the codec of its name (a primary tensor
    without a codec, or of another shape, is a ValueError naming it); codecs for names the payload
    lacks are unused. ``receive`` decodes back to the original shapes and dtypes.
    """

    def __init__(self, codecs: Mapping[str, SeedCodec]):
        super().__init__()
        if not isinstance(codecs, Mapping) or not codecs:
            raise ValueError("codecs: expected a non-empty mapping of tensor name -> SeedCodec")
        for name, codec in codecs.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"codecs: names must be non-empty str, got {name!r}")
            if not isinstance(codec, SeedCodec):
                raise TypeError(f"codecs[{name!r}]: expected a SeedCodec, got {type(codec).__name__}")
        self.names = tuple(codecs)
        self.codecs = nn.ModuleList(codecs.values())  # a ModuleDict would reject the dots in carry.skip.0

    @classmethod
    def for_layout(cls, layout: Mapping[str, Sequence[int]], **codec_kwargs: Any) -> "SeedCodecBank":
        """A fresh bank for ``{name: (C, h, w)}``; ``codec_kwargs`` (``rho``, ``hidden_channels``, ...)
        go to every `SeedCodec` (``in_channels`` and ``sample_size`` come from the layout)."""
        if not isinstance(layout, Mapping) or not layout:
            raise ValueError("layout: expected a non-empty mapping of tensor name -> (C, h, w)")
        clash = {"in_channels", "sample_size"} & set(codec_kwargs)
        if clash:
            raise ValueError(f"{sorted(clash)}: set by the layout, not by codec arguments")
        codecs = {}
        for name, value in layout.items():
            c, h, w = _shape(value, name)
            codecs[name] = SeedCodec(in_channels=c, sample_size=(h, w), **codec_kwargs)
        return cls(codecs)

    @classmethod
    def for_payload(cls, payload: Payload, **codec_kwargs: Any) -> "SeedCodecBank":
        """A fresh bank for the primary tensors of ``payload`` (each (B, C, h, w))."""
        return cls.for_layout(payload_layout(payload), **codec_kwargs)

    # ------------------------------------------------------------------ lookup / accounting
    def __getitem__(self, name: str) -> SeedCodec:
        if name not in self.names:
            raise KeyError(name)
        return self.codecs[self.names.index(name)]

    def items(self):
        return zip(self.names, self.codecs)

    def layout(self) -> dict[str, tuple[int, int, int]]:
        """``{name: (C, h, w)}`` each codec codes."""
        return {n: (c.config.in_channels, *c.sample_hw) for n, c in self.items()}

    def num_symbols(self) -> dict[str, int]:
        """Complex channel uses per sample row of each tensor: ``{name: k}``."""
        return {n: c.num_symbols(shape) for (n, c), shape in zip(self.items(), self.layout().values())}

    def _codec_for(self, payload: Payload, name: str) -> SeedCodec:
        if name not in self.names:
            raise ValueError(f"payload.tensors[{name!r}]: no codec in this bank for it "
                             f"(the bank codes {list(self.names)})")
        x = payload.tensors[name]
        expected = self.layout()[name]
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"payload.tensors[{name!r}]: the bank's codec codes (B, *{expected}) features, "
                             f"got shape {tuple(x.shape)}")
        return self[name]

    # ------------------------------------------------------------------ link stage
    def send(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        """Encode each primary tensor (B, C, h, w) with its own codec to complex64 symbols (B, k)."""
        if not payload.primary:
            raise ValueError("payload: has no primary tensor for the codec bank to encode")
        codecs = {name: self._codec_for(payload, name) for name in payload.primary}  # check all first
        tensors, record = dict(payload.tensors), {}
        for name, codec in codecs.items():
            tensors[name], record[name] = codec.send_tensor(tensors[name], context, name=f"payload.tensors[{name!r}]")
        return payload.replace(tensors=tensors, meta={**payload.meta, _META_KEY: record})

    def receive(self, payload: Payload, context: dict[str, Any], generator: torch.Generator) -> Payload:
        """Decode each tensor `send` encoded back to its original shape and dtype."""
        record = payload.meta.get(_META_KEY)
        if record is None:
            raise ValueError(f"payload: carries no codec-bank symbols (meta has no {_META_KEY!r} entry)")
        tensors = dict(payload.tensors)
        for name, info in record.items():
            if name not in self.names:
                raise ValueError(f"payload.tensors[{name!r}]: no codec in this bank to decode it")
            tensors[name] = self[name].receive_tensor(tensors[name], info, context)
        meta = {k: v for k, v in payload.meta.items() if k != _META_KEY}
        return payload.replace(tensors=tensors, meta=meta)

    def note(self) -> dict[str, Any]:
        return {"codecs": len(self.names), "num_symbols": self.num_symbols()}

    # ------------------------------------------------------------------ training
    def forward(self, features: Mapping[str, torch.Tensor], snr_db, generator: torch.Generator | None = None,
                channel=None) -> dict[str, dict[str, Any]]:
        """Training pass of each codec on its feature: ``{name: SeedCodec.forward(...) dict}``.

        One generator drives all codecs in name order (SNR draws, fading, noise).
        """
        return {name: self[name](x, snr_db, generator=generator, channel=channel) for name, x in features.items()}

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``bank.json`` (tensor name -> subfolder) and each codec's `SeedCodec.save_pretrained`
        folder (``codec-0``, ``codec-1``, ...: safetensors + config.json, no pickle)."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        folders = {}
        for i, (name, codec) in enumerate(self.items()):
            folders[name] = f"codec-{i}"
            codec.save_pretrained(path / folders[name])
        (path / BANK_CONFIG).write_text(json.dumps({"_class_name": type(self).__name__, "codecs": folders},
                                                   indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "SeedCodecBank":
        """Load a bank written by `save_pretrained`. Missing or corrupt files raise a clear error."""
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory: expected a path, got {type(directory).__name__}")
        path = Path(directory).expanduser()
        if not (path / BANK_CONFIG).is_file():
            raise FileNotFoundError(f"directory: {path} has no {BANK_CONFIG} (written by SeedCodecBank.save_pretrained)")
        try:
            config = json.loads((path / BANK_CONFIG).read_text())
            folders = config["codecs"]
            if not isinstance(folders, dict) or not all(isinstance(v, str) for v in folders.values()):
                raise ValueError("'codecs' is not a mapping of name -> folder")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"directory: corrupt {path / BANK_CONFIG}: {exc}") from exc
        for name, folder in folders.items():
            if Path(folder).is_absolute() or ".." in Path(folder).parts:
                raise ValueError(f"directory: {path / BANK_CONFIG} points codec {name!r} outside the folder")
        return cls({name: SeedCodec.load(path / folder, map_location) for name, folder in folders.items()})


def payload_layout(payload: Payload) -> dict[str, tuple[int, int, int]]:
    """``{name: (C, h, w)}`` of a payload's primary tensors (each must be (B, C, h, w))."""
    if not isinstance(payload, Payload):
        raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
    if not payload.primary:
        raise ValueError("payload: has no primary tensors")
    out = {}
    for name in payload.primary:
        x = payload.tensors[name]
        if x.dim() != 4:
            raise ValueError(f"payload.tensors[{name!r}]: expected (B, C, h, w), got shape {tuple(x.shape)}")
        out[name] = tuple(int(s) for s in x.shape[1:])
    return out
