"""The validation layer: every boundary of the library checks what enters with these functions, once.

Three kinds of input come from outside the library's control, and each has its checks here:

* **numbers and seeds** (`check_int`, `check_float`, `check_seed`): a bool is not a number, a float is
  never silently truncated to an int, and a seed must fit ``torch.Generator.manual_seed`` (an int in
  `SEED_RANGE`);
* **arrays** given to public functions (`check_tensor`, `check_images`, `check_features`,
  `check_generation_inputs`): type, dtype, shape, finiteness and range, checked before any arithmetic;
* **folders and configs** read by the loaders (`read_config`, `read_json`, `inside`,
  `check_pipeline_folder`): no file that leaves its folder through a symlink, no file that is not JSON
  (or is larger than `MAX_CONFIG_BYTES`), and sizes bounded by `Bound` s *before* anything is allocated:
  a width of 10**9, a million blocks or a million channels are refused, not attempted.

Every rejection is a ``TypeError`` (a Python argument of the wrong type), a ``ValueError`` (a wrong
value, or a file whose content is wrong: corrupt, too large, out of bounds, outside its folder) or a
``FileNotFoundError``; the message starts with the argument's name (``images: ...``,
``pretrained_model_name_or_path: ...``) and says what was allowed. The CLI prints it as one line and
exits with status 2.

This module sits at the bottom of the package's layers: it imports only the standard library, and numpy
and torch inside the functions that need them (so ``import splitldm.cli`` stays light).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch

__all__ = [
    "SEED_RANGE", "IMAGE_RANGE_TOLERANCE", "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "Bound", "DIFFUSERS_BOUNDS",
    "check_int", "check_float", "check_seed", "check_tensor", "check_images", "check_features",
    "check_generation_inputs", "inside", "read_json", "read_config", "check_config", "check_pipeline_folder",
    "check_output_path",
]

#: Seeds accepted by `check_seed` (inclusive): what ``torch.Generator.manual_seed`` takes as an unsigned
#: 64-bit integer.
SEED_RANGE = (0, 2 ** 64 - 1)
#: Images are accepted in ``[-tol, data_range + tol]`` with ``tol = IMAGE_RANGE_TOLERANCE * data_range``:
#: float noise of a decoder or a colour conversion (1.0000001) passes, an image in [0, 255] does not.
IMAGE_RANGE_TOLERANCE = 1e-3
#: Largest ``config.json`` (or any JSON a loader reads) in bytes: configs are small; a larger file is
#: refused before it is read.
MAX_CONFIG_BYTES = 1 << 20
#: Deepest nesting of lists / objects accepted in a config.
MAX_CONFIG_DEPTH = 32
#: Longest list accepted in a config when a `Bound` does not say otherwise.
_MAX_LIST = 4096


# ============================================================================ numbers and seeds
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either end optional).

    Python and numpy integers are accepted; a bool, a float (even ``3.0``: nothing is silently truncated)
    or a string is a ``TypeError``; an int out of range a ``ValueError``. Both name ``name``.
    """
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int{_interval(low, high)}, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected an int{_interval(low, high)}, got {value}")
    return value


