"""Ready-made system configurations, one call each.

`meg_cvpo`: the MEG-CVPO system (Xu et al., TCCN 2025) on SDXL::

    from splitldm.pipeline.models import load_pipeline
    from splitldm.pipeline.presets import meg_cvpo

    system = meg_cvpo(load_pipeline("/path/to/sdxl"))            # or meg_cvpo("/path/to/sdxl")
    out = system("a red fox in the snow", steps=8, merge_ratio=0.5, generator=torch.Generator().manual_seed(0))
    out.images[0].save("fox.png"); out.sent.num_bits(), system.bit_model(0.5)

What it sets up: the edge server (ES) runs SDXL at 1024 px for a dynamic number of denoising steps
(4..12, chosen per request, e.g. by a CVPO controller) with ToMe 0.5 in the UNet's self-attention; the
final 4x128x128 latent crosses the link as 4096 tokens of 16 values (2x2 patches of the 4 channels),
feature-merged at the request's ratio (0..0.75) with the merge index map as side information; the
device (UE) unmerges and decodes with the merge-aware decoder when one is given (the hook:
``merge_decoder=``), else with the stock VAE decoder. The authors' bit model is `MEGCVPO.bit_model`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from splitldm.link.merge import TokenMerge
from splitldm.link.stack import Link, LinkStage
from splitldm.pipeline.families import family_of
from splitldm.pipeline.split import SplitOutput, SplitPipeline
from splitldm.tome import _check_ratio as _check_tome_ratio
from splitldm.tome import apply_patch, remove_patch

logger = logging.getLogger(__name__)

__all__ = ["MEGCVPO", "meg_cvpo", "MEG_CVPO_STEPS", "MEG_CVPO_MAX_RATIO"]

#: Dynamic denoising steps of MEG-CVPO (inclusive).
MEG_CVPO_STEPS = (4, 12)
#: Largest feature-merging ratio of MEG-CVPO's action space.
MEG_CVPO_MAX_RATIO = 0.75


class _DecoderView:
    """``pipe`` seen with another VAE (the UE's merge-aware decoder); everything else is ``pipe``'s."""

    def __init__(self, pipe, vae):
        self._pipe, self.vae = pipe, vae

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def upcast_vae(self) -> None:
        self.vae.to(dtype=torch.float32)


@dataclass
class MEGCVPO:
    """The MEG-CVPO system on one SDXL pipeline (build it with `meg_cvpo`).

    Attributes:
        pipe: the SDXL pipeline (ES: text encoders + UNet with the ToMe patch; UE: its VAE).
        image_size: generated image side, px (1024 for SDXL).
        tome_ratio: ToMe ratio in the ES UNet's self-attention.
        merge_ratio: default feature-merging ratio of the crossing latent.
        patch: latent pixels per token side (2: a 4x128x128 latent is 4096 tokens of 16 values).
        stages: link stages after the token merge (seed codec, channel, ...; none = ideal link).
        ue_vae: the UE's VAE (the merge-aware decoder applied to ``pipe.vae``), or None for the stock one.
        guidance_scale: classifier-free guidance on the ES.
    """

    pipe: Any
    image_size: int = 1024
    tome_ratio: float = 0.5
    merge_ratio: float = 0.5
    patch: int = 2
    stages: tuple[LinkStage, ...] = ()
    ue_vae: Any = None
    guidance_scale: float = 5.0
    similarity: str = "euclidean"
    tome_max_downsample: int = 2
    seed: int = 0
    _splits: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ what crosses
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent that crosses (4 x 128 x 128 for SDXL at 1024 px)."""
        side = self.image_size // self.pipe.vae_scale_factor
        return (self.pipe.unet.config.in_channels, side, side)

    def bit_model(self, merge_ratio: float | None = None, batch_size: int = 1) -> dict[str, float]:
        """The MEG-CVPO authors' bit count of one crossing: ``T = h w / p^2`` tokens of ``V = C p^2``
        values, ``r = int(ratio T)`` merged; kept values at 16 bit plus one 16-bit side-information
        symbol per merged token: ``bits = 16 V (T - r) + 16 r`` per image (SDXL, ratio 0.5: 0.557 Mbit)."""
        ratio = self.merge_ratio if merge_ratio is None else _check_ratio(merge_ratio)
        c, h, w = self.latent_shape
        tokens, values = (h // self.patch) * (w // self.patch), c * self.patch ** 2
        merged = int(ratio * tokens)
        bits = 16 * values * (tokens - merged) + 16 * merged
        return {"tokens": tokens, "values_per_token": values, "merged_tokens": merged,
                "bits": float(batch_size * bits)}

    def link(self, merge_ratio: float | None = None) -> Link:
        """The link for one request: `TokenMerge` on 2x2-patch tokens, then ``stages``."""
        ratio = self.merge_ratio if merge_ratio is None else _check_ratio(merge_ratio)
        return Link([TokenMerge(ratio, patch=self.patch, similarity=self.similarity), *self.stages])

    def split(self, steps: int, merge_ratio: float | None = None) -> SplitPipeline:
        """The `SplitPipeline` of one (steps, merge ratio) action: the ES runs all ``steps``."""
        steps = _check_steps(steps)
        ratio = self.merge_ratio if merge_ratio is None else _check_ratio(merge_ratio)
        key = (steps, ratio)
        if key not in self._splits:
            self._splits[key] = SplitPipeline(self.pipe, split_step=steps, link=self.link(ratio),
                                              generator_state="none")
        return self._splits[key]

    # ------------------------------------------------------------------ one request
    @torch.no_grad()
    def __call__(self, prompt, *, steps: int = 8, merge_ratio: float | None = None, generator=None,
                 link_generator: torch.Generator | None = None, output_type: str = "pil",
                 **kwargs) -> SplitOutput:
        """ES: ``steps`` denoising steps (ToMe on) -> link (feature merging + ``stages``) -> UE: unmerge
        + decode (merge-aware decoder if set). ``kwargs`` go to `SplitPipeline.edge` (negative prompt,
        ``num_images_per_prompt``, ...). Returns a `SplitOutput`."""
        split = self.split(steps, merge_ratio)
        self._patch()  # ToMe's destination draws restart from ``seed``: same request, same images
        kwargs.setdefault("guidance_scale", self.guidance_scale)
        sent = split.edge(prompt, num_inference_steps=steps, generator=generator, height=self.image_size,
                          width=self.image_size, **kwargs)
        received = split.link(sent, generator=link_generator)
        latents = split.device(received, output_type="latent")  # the UE has no step left: the latents
        images = self.decode(latents, output_type)
        return SplitOutput(images=images, sent=sent, received=received, link=Link.summary(received))

    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """UE: latents (B, 4, h, w) -> images, with ``ue_vae`` (the merge-aware decoder) if set."""
        if output_type == "latent":
            return latents
        pipe = self.pipe if self.ue_vae is None else _DecoderView(self.pipe, self.ue_vae)
        return family_of(self.pipe).decode(pipe, _Finished(latents), output_type)

    def _patch(self) -> None:
        if self.tome_ratio:
            apply_patch(self.pipe.unet, self.tome_ratio, max_downsample=self.tome_max_downsample, seed=self.seed,
                        merge_attn=True, merge_crossattn=False, merge_mlp=False)
        else:
            remove_patch(self.pipe.unet)

    def remove(self) -> None:
        """Remove the ToMe patch from the pipeline's UNet (the pipeline is usable unpatched again)."""
        remove_patch(self.pipe.unet)


@dataclass
class _Finished:
    """The part of a finished denoising state a family's ``decode`` reads."""

    latents: torch.Tensor
    generator: Any = None


def _check_steps(steps: Any) -> int:
    lo, hi = MEG_CVPO_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or not lo <= steps <= hi:
        raise ValueError(f"steps: MEG-CVPO takes {lo}..{hi} denoising steps, got {steps!r}")
    return steps


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= MEG_CVPO_MAX_RATIO:
        raise ValueError(f"merge_ratio: MEG-CVPO merges a fraction in [0, {MEG_CVPO_MAX_RATIO}], got {ratio!r}")
    return float(ratio)


def meg_cvpo(pipe_or_path, *, image_size: int = 1024, tome_ratio: float = 0.5, merge_ratio: float = 0.5,
             stages: Sequence[LinkStage] = (), merge_decoder=None, tome_max_downsample: int = 2,
             guidance_scale: float = 5.0, similarity: str = "euclidean", seed: int = 0) -> MEGCVPO:
    """The MEG-CVPO configuration as one call (see the module docstring).

    Args:
        pipe_or_path: a diffusers `StableDiffusionXLPipeline`, or what `load_pipeline` takes (a local
            SDXL folder, e.g. ``"/path/to/sdxl"``; ``"sdxl-tiny-random"`` for a random-weight tiny one).
        image_size: image side in pixels (1024; a multiple of 16 x 2**num_down_blocks for smaller tests).
        tome_ratio: ToMe ratio in the ES UNet's self-attention, in [0, 1) (0.5; 0 disables the patch).
        merge_ratio: default feature-merging ratio of the crossing latent, in [0, 0.75].
        stages: link stages after the token merge (codec, channel); none: an ideal link.
        merge_decoder: the UE's merge-aware decoder hook: a `MergeAwareDecoder`, a folder / zoo name it
            loads from, or None (stock decoder).
        tome_max_downsample: deepest UNet resolution ToMe merges at (2: SDXL's first attention level).
        guidance_scale: classifier-free guidance (5.0, SDXL's usual).
        similarity: feature-merging matching (``"euclidean"``, or ToMe's ``"cosine"``).
        seed: seeds ToMe's random destination choice.

    The pipeline's UNet is patched in place (`MEGCVPO.remove` undoes it); ToMe's random destination
    choice is re-seeded with ``seed`` at every request, so a request is reproducible.
    """
    from splitldm.pipeline.merge_decoder import MergeAwareDecoder
    from splitldm.pipeline.models import load_pipeline

    if isinstance(pipe_or_path, (str, os.PathLike)):
        pipe = load_pipeline(pipe_or_path)
    else:
        pipe = pipe_or_path
    family = family_of(pipe, "pipe_or_path")
    if family.name != "sdxl":
        raise TypeError(f"pipe_or_path: MEG-CVPO runs SDXL (StableDiffusionXLPipeline), got {type(pipe).__name__}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size: expected an int >= 16 pixels, got {image_size!r}")
    multiple = pipe.vae_scale_factor * 2 * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if image_size % multiple:
        raise ValueError(f"image_size: must be a multiple of {multiple} px for this SDXL (2x2 patch tokens), got {image_size}")
    merge_ratio = _check_ratio(merge_ratio)
    tome_ratio = _check_tome_ratio(tome_ratio, "tome_ratio")
    if not all(isinstance(s, LinkStage) for s in stages):
        raise TypeError("stages: expected LinkStage objects (seed codec, channel, ...)")
    ue_vae = None
    if merge_decoder is not None:
        if not isinstance(merge_decoder, MergeAwareDecoder):
            merge_decoder = MergeAwareDecoder.from_pretrained(merge_decoder)
        ue_vae = merge_decoder.apply_to(pipe.vae)
    system = MEGCVPO(pipe=pipe, image_size=image_size, tome_ratio=float(tome_ratio), merge_ratio=merge_ratio,
                     stages=tuple(stages), ue_vae=ue_vae, guidance_scale=guidance_scale, similarity=similarity,
                     tome_max_downsample=tome_max_downsample, seed=seed)
    system._patch()
    logger.info("MEG-CVPO: %s at %d px, ToMe %.2f (self-attention, down to %dx), feature merging %.2f of %s "
                "tokens", type(pipe).__name__, image_size, tome_ratio, tome_max_downsample, merge_ratio,
                "2x2-patch")
    return system
