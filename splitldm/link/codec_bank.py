"""`SeedCodecBank`: one `SeedCodec` per primary tensor, so any payload can cross as channel symbols.

A cut inside the UNet pass (`SplitPipeline(..., split_stage=c)`) sends the latents plus the carry's
hidden state and skip connections: features of different channel counts and resolutions (see
`splitldm.pipeline.chain.Carry.layout`). A single `SeedCodec` codes one feature shape; the bank holds one codec
per tensor name and codes each primary tensor with its own::

    payload = SplitPipeline(pipe, split_step=2, split_stage=3).edge(prompt, ...)
    bank = SeedCodecBank.for_payload(payload, rho=1 / 8)          # or SeedCodecBank.from_pretrained(folder)
    received = Link([bank, AWGN(snr_db=10)])(payload)

Channel uses: tensor ``name`` of shape (B, C, h, w) becomes (B, k_name) complex64 symbols with
``k_name = floor(rho C h w)`` (`num_symbols`); the payload counts them exactly. Training: see
``splitldm/recipes/codec_bank.py``.

Saving follows diffusers: one ``config.json`` (``{"codecs": [[name, SeedCodec config], ...]}``) and one
``model.safetensors`` (keys ``codecs.<i>.<codec key>`` in name order). Folders of 0.1 (``bank.json``
naming one `SeedCodec` subfolder per tensor) still load; a subfolder that resolves outside the bank's
folder (``..``, an absolute path or a symlink pointing out) is refused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from splitldm.checks import read_config
from splitldm.zoo import ARG, resolve_pretrained
from splitldm.link.codec import (CONFIG_NAME, WEIGHTS_NAME, SeedCodec, _load_weights, _save_dir,
                                 write_safetensors)
from splitldm.link.payload import Payload
from splitldm.link.stack import LinkContext, LinkStage

__all__ = ["SeedCodecBank", "payload_layout"]

BANK_CONFIG = "bank.json"  # the 0.1 layout (read only)
_META_KEY = "seed_codec_bank"


def _shape(value: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(value)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"layout[{name!r}]: expected (C, h, w) positive ints, got {value!r}")
    return shape


class SeedCodecBank(ModelMixin, LinkStage, ConfigMixin):
    """A `LinkStage` holding one `SeedCodec` per tensor name (a diffusers ``ModelMixin`` + ``ConfigMixin``).

    :input: ``send``: every primary tensor ``x_name`` ``(m B, C, h, w)`` real, with a codec of that name
        coding ``(C, h, w)``.
    :output: ``send``: each becomes ``(m B, k_name)`` complex64 symbols, ``k_name = floor(rho C h w)``
        (``payload.meta["seed_codec_bank"]`` records shapes and dtypes); ``receive``: back to
        ``(m B, C, h, w)`` in the original dtypes.
    :context: reads ``snr_db`` and (``condition="csi"``) ``h``, as `SeedCodec`; writes nothing.

    Parameters:
        codecs (`Mapping[str, SeedCodec | dict]`): tensor name -> `SeedCodec` (names as in the payload,
            e.g. ``carry.skip.0``), or -> a `SeedCodec` config dict (a fresh codec is built from it, as
            `from_config` does). Each codec codes features of shape ``(in_channels, *sample_size)`` only.

    A primary tensor without a codec, or of another shape, is a ValueError naming it; codecs for names
    the payload lacks are unused. The config is ``{"codecs": [[name, codec config], ...]}`` (in order).
    """

    config_name = CONFIG_NAME

    def __init__(self, codecs: Mapping[str, SeedCodec | Mapping[str, Any]]):
        super().__init__()
        if isinstance(codecs, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in codecs):
            codecs = dict(codecs)  # the config's ordered [name, codec config] pairs
        if not isinstance(codecs, Mapping) or not codecs:
            raise ValueError("codecs: expected a non-empty mapping of tensor name -> SeedCodec")
        built = {}
        for name, codec in codecs.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"codecs: names must be non-empty str, got {name!r}")
            if isinstance(codec, Mapping) and not isinstance(codec, nn.Module):
                try:
                    codec = SeedCodec(**{k: v for k, v in codec.items() if not k.startswith("_")})
                except TypeError as exc:
                    raise ValueError(f"codecs[{name!r}]: not a SeedCodec config ({exc})") from exc
            if not isinstance(codec, SeedCodec):
                raise TypeError(f"codecs[{name!r}]: expected a SeedCodec, got {type(codec).__name__}")
            built[name] = codec
        self.names = tuple(built)
        self.codecs = nn.ModuleList(built.values())  # a ModuleDict would reject the dots in carry.skip.0
        self._sync_config()

    def __getattr__(self, name: str) -> Any:
        # ``codecs`` is both a config key and the ModuleList: the module wins (ModelMixin would return the
        # config dict).
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        return super().__getattr__(name)

    def _sync_config(self) -> None:
        """Record each codec's current config (statistics and default SNR included) in the bank config."""
        configs = {}
        for name, codec in zip(self.names, self.codecs):
            cfg = {k: v for k, v in dict(codec.config).items() if not k.startswith("_")}
            cfg.update(default_snr_db=codec.default_snr_db,
                       in_mean=[float(v) for v in codec.in_mean.reshape(-1)],
                       in_std=[float(v) for v in codec.in_std.reshape(-1)])
            configs[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
        # ordered pairs, not a dict: config.json is written with sorted keys, the weights in name order
        self.register_to_config(codecs=[[name, cfg] for name, cfg in configs.items()])

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
    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        """Encode each primary tensor (B, C, h, w) with its own codec to complex64 symbols (B, k)."""
        if not payload.primary:
            raise ValueError("payload: has no primary tensor for the codec bank to encode")
        codecs = {name: self._codec_for(payload, name) for name in payload.primary}  # check all first
        tensors, record = dict(payload.tensors), {}
        for name, codec in codecs.items():
            tensors[name], record[name] = codec.send_tensor(tensors[name], context, name=f"payload.tensors[{name!r}]")
        return payload.replace(tensors=tensors, meta={**payload.meta, _META_KEY: record})

    def receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
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
    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        safe_serialization: bool = True, **kwargs: Any) -> Path:
        """Write ``config.json`` (the bank config, every codec's config inside) and ``model.safetensors``
        (all weights, keys ``codecs.<i>.*``) into ``save_directory`` (created). Safetensors only."""
        path = _save_dir(save_directory, safe_serialization, kwargs)
        if not is_main_process:
            return path
        self._sync_config()
        self.save_config(path)
        write_safetensors(self.state_dict(), path / WEIGHTS_NAME, type(self).__name__)
        return path

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, subfolder: str | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False) -> "SeedCodecBank":
        """Load a bank written by `save_pretrained` (or a 0.1 ``bank.json`` folder), in eval mode.

        ``pretrained_model_name_or_path``: a local folder, a `splitldm.zoo` name or a hub id (only when it
        is not a local path and ``HF_HUB_OFFLINE`` is unset); the other arguments as
        `SeedCodec.from_pretrained`. Missing files: FileNotFoundError; corrupt files, weights that do
        not fit, or a 0.1 subfolder outside the folder: ValueError.
        """
        path = resolve_pretrained(pretrained_model_name_or_path, (), what=cls.__name__, subfolder=subfolder,
                                  revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                  files=f"{CONFIG_NAME} + {WEIGHTS_NAME}, or a 0.1 {BANK_CONFIG}")
        if (path / BANK_CONFIG).is_file():
            bank = cls(_legacy_codecs(path, device))
        elif (path / CONFIG_NAME).is_file():
            from splitldm.link.codec import _read_config

            config = _read_config(path / CONFIG_NAME, cls)
            codecs = config.get("codecs")
            if not isinstance(codecs, list) or not all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict)
                    for p in codecs):
                raise ValueError(f"{ARG}: corrupt {path / CONFIG_NAME}: 'codecs' is not a list of "
                                 "[name, SeedCodec config] pairs")
            if not (path / WEIGHTS_NAME).is_file():
                raise FileNotFoundError(f"{ARG}: {path} has no {WEIGHTS_NAME} (written by "
                                        "SeedCodecBank.save_pretrained)")
            bank = cls(codecs)
            _load_weights(bank, path / WEIGHTS_NAME, device)
        else:
            raise FileNotFoundError(f"{ARG}: {path} has no {CONFIG_NAME} (or 0.1 {BANK_CONFIG}); "
                                    "written by SeedCodecBank.save_pretrained")
        bank = bank.to(device)
        if torch_dtype is not None:
            bank = bank.to(torch_dtype)
        return bank.eval()

    # ------------------------------------------------------------------ deprecated (0.1) names
    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "SeedCodecBank":
        """Deprecated alias of `from_pretrained` (removed in the next release)."""
        warnings.warn(f"{cls.__name__}.load is deprecated; use {cls.__name__}.from_pretrained",
                      DeprecationWarning, stacklevel=2)
        return cls.from_pretrained(directory, device=map_location)

    def save(self, save_directory: str | os.PathLike) -> Path:
        """Deprecated alias of `save_pretrained` (removed in the next release)."""
        warnings.warn(f"{type(self).__name__}.save is deprecated; use save_pretrained", DeprecationWarning,
                      stacklevel=2)
        return self.save_pretrained(save_directory)