def check_float(value: Any, name: str, low: float | None = None, high: float | None = None, *,
                finite: bool = True) -> float:
    """``value`` as a ``float`` in ``[low, high]``; NaN and (with ``finite``) infinities are refused.

    A bool or a non-number is a ``TypeError``; NaN, inf or a value out of range a ``ValueError``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number{_interval(low, high)}, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name}: expected a finite number{_interval(low, high)}, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected a number{_interval(low, high)}, got {value}")
    return value


def check_seed(seed: Any, name: str = "seed") -> int:
    """A random seed: an int in `SEED_RANGE` (``0 .. 2**64 - 1``), what a ``torch.Generator`` takes.

    A float seed (``1.5``, ``3.0``) is a ``TypeError``, not truncated; a negative seed or one that
    overflows 64 bits is a ``ValueError`` naming ``name`` and the allowed range.
    """
    lo, hi = SEED_RANGE
    if not _is_int(seed):
        raise TypeError(f"{name}: expected an int seed in [0, 2**64 - 1], got {type(seed).__name__} {seed!r} "
                        "(a float seed is never truncated)")
    if not lo <= int(seed) <= hi:
        raise ValueError(f"{name}: seed {int(seed)} is outside [0, 2**64 - 1] = [0, {hi}]")
    return int(seed)


def _interval(low, high) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" >= {low}"
    if low is None:
        return f" <= {high}"
    return f" in [{low}, {high}]"


# ============================================================================ arrays
_DTYPE_GROUPS = {"floating": "a floating dtype", "real": "a real (not complex) dtype", "complex": "a complex dtype"}


def check_tensor(x: Any, name: str, *, ndim: int | Sequence[int] | None = None, dtype: Any = None,
                 finite: bool = False, low: float | None = None, high: float | None = None,
                 atol: float = 0.0, min_shape: Sequence[int | None] | None = None,
                 allow_numpy: bool = False) -> "torch.Tensor":
    """Check an array argument and return it as a tensor (never copied unless it was a numpy array).

    Args:
        x: the argument (a ``torch.Tensor``; a numpy array too with ``allow_numpy``).
        name: the argument's name, first word of every message.
        ndim: the allowed number(s) of dimensions.
        dtype: a torch dtype, a tuple of them, or ``"floating"`` / ``"real"`` / ``"complex"``.
        finite: refuse NaN and +-inf (for complex tensors, in either part).
        low, high: the allowed range of the values (real tensors), widened by ``atol`` on each side.
        min_shape: per-dimension minimum sizes (None: no minimum), e.g. ``(1, None, 11, 11)``.

    Raises:
        TypeError: not a tensor, or the wrong dtype. ValueError: wrong ndim, too small, NaN / inf,
        values out of range (the message gives the observed min and max).
    """
    import numpy as np
    import torch

    if allow_numpy and isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind not in "biufc":
            raise TypeError(f"{name}: expected a numeric array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        allowed = "a torch.Tensor or a numpy array" if allow_numpy else "a torch.Tensor"
        raise TypeError(f"{name}: expected {allowed}, got {type(x).__name__}")
    if dtype is not None:
        if dtype == "floating":
            ok = x.is_floating_point()
        elif dtype == "real":
            ok = not x.is_complex() and x.dtype != torch.bool
        elif dtype == "complex":
            ok = x.is_complex()
        else:
            ok = x.dtype in (dtype if isinstance(dtype, tuple) else (dtype,))
        if not ok:
            want = _DTYPE_GROUPS.get(dtype) if isinstance(dtype, str) else (
                " or ".join(str(d) for d in dtype) if isinstance(dtype, tuple) else str(dtype))
            raise TypeError(f"{name}: expected {want}, got {x.dtype}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in dims:
            raise ValueError(f"{name}: expected {' or '.join(map(str, dims))} dimensions, got shape {tuple(x.shape)}")
    if min_shape is not None:
        for i, m in enumerate(min_shape):
            if m is not None and i < x.ndim and x.shape[i] < m:
                raise ValueError(f"{name}: dimension {i} must be >= {m}, got shape {tuple(x.shape)}")
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: must be finite, found {bad} NaN/inf value(s) in shape {tuple(x.shape)}")
    if (low is not None or high is not None) and x.numel() and not x.is_complex():
        lo = float(x.min()) if low is not None else None
        hi = float(x.max()) if high is not None else None
        if (lo is not None and lo < low - atol) or (hi is not None and hi > high + atol) or (
                lo is not None and math.isnan(lo)) or (hi is not None and math.isnan(hi)):
            raise ValueError(f"{name}: values must lie in [{low}, {high}]"
                             f"{f' (tolerance {atol:g})' if atol else ''}, got min {float(x.min()):.4g} "
                             f"max {float(x.max()):.4g}")
    return x


def check_images(x: Any, name: str, *, data_range: float = 1.0, min_size: int = 1) -> "torch.Tensor":
    """Images ``(B, C, H, W)``, real, finite, in ``[0, data_range]`` up to `IMAGE_RANGE_TOLERANCE`, with
    ``H, W >= min_size`` and ``B, C >= 1``; returned as float32 (float64 stays float64)."""
    import torch

    data_range = check_float(data_range, "data_range", 0.0)
    if data_range <= 0:
        raise ValueError(f"data_range: expected a number > 0, got {data_range}")
    x = check_tensor(x, name, ndim=4, dtype="real", min_shape=(1, 1, min_size, min_size))
    x = x if x.dtype == torch.float64 else x.float()
    return check_tensor(x, name, finite=True, low=0.0, high=data_range, atol=IMAGE_RANGE_TOLERANCE * data_range)


def check_features(x: Any, name: str, *, min_rows: int = 2) -> "torch.Tensor":
    """Features ``(N, D)`` (tensor or numpy array), real and finite, ``N >= min_rows``, ``D >= 1``;
    returned as float64."""
    x = check_tensor(x, name, ndim=2, dtype="real", allow_numpy=True)
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name}: expected (N >= {min_rows}, D >= 1) features, got shape {tuple(x.shape)}"
                         f"{' (a covariance needs at least 2 samples)' if min_rows == 2 else ''}")
    return check_tensor(x.double(), name, finite=True)


def check_generation_inputs(*, latents: Any = None, dtype: Any = None, height: Any = None, width: Any = None) -> None:
    """The array and size arguments of a generation (``SplitPipeline.edge``, ``pipe(...)``).

    ``latents`` (optional): a floating tensor of the denoiser's ``dtype`` (float64 is a ``TypeError``,
    never converted silently: pass ``latents.to(dtype)``), finite. ``height`` / ``width`` (optional):
    ints >= 1 (0 is refused, not replaced by the default); the family checks the multiple.
    """
    import torch

    for size_name, value in (("height", height), ("width", width)):
        if value is not None:
            check_int(value, size_name, 1)
    if latents is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else (torch.float16, torch.bfloat16, torch.float32)
        check_tensor(latents, "latents", dtype="floating")
        if latents.dtype not in allowed:
            raise TypeError(f"latents: expected dtype {' or '.join(map(str, allowed))} (the denoiser's), got "
                            f"{latents.dtype}; convert with latents.to({allowed[0]})")
        check_tensor(latents, "latents", finite=True)


# ============================================================================ folders and configs
@dataclass(frozen=True)
class Bound:
    """What one config key may hold (checked by `check_config` wherever the key appears).

    Attributes:
        kind: ``"int"``, ``"ints"`` (an int or a list of ints, nested lists allowed), ``"number"``,
            ``"numbers"`` (a number or a list of them), ``"str"``, ``"strs"`` (a list of strings),
            ``"bool"``, ``"list"`` (any list) or ``"dict"``.
        low, high: the allowed range of each number (inclusive).
        max_len: the longest list allowed.
        choices: the allowed strings (``"str"`` / ``"strs"``).
        nullable: ``null`` is allowed.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    max_len: int = _MAX_LIST
    choices: tuple[str, ...] | None = None
    nullable: bool = True

    def describe(self) -> str:
        what = {"int": "an int", "ints": "an int or a list of ints", "number": "a number",
                "numbers": "a number or a list of numbers", "str": "a string", "strs": "a list of strings",
                "bool": "a bool", "list": "a list", "dict": "an object"}[self.kind]
        rng = _interval(self.low, self.high)
        if self.kind in ("ints", "numbers", "strs", "list"):
            rng += f" (at most {self.max_len} items)"
        if self.choices:
            rng += f" from {list(self.choices)}"
        return what + rng + (" or null" if self.nullable else "")


