"""Where a ``from_pretrained`` source lives: a zoo name, a local folder, or a Hugging Face hub id.

One resolver for every model of the library that follows the diffusers ``save_pretrained`` /
``from_pretrained`` contract (safetensors only). Order: a `splitldm.zoo` name (resolved inside the
installed package, never relative to the working directory), then an existing local folder, then -
only when the source is not a local path, looks like ``owner/name`` and ``HF_HUB_OFFLINE`` is unset -
a hub snapshot restricted to config and safetensors files.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

from splitldm import zoo

logger = logging.getLogger(__name__)

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
    if isinstance(source, str) and zoo.is_zoo_name(source):
        path = zoo.resolve(source)
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
                                        f"{text!r} ({why}; zoo names: {sorted(zoo.MODELS)})")
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
    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