def _legacy_codecs(path: Path, device) -> dict[str, SeedCodec]:
    """The codecs of a 0.1 bank folder: ``bank.json`` maps tensor name -> `SeedCodec` subfolder."""
    config = read_config(path, BANK_CONFIG, arg=ARG)  # strict JSON, no symlink out, at most 1 MiB
    folders = config.get("codecs")
    if not isinstance(folders, dict) or not folders or len(folders) > 1024 or not all(
            isinstance(v, str) for v in folders.values()):
        raise ValueError(f"{ARG}: corrupt {path / BANK_CONFIG}: 'codecs' is not a mapping of name -> folder "
                         "(1 to 1024 codecs)")
    root = path.resolve()
    codecs = {}
    for name, folder in folders.items():
        target = path / folder
        # refuse "..", absolute paths and symlinks that lead out of the bank's folder
        if Path(folder).is_absolute() or ".." in Path(folder).parts or not target.resolve().is_relative_to(root):
            raise ValueError(f"{ARG}: {path / BANK_CONFIG} points codec {name!r} outside the folder ({folder!r})")
        for file in (CONFIG_NAME, WEIGHTS_NAME):
            if (target / file).exists() and not (target / file).resolve().is_relative_to(root):
                raise ValueError(f"{ARG}: {target / file} of codec {name!r} is a link outside the folder")
        if not target.is_dir():
            raise FileNotFoundError(f"{ARG}: {path / BANK_CONFIG} names codec folder {folder!r}, which does not exist")
        codecs[name] = SeedCodec.from_pretrained(target, device=device)
    return codecs


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