def _int_ok(v, b: Bound) -> bool:
    return _is_int(v) and (b.low is None or v >= b.low) and (b.high is None or v <= b.high)


def _num_ok(v, b: Bound) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (b.low is None or v >= b.low) and (b.high is None or v <= b.high))


def _flat(v, depth: int = 0) -> list | None:
    if not isinstance(v, list) or depth > 4:
        return None
    out = []
    for item in v:
        if isinstance(item, list):
            inner = _flat(item, depth + 1)
            if inner is None:
                return None
            out.extend(inner)
        else:
            out.append(item)
    return out


def _fits(value: Any, b: Bound) -> bool:
    if value is None:
        return b.nullable
    k = b.kind
    if k == "int":
        return _int_ok(value, b)
    if k == "number":
        return _num_ok(value, b)
    if k in ("ints", "numbers"):
        ok = _int_ok if k == "ints" else _num_ok
        if not isinstance(value, list):
            return ok(value, b)
        items = _flat(value)
        return items is not None and len(items) <= b.max_len and all(ok(v, b) for v in items)
    if k == "str":
        return isinstance(value, str) and (b.choices is None or value in b.choices)
    if k == "strs":
        return (isinstance(value, list) and len(value) <= b.max_len
                and all(isinstance(s, str) and (b.choices is None or s in b.choices) for s in value))
    if k == "bool":
        return isinstance(value, bool)
    if k == "list":
        return isinstance(value, list) and len(value) <= b.max_len
    if k == "dict":
        return isinstance(value, dict)
    raise ValueError(f"bounds: unknown kind {k!r}")


