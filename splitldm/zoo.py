"""Named shipped models, resolved from inside the installed package (CompressAI's ``zoo`` idea), and the
one resolver of every ``from_pretrained`` source (zoo name, local folder or hub id).

The embedded default travels with the wheel: the folders under ``splitldm/checkpoints/`` are package
data, so ``load_pipeline("tiny")`` or ``SeedCodec.from_pretrained("seed-codec")`` work from any working
directory. ``$SPLITLDM_CHECKPOINTS`` points the zoo at another folder with the same layout (for example
retrained weights); paths are never taken relative to the working directory.

| name | what | loaded by |
|---|---|---|
| ``tiny`` | embedded text-to-image teacher (SD-1 architecture) | `load_pipeline` |
| ``tiny-lcm`` | its 1-8 step LCM student (same VAE and text encoder) | `load_pipeline` |
| ``seed-codec`` | seed codec for ``tiny``'s 4x8x8 latents (rho 1/8) | `SeedCodec.from_pretrained` |
| ``classifier`` | attribute classifier of the shapes data (FID/adherence) | `AttributeClassifier.from_pretrained` |
| ``merge-decoder`` | VAE decoder fine-tuned for merged + noisy latents | `MergeAwareDecoder.from_pretrained` |
| ``quality`` | measured quality tables (``quality/tiny.json``) | `QualityTable.load` |
| ``power-curve`` | the seed codec's measured MSE over 8 fading blocks | `PowerCurve.load` (default of `SeedPower`) |
| ``entropy-model`` | learned entropy model of ``tiny``'s latents | `EntropyModel.from_pretrained` |
| ``cvpo-meg``, ``ppo-power``, ``d3ql-placement`` | RL controllers | `AutoPolicy.from_pretrained` / their class |
| ``codec-bank`` | `SeedCodecBank` for a cut inside ``tiny``'s UNet pass | `SeedCodecBank.from_pretrained` |

`MODELS` below is the complete list.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

__all__ = ["MODELS", "checkpoints_dir", "hub_offline", "is_zoo_name", "resolve", "resolve_pretrained"]

logger = logging.getLogger(__name__)

#: Zoo name -> (folder under `checkpoints_dir()`, one-line description).
MODELS: dict[str, tuple[str, str]] = {
    "tiny": ("tiny", "embedded text-to-image teacher (StableDiffusionPipeline, 64 px)"),
    "tiny-lcm": ("tiny-lcm", "LCM student of tiny (1-8 steps)"),
    "seed-codec": ("seed-codec", "seed codec for tiny's 4x8x8 latents, rho = 1/8"),
    "classifier": ("classifier", "attribute classifier of the embedded shapes data"),
    "merge-decoder": ("merge-decoder", "VAE decoder fine-tuned for merged and noisy latents"),
    "quality": ("quality", "measured quality tables (steps x merge ratio x SNR)"),
    "power-curve": ("power-curve", "seed-codec's measured MSE when its 32 symbols cross 8 fading blocks (SeedPower)"),
    "entropy-model": ("entropy-model", "learned entropy model of tiny's latents (factorized prior, 10 rate levels)"),
    "cvpo-meg": ("cvpo-meg", "CVPO controller of (steps, merge ratio) on MEGRates (cost_obs), 0.996 of the oracle"),
    "ppo-power": ("ppo-power", "PPO transmit-power split over 8 Rayleigh blocks (SeedPower on the codec's measured curve, 5 dB)"),
    "codec-bank": ("codec-bank", "SeedCodecBank for tiny's UNet cut before 'output' (step 4 of 8), 34 uses/image"),
    "d3ql-placement": ("d3ql-placement", "D3QL placement of a 3-node chain (ChainPlacement, splitldm.serve.chain)"),
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


# ------------------------------------------------------------------ from_pretrained sources
# One resolver for every model of the library that follows the diffusers ``save_pretrained`` /
# ``from_pretrained`` contract (safetensors only): the seed codec and codec bank, the attribute classifier,
# the merge-aware decoder, the RL policies. Order: a zoo name (resolved inside the installed package, never
# relative to the working directory), then an existing local folder, then - only when the source is not a
# local path, looks like ``owner/name`` and ``HF_HUB_OFFLINE`` is unset - a hub snapshot restricted to
# config and safetensors files.

ARG = "pretrained_model_name_or_path"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

ARG = "pretrained_model_name_or_path"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (to anything but an explicit false value)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def resolve_pretrained(source: str | os.PathLike, required: Sequence[str], *, what: str,
                       subfolder: str | None = None, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                       files: str | None = None) -> Path:
    """The local folder holding ``required`` files for ``source`` (see the module docstring).

    ``files`` describes the expected folder content in error messages (default: ``required``).

    Raises:
        TypeError: ``source`` is not a str or path.
        FileNotFoundError: nothing found (the message names the argument and says why the hub was not
            tried), or a ``required`` file is missing from the folder.
    """
    if not isinstance(source, (str, os.PathLike)) or isinstance(source, bytes):
        raise TypeError(f"{ARG}: expected a folder, a zoo name or a hub id, got {type(source).__name__}")
    if subfolder is not None and (not isinstance(subfolder, str) or Path(subfolder).is_absolute()
                                  or ".." in Path(subfolder).parts):
        raise ValueError(f"subfolder: expected a relative folder name inside the model folder, got {subfolder!r}")
    if isinstance(source, str) and is_zoo_name(source):
        path = resolve(source)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            text = os.fspath(source)
            if not isinstance(source, str) or not _HUB_ID.match(text):
                why = "not a zoo name or a hub id"
            elif local_files_only or hub_offline():
                why = "HF_HUB_OFFLINE is set" if hub_offline() else "local_files_only=True"
            else:
                path = _download(text, required, subfolder, revision, cache_dir)
                why = ""
            if why:
                raise FileNotFoundError(f"{ARG}: no {what} directory (with {files or ', '.join(required)}) at "
                                        f"{text!r} ({why}; zoo names: {sorted(MODELS)})")
    if subfolder:
        path = path / subfolder
    if not path.is_dir():
        raise FileNotFoundError(f"{ARG}: {path} is not a {what} directory")
    for name in required:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{ARG}: the {what} directory {path} has no {name} "
                                    f"(written by {what}.save_pretrained)")
    return path


def _download(repo_id: str, required: Sequence[str], subfolder: str | None, revision: str | None,
              cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""
    patterns = [prefix + "*.json", prefix + "*.safetensors", *(prefix + n for n in required)]
    logger.info("downloading %s from the Hugging Face hub (config and safetensors files only)", repo_id)
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as exc:  # any hub failure (bad id, no network) means: nothing to load
        raise FileNotFoundError(f"{ARG}: {repo_id!r} is not a local folder or a zoo name, and the hub could not "
                                f"provide it ({type(exc).__name__}: {exc})") from exc
