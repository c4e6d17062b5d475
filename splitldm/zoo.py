"""Named shipped models, resolved from inside the installed package (CompressAI's ``zoo`` idea).

The embedded default travels with the wheel: the folders under ``splitldm/checkpoints/`` are package
data, so ``load_pipeline("tiny")`` or ``SeedCodec.from_pretrained("seed-codec")`` work from any working
directory. ``$SPLITLDM_CHECKPOINTS`` points the zoo at another folder with the same layout (for example
retrained weights); paths are never taken relative to the working directory.

=================  =====================================================  ==========================
name               what                                                   loaded by
=================  =====================================================  ==========================
``tiny``           embedded text-to-image teacher (SD-1 architecture)     `load_pipeline`
``tiny-lcm``       its 1-8 step LCM student (same VAE and text encoder)   `load_pipeline`
``seed-codec``     seed codec for ``tiny``'s 4x8x8 latents (rho 1/8)      `SeedCodec.from_pretrained`
``classifier``     attribute classifier of the shapes data (FID/adherence) `AttributeClassifier.from_pretrained`
``merge-decoder``  VAE decoder fine-tuned for merged + noisy latents      `MergeAwareDecoder.from_pretrained`
``quality``        measured quality tables (``quality/tiny.json``)         `QualityTable.load`
=================  =====================================================  ==========================
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MODELS", "checkpoints_dir", "is_zoo_name", "resolve"]

#: Zoo name -> (folder under `checkpoints_dir()`, one-line description).
MODELS: dict[str, tuple[str, str]] = {
    "tiny": ("tiny", "embedded text-to-image teacher (StableDiffusionPipeline, 64 px)"),
    "tiny-lcm": ("tiny-lcm", "LCM student of tiny (1-8 steps)"),
    "seed-codec": ("seed-codec", "seed codec for tiny's 4x8x8 latents, rho = 1/8"),
    "classifier": ("classifier", "attribute classifier of the embedded shapes data"),
    "merge-decoder": ("merge-decoder", "VAE decoder fine-tuned for merged and noisy latents"),
    "quality": ("quality", "measured quality tables (steps x merge ratio x SNR)"),
}


def checkpoints_dir() -> Path:
    """The folder holding the shipped models: ``$SPLITLDM_CHECKPOINTS`` if set, else the package's own
    ``splitldm/checkpoints`` (installed as package data)."""
    env = os.environ.get("SPLITLDM_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "checkpoints"


def is_zoo_name(name: object) -> bool:
    """True if ``name`` is a zoo name (a string key of `MODELS`)."""
    return isinstance(name, str) and name in MODELS


def resolve(name: str) -> Path:
    """The folder of zoo model ``name``.

    Raises:
        ValueError: ``name`` is not a zoo name (the message lists them).
        FileNotFoundError: the zoo folder does not exist (for example ``$SPLITLDM_CHECKPOINTS`` points
            at a folder without it).
    """
    if not is_zoo_name(name):
        raise ValueError(f"name: {name!r} is not a shipped model; choose from {sorted(MODELS)}")
    path = checkpoints_dir() / MODELS[name][0]
    if not path.exists():
        raise FileNotFoundError(f"name: shipped model {name!r} not found at {path} "
                                f"(check $SPLITLDM_CHECKPOINTS or reinstall splitldm)")
    return path