def check_config(config: Any, bounds: Mapping[str, Bound] | None, where: str, *,
                 arg: str = "pretrained_model_name_or_path") -> dict[str, Any]:
    """Check a parsed config: a JSON object, nested at most `MAX_CONFIG_DEPTH` deep, lists at most
    4096 long, and each key of ``bounds`` - wherever it appears, also inside nested objects and lists of
    objects - holding what its `Bound` allows. Raises ValueError naming ``arg``, ``where`` and the key."""
    if not isinstance(config, dict):
        raise ValueError(f"{arg}: corrupt config {where}: expected a JSON object, got {type(config).__name__}")
    bounds = bounds or {}

    def walk(node: Any, path: str, depth: int) -> None:
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"{arg}: {where} is nested deeper than {MAX_CONFIG_DEPTH} levels (at {path or 'top'})")
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{path}.{key}" if path else str(key)
                if key in bounds and not _fits(value, bounds[key]):
                    shown = repr(value)
                    shown = shown if len(shown) <= 80 else shown[:77] + "..."
                    raise ValueError(f"{arg}: {where}: {here!r} must be {bounds[key].describe()}, got {shown}")
                walk(value, here, depth + 1)
        elif isinstance(node, list):
            if len(node) > _MAX_LIST:
                raise ValueError(f"{arg}: {where}: {path or 'top'!r} has {len(node)} items (at most {_MAX_LIST})")
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]", depth + 1)

    walk(config, "", 0)
    return config


def _root(folder: Path) -> Path:
    """The folder symlinks may point into: ``folder`` itself, or for a Hugging Face hub snapshot
    (``.../models--owner--name/snapshots/<rev>``, whose files link to ``../../blobs``) the repository's
    cache folder."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(("models--", "datasets--")):
        return folder.parent.parent
    return folder


def inside(folder: str | os.PathLike, relative: str | os.PathLike, *,
           arg: str = "pretrained_model_name_or_path") -> Path:
    """``folder / relative``, refused (ValueError) when it leaves ``folder``: an absolute path, ``..``,
    or a symlink (of the file or of a folder on the way) that resolves outside it. Hub snapshots may
    link into their own cache (see `_root`). The returned path need not exist."""
    folder = Path(folder)
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{arg}: {str(relative)!r} points outside the folder {folder}")
    path = folder / rel
    root = _root(folder)
    if (path.exists() or path.is_symlink()) and not path.resolve().is_relative_to(root):
        raise ValueError(f"{arg}: {path} is a link outside the folder {folder} (to {path.resolve()}); refused")
    return path


def read_json(file: str | os.PathLike, *, arg: str = "pretrained_model_name_or_path",
              max_bytes: int = MAX_CONFIG_BYTES, allow_nan: bool = False) -> Any:
    """Parse a JSON file safely: a regular file of at most ``max_bytes``, UTF-8, strict JSON (no NaN or
    Infinity unless ``allow_nan``, e.g. for a saved learning curve; no number that overflows a float;
    not nested too deep).

    Raises:
        FileNotFoundError: no such file (or not a regular file). ValueError: too large, not UTF-8, not
        JSON; every message names ``arg`` and the file.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{arg}: no file {file}" + (" (not a regular file)" if file.exists() else ""))
    size = file.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{arg}: corrupt config {file}: {size} bytes, a config may have at most {max_bytes} "
                         "(refused unread)")

    def constant(text: str):
        raise ValueError(f"{text} is not allowed")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) and not allow_nan:
            raise ValueError(f"number {text[:20]} overflows a float")
        return value

    try:
        with open(file, "rb") as fh:
            data = fh.read(max_bytes + 1)
        return json.loads(data.decode("utf-8"), parse_float=number,
                          **({} if allow_nan else {"parse_constant": constant}))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{arg}: corrupt config {file}: not strict JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc


