"""The merge-aware VAE decoder: the device (UE) side decoder fine-tuned for merged and noisy latents.

A `MergeAwareDecoder` is the decoder half of an `AutoencoderKL` (``post_quant_conv`` + ``decoder``),
fine-tuned by `splitldm.recipes.merge_decoder` on latents that crossed a `splitldm.link.merge.TokenMerge`
link (merge, unmerge, plus channel noise). The encoder is untouched, so latents (and the UNet trained on
them) stay valid; the UE swaps its VAE for ``decoder.apply_to(pipe.vae)``.

It follows the diffusers convention (``ModelMixin`` + ``ConfigMixin`` + ``@register_to_config``):
``save_pretrained(folder)`` writes ``config.json`` and ``decoder.safetensors`` (safetensors only; the
tensor names are the VAE's own ``decoder.*`` / ``post_quant_conv.*``), and ``from_pretrained`` takes a
local folder, the zoo name ``"merge-decoder"`` (`splitldm.zoo`) or a hub id when online::

    from splitldm.pipeline.models import load_pipeline
    from splitldm.pipeline.merge_decoder import MergeAwareDecoder

    pipe = load_pipeline("tiny")
    pipe.vae = MergeAwareDecoder.from_pretrained("merge-decoder").apply_to(pipe.vae)   # the UE decodes with it
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder
from diffusers.models.modeling_utils import ModelMixin

from splitldm.checks import DIFFUSERS_BOUNDS, inside, read_config
from splitldm.zoo import resolve_pretrained

__all__ = ["MergeAwareDecoder", "WEIGHTS_NAME", "decoder_state", "load_merge_decoder"]

#: File holding the decoder tensors inside a `MergeAwareDecoder` folder.
WEIGHTS_NAME = "decoder.safetensors"
_PREFIXES = ("decoder.", "post_quant_conv.")
#: The `AutoencoderKL` config keys that fix the decoder's architecture.
_ARCH_KEYS = ("latent_channels", "out_channels", "up_block_types", "block_out_channels", "layers_per_block",
              "act_fn", "norm_num_groups", "mid_block_add_attention", "use_post_quant_conv")


def decoder_state(vae: nn.Module) -> dict[str, torch.Tensor]:
    """The decoder tensors of an `AutoencoderKL` (or a `MergeAwareDecoder`): ``decoder.*`` and
    ``post_quant_conv.*``, detached, contiguous, on the CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items() if k.startswith(_PREFIXES)}


