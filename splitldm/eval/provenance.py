"""Provenance of a result JSON: what produced the numbers, so that a reader can rerun them.

`provenance(config, seeds, extractor, models)` returns one JSON-ready dict that every result file of
the library (``splitldm evaluate``'s ``results.json``, the demo's ``report.json``, the quality table,
the benchmarks) stores under the key ``"provenance"``:

* ``versions``: splitldm, torch, diffusers, transformers, numpy, scipy, safetensors (``None`` when a
  package is not installed), and ``python``;
* ``platform`` (`platform.platform()`), ``machine``, ``cpu_count``, ``threads`` (torch's intra-op
  thread count) and the ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` environment values;
* ``git_commit`` / ``git_dirty`` of the splitldm checkout when the package is imported from a git
  working tree (``None`` for an installed wheel or without git);
* ``config``: the full configuration, round-tripped through JSON (non-JSON values become strings);
* ``seeds``: every seed used, by role (``{"sampling": 0, "channel": 1000}``);
* ``feature_extractor``: the metric's feature extractor (for example ``"classifier"`` for the shapes
  data's attribute classifier) or ``None`` when no feature-based metric is reported;
* ``models``: for each zoo name used, its folder and the SHA-256 of its files (name and bytes of every
  file, sorted by relative path; the embedded checkpoints are a few MB, so this costs milliseconds and
  is cached per folder state).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["provenance", "PACKAGES", "folder_sha256"]

#: Packages whose installed versions are recorded (besides splitldm and python).
PACKAGES = ("torch", "diffusers", "transformers", "numpy", "scipy", "safetensors")

_HASH_CACHE: dict[tuple, str] = {}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _splitldm_version() -> str:
    import splitldm

    return splitldm.__version__


def folder_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) over the relative path and bytes of every file under ``path``, in sorted order.

    Raises:
        FileNotFoundError: ``path`` is not a folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    state = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root.resolve()), state)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
            h.update(b"\0")
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding the imported splitldm package, or (None, None)."""
    pkg = Path(__file__).resolve().parents[1]  # .../splitldm
    top = _git(["rev-parse", "--show-toplevel"], pkg.parent)
    if top is None or not (Path(top) / "splitldm").resolve() == pkg:
        return None, None
    commit = _git(["rev-parse", "HEAD"], pkg.parent)
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", "splitldm"], pkg.parent)
    return commit, (None if status is None else bool(status))


def _json_config(config: Mapping) -> dict:
    return json.loads(json.dumps(dict(config), sort_keys=True, default=str))


def provenance(config: Mapping[str, Any], seeds: Mapping[str, int], extractor: str | None = None,
               models: Sequence[str] = ()) -> dict[str, Any]:
    """The provenance block of a result JSON (see the module docstring for the keys).

    Args:
        config: the full configuration that produced the result (a mapping; values that JSON cannot
            hold are stored as ``str(value)``).
        seeds: every seed used, by role, each an int >= 0.
        extractor: name of the feature extractor behind feature-based metrics (FID, adherence), or
            ``None``.
        models: zoo names (`splitldm.zoo.MODELS`) whose checkpoints produced the result; each is
            recorded with its folder's SHA-256.

    Raises:
        TypeError: ``config`` or ``seeds`` is not a mapping, ``extractor`` is not a str or None,
            ``models`` is not a sequence of str.
        ValueError: a seed is not an int >= 0, or a name in ``models`` is not a zoo name.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a mapping, got {type(config).__name__}")
    if not isinstance(seeds, Mapping):
        raise TypeError(f"seeds: expected a mapping of role -> int, got {type(seeds).__name__}")
    for role, seed in seeds.items():
        if not isinstance(role, str) or isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds: expected str -> int >= 0, got {role!r}: {seed!r}")
    if extractor is not None and not isinstance(extractor, str):
        raise TypeError(f"extractor: expected a str or None, got {type(extractor).__name__}")
    if isinstance(models, str) or not isinstance(models, Sequence) or not all(isinstance(m, str)
                                                                              for m in models):
        raise TypeError(f"models: expected a sequence of zoo names, got {models!r}")
    from splitldm import zoo

    hashes = {}
    for name in models:
        path = zoo.resolve(name)  # ValueError naming `name` if not a zoo name
        hashes[name] = {"path": str(path), "sha256": folder_sha256(path)}

    import torch

    commit, dirty = _git_state()
    return {
        "versions": {"splitldm": _splitldm_version(), **{p: _version(p) for p in PACKAGES},
                     "python": platform.python_version()},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": list(sys.argv),
        "config": _json_config(config),
        "seeds": {k: int(v) for k, v in seeds.items()},
        "feature_extractor": extractor,
        "models": hashes,
    }