def read_config(folder: str | os.PathLike, name: str = "config.json", bounds: Mapping[str, Bound] | None = None,
                *, arg: str = "pretrained_model_name_or_path", max_bytes: int = MAX_CONFIG_BYTES,
                allow_nan: bool = False) -> dict[str, Any]:
    """The JSON object in ``folder / name``, checked before anything is built from it.

    In order: the file stays inside ``folder`` (`inside`: no symlink out), is a regular file of at most
    ``max_bytes`` bytes, parses as strict JSON (`read_json`; NaN / Infinity only with ``allow_nan``), is an object, and every key of ``bounds``
    holds what its `Bound` allows (`check_config`). Nothing is allocated from an unchecked size.

    Raises:
        FileNotFoundError: no such file. ValueError: everything else (named: ``arg``, the file, the key).
    """
    file = inside(folder, name, arg=arg)
    return check_config(read_json(file, arg=arg, max_bytes=max_bytes, allow_nan=allow_nan), bounds, str(file),
                        arg=arg)


def _channels(high: int = 16384) -> Bound:
    return Bound("ints", 0, high, max_len=64)


#: Sanity bounds of the sizes in diffusers / transformers component configs (UNets, DiTs, VAEs, CLIP /
#: T5 text encoders, schedulers). Generous: the largest released models (SDXL, SD3.5 Large, Flux,
#: T5-XXL) are far inside; a width of 10**9 or a million blocks is not.
DIFFUSERS_BOUNDS: dict[str, Bound] = {
    "in_channels": Bound("int", 1, 4096), "out_channels": Bound("int", 1, 4096),
    "latent_channels": Bound("int", 1, 4096), "block_out_channels": _channels(),
    "layers_per_block": Bound("ints", 0, 64, max_len=64), "transformer_layers_per_block": Bound("ints", 0, 128),
    "reverse_transformer_layers_per_block": Bound("ints", 0, 128),
    "down_block_types": Bound("strs", max_len=16), "up_block_types": Bound("strs", max_len=16),
    "cross_attention_dim": Bound("ints", 1, 16384, max_len=64), "attention_head_dim": Bound("ints", 1, 4096),
    "num_attention_heads": Bound("ints", 1, 1024), "norm_num_groups": Bound("int", 1, 4096),
    "sample_size": Bound("ints", 1, 16384, max_len=2), "patch_size": Bound("int", 1, 64),
    "num_layers": Bound("int", 0, 1024), "num_single_layers": Bound("int", 0, 1024),
    "num_decoder_layers": Bound("int", 0, 1024),
    "joint_attention_dim": Bound("int", 1, 65536), "caption_projection_dim": Bound("int", 1, 65536),
    "pooled_projection_dim": Bound("int", 1, 65536), "caption_channels": Bound("int", 1, 65536),
    "addition_time_embed_dim": Bound("int", 1, 65536), "projection_class_embeddings_input_dim": Bound("int", 1, 1 << 20),
    "encoder_hid_dim": Bound("int", 1, 65536), "time_embedding_dim": Bound("int", 1, 65536),
    "num_embeds_ada_norm": Bound("int", 1, 1 << 20), "num_class_embeds": Bound("int", 1, 1 << 20),
    "hidden_size": Bound("int", 1, 65536), "intermediate_size": Bound("int", 1, 1 << 20),
    "num_hidden_layers": Bound("int", 1, 1024), "num_key_value_heads": Bound("int", 1, 1024),
    "num_heads": Bound("int", 1, 1024),
    "vocab_size": Bound("int", 1, 1 << 22), "max_position_embeddings": Bound("int", 1, 1 << 22),
    "projection_dim": Bound("int", 1, 65536), "d_model": Bound("int", 1, 65536), "d_ff": Bound("int", 1, 1 << 20),
    "d_kv": Bound("int", 1, 65536), "relative_attention_num_buckets": Bound("int", 1, 1 << 16),
    "num_train_timesteps": Bound("int", 1, 1 << 20),
}