class MergeAwareDecoder(ModelMixin, ConfigMixin):
    """``post_quant_conv`` + ``decoder`` of an `AutoencoderKL`, fine-tuned for merged and noisy latents.

    Parameters:
        latent_channels (`int`, defaults to 4): channels of the latents it decodes.
        out_channels (`int`, defaults to 3): image channels.
        up_block_types, block_out_channels, layers_per_block, act_fn, norm_num_groups: the `AutoencoderKL`
            architecture of the VAE it belongs to, with mid_block_add_attention and use_post_quant_conv (same
            meaning, types and defaults).
        pipeline (`str`, *optional*): the pipeline whose VAE was fine-tuned (e.g. ``"tiny"``); informative.
        training (`dict`, *optional*): the recipe settings it was trained with (ratio and noise ranges,
            learning rate, steps, seed); informative.

    ``decode(z)``: latents (B, latent_channels, h, w) in VAE units (scaled latents divided by the VAE's
    ``scaling_factor``) -> images (B, out_channels, 8h, 8w) in about [-1, 1], as ``AutoencoderKL.decode``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 4, out_channels: int = 3,
                 up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",), block_out_channels: tuple[int, ...] = (64,),
                 layers_per_block: int = 1, act_fn: str = "silu", norm_num_groups: int = 32,
                 mid_block_add_attention: bool = True, use_post_quant_conv: bool = True,
                 pipeline: str | None = None, training: dict[str, Any] | None = None):
        super().__init__()
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
                               block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                               norm_num_groups=norm_num_groups, act_fn=act_fn,
                               mid_block_add_attention=mid_block_add_attention)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    # ------------------------------------------------------------------ VAE interop
    @classmethod
    def from_vae(cls, vae: nn.Module, **config: Any) -> "MergeAwareDecoder":
        """A `MergeAwareDecoder` holding a copy of ``vae``'s (an `AutoencoderKL`) decoder weights.
        ``config``: the informative fields (``pipeline``, ``training``)."""
        if not hasattr(vae, "config") or not hasattr(vae, "decoder"):
            raise TypeError(f"vae: expected an AutoencoderKL, got {type(vae).__name__}")
        arch = {k: vae.config[k] for k in _ARCH_KEYS if k in vae.config}
        model = cls(**arch, **config)
        model.load_state_dict(decoder_state(vae))
        return model.eval()

    def apply_to(self, vae: nn.Module) -> nn.Module:
        """A copy of ``vae`` (an `AutoencoderKL`, left untouched) whose decoder is this one (eval mode)."""
        if not hasattr(vae, "state_dict") or not hasattr(vae, "decoder"):
            raise TypeError(f"vae: expected an AutoencoderKL, got {type(vae).__name__}")
        state = decoder_state(self)
        theirs = {k: v.shape for k, v in vae.state_dict().items() if k.startswith(_PREFIXES)}
        if {k: v.shape for k, v in state.items()} != theirs:
            raise ValueError("vae: its decoder does not match this MergeAwareDecoder (tensor names or shapes differ)")
        new = copy.deepcopy(vae).eval()
        new.load_state_dict(state, strict=False)
        return new

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, out_channels, H, W), about [-1, 1], of latents ``z`` (B, latent_channels, h, w) in VAE units."""
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"z: expected latents (B, {self.config.latent_channels}, h, w), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    forward = decode

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs: Any) -> Path:
        """Write ``config.json`` and ``decoder.safetensors`` to ``save_directory`` (safetensors only)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("safe_serialization: only safetensors is supported")
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"save_directory: expected a path, got {type(save_directory).__name__}")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        save_file(decoder_state(self), str(folder / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike = "merge-decoder", *,
                        local_files_only: bool | None = None, **kwargs: Any) -> "MergeAwareDecoder":
        """Load from a folder written by `save_pretrained`, the zoo name ``"merge-decoder"`` or a hub id.

        Raises:
            FileNotFoundError: no such folder / zoo model / hub repository, or files missing.
            ValueError: the files are unreadable or do not match the config.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if kwargs:
            raise TypeError(f"from_pretrained: unexpected arguments {sorted(kwargs)}")
        folder = resolve_pretrained(pretrained_model_name_or_path, (cls.config_name, WEIGHTS_NAME),
                                    what=cls.__name__, local_files_only=bool(local_files_only))
        # strict JSON, no symlink out of the folder, sizes within the diffusers sanity bounds: before allocation
        config = read_config(folder, cls.config_name, DIFFUSERS_BOUNDS)
        weights = inside(folder, WEIGHTS_NAME)
        try:
            unknown = sorted(k for k in config if not k.startswith("_") and k not in cls._init_keys())
            if unknown:
                raise ValueError(f"unknown config keys {unknown}")
            model = cls.from_config(config)
            model.load_state_dict(load_file(str(weights)))
        except (SafetensorError, RuntimeError, ValueError, OSError, KeyError) as exc:
            raise ValueError(f"pretrained_model_name_or_path: could not load the merge-aware decoder from "
                             f"{folder}: {exc}") from exc
        return model.eval()

    @classmethod
    def _init_keys(cls) -> set[str]:
        import inspect

        return set(inspect.signature(cls.__init__).parameters) - {"self"}


def load_merge_decoder(vae: nn.Module, folder: str | os.PathLike = "merge-decoder") -> nn.Module:
    """Deprecated: use ``MergeAwareDecoder.from_pretrained(folder).apply_to(vae)``.

    A copy of ``vae`` (an `AutoencoderKL`) with the merge-aware decoder weights from ``folder`` (a
    folder or the zoo name ``"merge-decoder"``).
    """
    warnings.warn("load_merge_decoder(vae, folder) is deprecated; use "
                  "MergeAwareDecoder.from_pretrained(folder).apply_to(vae)", DeprecationWarning, stacklevel=2)
    try:
        decoder = MergeAwareDecoder.from_pretrained(folder)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"folder: {exc}") from exc
    try:
        return decoder.apply_to(vae)
    except ValueError as exc:
        raise ValueError(f"folder: {folder} does not hold this VAE's decoder ({exc})") from exc