#: Config files a diffusers component folder may hold (read by `check_pipeline_folder`).
_COMPONENT_CONFIGS = ("config.json", "scheduler_config.json")


def check_pipeline_folder(folder: str | os.PathLike, *, arg: str = "name_or_path",
                          bounds: Mapping[str, Bound] = DIFFUSERS_BOUNDS, require_index: bool = True) -> dict[str, Any]:
    """Check a local diffusers pipeline folder before diffusers reads it; returns ``model_index.json``.

    No file or folder in it may be a symlink that leaves it (hub snapshots may link into their own
    cache), ``model_index.json`` and every component's ``config.json`` / ``scheduler_config.json`` must be
    JSON objects of at most `MAX_CONFIG_BYTES` (components may hold ``Infinity``, as diffusers writes it), and every size in them within ``bounds``
    (`DIFFUSERS_BOUNDS`): absurd sizes are refused here, before any weight is allocated.
    Raises ValueError / FileNotFoundError naming ``arg``. With ``require_index=False`` a folder without
    ``model_index.json`` passes (returns ``{}``): the caller reports the missing files its own way.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{arg}: {folder} is not a folder")
    root = _root(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        for entry in dirnames + filenames:
            p = Path(dirpath) / entry
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                raise ValueError(f"{arg}: {p} is a link outside the folder {folder} (to {p.resolve()}); refused")
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    if not require_index and not (folder / "model_index.json").exists():
        return {}
    index = read_config(folder, "model_index.json", arg=arg)
    for key, value in index.items():
        if key.startswith("_") or not (isinstance(value, list) and len(value) == 2 and value[0]):
            continue
        if not isinstance(key, str) or not key.replace("_", "").isalnum():
            raise ValueError(f"{arg}: {folder / 'model_index.json'} names a component {key!r} that is not a folder name")
        for name in _COMPONENT_CONFIGS:
            if (folder / key / name).exists():  # diffusers writes inf for some scheduler fields: allowed
                read_config(folder / key, name, bounds, arg=arg, allow_nan=True)
    return index


# ============================================================================ outputs
def check_output_path(path: str | os.PathLike, name: str, *, folder: bool = False) -> Path:
    """Make sure an output can be written *before* the work that produces it: the folder (``folder=True``)
    or the file's parent folder is created if missing and must be writable; a file in the way of a folder,
    or a folder in the way of the file, is refused.

    Raises:
        TypeError: not a path. ValueError: something blocks the path, or it is not writable (named ``name``).
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"{name}: expected a path, got {type(path).__name__}")
    p = Path(path).expanduser()
    target = p if folder else p.parent
    if not folder and p.is_dir():
        raise ValueError(f"{name}: {p} is a folder; expected a file path")
    for parent in [target, *target.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{name}: cannot write under {p}: {parent} is a file, not a folder")
            break
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{name}: cannot create the folder {target}: {exc.strerror or exc}") from exc
    if not os.access(target, os.W_OK | os.X_OK) or (p.exists() and not folder and not os.access(p, os.W_OK)):
        raise ValueError(f"{name}: {p if p.exists() else target} is not writable")
    return p
