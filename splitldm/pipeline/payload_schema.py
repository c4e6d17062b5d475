"""The schema of a `SplitPipeline` payload: what the UE accepts before anything runs on it.

A payload's bytes are checked for integrity by `splitldm.link.payload.Payload.from_bytes` (CRC32);
this module checks what they *say*. Everything the device reads from ``payload.meta`` and
``payload.tensors`` is checked here first, against fixed types and ranges and against the receiving
pipeline (its family, its scheduler, its size rules), so a malformed or tampered payload raises a
`PayloadError` (a ValueError) naming the field, never a KeyError / AttributeError from inside the
library and never a silently different image. Three entry points, one per moment of `SplitPipeline._unpack`:

* `check_split_payload(payload, pipe, handoff=...)`: the metadata and tensors, before anything is
  built: ``kind``, ``family``, the required keys and their types, ``step <= num_steps``, a
  ``next_timestep`` that is ``-1`` exactly when the generation is finished, ``settings`` (every field
  of `GenerationSettings`, typed, in range and valid for this pipeline's family), ``scheduler_state``
  (the packed structure, every tensor it names present, numbers finite and non-negative,
  ``_step_index == step``), ``generator`` (devices, counts, seeds, state tensors of the exact size
  and content a generator accepts), ``cond_dtypes``, ``carry``; every floating tensor finite; no
  channel symbols left.
* `apply_scheduler_state(scheduler, state, latent_shape)`: the received scheduler state is applied
  only to attributes the scheduler class is known to carry (`scheduler_attributes`: derived from the
  class's own source, never ``setattr`` of whatever the payload names). The schedule itself (what the
  class sets up: ``timesteps``, ``sigmas``, ...; and the arrays it only moves between devices while
  stepping, ``alphas_cumprod``) must equal this device's own values; what the class changes while
  stepping (``_step_index``, ``model_outputs``, ``ets``, ...) must be the fresh scheduler's kind of
  value: ints in ``[0, len(timesteps)]``, finite non-negative floats, finite tensors of the latents'
  shape (or the fresh value's shape), lists of the fresh length.
* `check_resumed_schedule(meta, state)`: after the device rebuilt its schedule, ``next_timestep`` must
  be this schedule's timestep at ``step`` (exact mode).

Bounds checked before anything is allocated: `MAX_BATCH` images, `MAX_SIDE` pixels a side,
``num_inference_steps`` at most the scheduler's ``num_train_timesteps`` (1000 for every shipped model),
`MAX_DEPTH` levels and `MAX_ITEMS` entries in the packed scheduler state.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
from typing import Any

import numpy as np
import torch

from splitldm.link.payload import Payload, PayloadError
from splitldm.pipeline.families import family_of

__all__ = ["check_split_payload", "apply_scheduler_state", "check_resumed_schedule", "scheduler_attributes",
           "SETTINGS_FIELDS", "MAX_BATCH", "MAX_SIDE"]

KIND = "splitldm.split"
CONDITIONS = ("prompt", "embeddings")
#: The fields of `splitldm.pipeline.sampling.GenerationSettings`, as they travel (tests check they agree).
SETTINGS_FIELDS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "guidance_rescale",
                   "eta", "num_images_per_prompt", "height", "width", "options")
#: Largest batch (prompts x images per prompt) a payload may describe.
MAX_BATCH = 1024
#: Largest image side in pixels a payload may describe.
MAX_SIDE = 16384
#: Nesting depth and total entries allowed in the packed scheduler state.
MAX_DEPTH = 8
MAX_ITEMS = 10_000
#: Latent dtypes a payload may name.
LATENT_DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Wire dtypes of integer conditioning tensors (attention masks) a payload may name in ``cond_dtypes``.
MASK_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64")
#: Required metadata keys: both modes / exact mode only.
_REQUIRED = ("kind", "family", "model", "latent_space", "next_timestep", "scheduler", "scheduler_state", "step",
             "num_steps", "condition", "settings", "dtype")
#: Scheduler methods that only set the scheduler up (what they assign is the schedule, never resumed state).
_SETUP_METHODS = frozenset({"__init__", "set_timesteps", "set_shift", "set_sigmas"})
_NOT_STATE = frozenset({"config", "_internal_dict"})
_MISSING = object()


def _fail(field: str, message: str) -> PayloadError:
    return PayloadError(f"payload: {field}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_in(value: Any, field: str, low: int, high: int) -> int:
    if not _is_int(value):
        raise _fail(field, f"expected an int in [{low}, {high}], got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise _fail(field, f"expected an int in [{low}, {high}], got {value}")
    return value


def _finite(value: Any, field: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise _fail(field, f"expected a finite number, got {value!r}")
    return float(value)


def _str(value: Any, field: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise _fail(field, f"expected a str of at most {max_len} characters, got {type(value).__name__}")
    return value


def _max_steps(pipe) -> int:
    n_train = pipe.scheduler.config.get("num_train_timesteps", 1000)
    return n_train if _is_int(n_train) and n_train > 0 else 1000


# ------------------------------------------------------------------------------ the whole payload
def check_split_payload(payload: Payload, pipe, *, handoff: bool = False) -> None:
    """Check a received `SplitPipeline` payload against the schema and the receiving ``pipe``.

    ``handoff``: the device continues with its own model and schedule (``device_steps`` is set): the
    scheduler state is not used then and ``carry`` is refused by the caller. Raises `PayloadError`
    naming the field (``payload: meta['settings']['height']: ...``); returns None when it fits.
    """
    if not isinstance(payload, Payload):
        raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
    meta, tensors = payload.meta, payload.tensors
    family = family_of(pipe)
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise PayloadError(f"payload: not a SplitPipeline payload (meta['kind'] missing or not {KIND!r})")
    if meta.get("family", "sd") != family.name:
        raise PayloadError(f"payload: meta['family']: made by a {meta.get('family')!r} pipeline, this device runs "
                           f"{family.name}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise PayloadError(f"payload: incomplete (meta keys {missing} missing)")
    for key in ("model", "latent_space", "scheduler"):
        _str(meta[key], f"meta[{key!r}]")
    if meta["dtype"] not in LATENT_DTYPES:
        raise _fail("meta['dtype']", f"expected one of {LATENT_DTYPES}, got {meta['dtype']!r}")
    if meta["condition"] not in CONDITIONS:
        raise _fail("meta['condition']", f"expected one of {CONDITIONS}, got {meta['condition']!r}")
    n_max = _max_steps(pipe)
    num_steps = _int_in(meta["num_steps"], "meta['num_steps']", 1, 4 * n_max)
    step = _int_in(meta["step"], "meta['step']", 0, num_steps)
    _check_next_timestep(meta, step, num_steps, n_max)
    batch = _check_settings(meta["settings"], pipe, family, n_max)
    _check_tensors(tensors, meta)
    _check_cond_dtypes(meta, tensors)
    _check_packed(meta["scheduler_state"], tensors, "meta['scheduler_state']", top=True)
    if not handoff:
        fields = meta["scheduler_state"]["__dict__"]
        if "_step_index" in fields and fields["_step_index"] is not None and fields["_step_index"] != step:
            raise _fail("meta['scheduler_state']['_step_index']", f"{fields['_step_index']!r} does not match "
                        f"meta['step'] = {step}")
    if "generator" in meta:
        _check_generator(meta["generator"], tensors, batch)
    if "carry" in meta and not handoff:
        _check_carry(meta["carry"], tensors, family, pipe)


def _check_next_timestep(meta: dict[str, Any], step: int, num_steps: int, n_max: int) -> None:
    t = meta["next_timestep"]
    _finite(t, "meta['next_timestep']")
    if step == num_steps:
        if t != -1:
            raise _fail("meta['next_timestep']", f"the generation is finished (step {step} of {num_steps}), "
                        f"expected -1, got {t!r}")
    elif not 0 <= t <= n_max:
        what = "looks finished (-1)" if t == -1 else "is out of range"
        raise _fail("meta['next_timestep']", f"{t!r} {what} but step {step} of {num_steps} remains to run "
                    f"(expected a timestep in [0, {n_max}])")
    if "next_sigma" in meta:
        sigma = _finite(meta["next_sigma"], "meta['next_sigma']")
        if not 0 < sigma <= 1 or step == num_steps:
            raise _fail("meta['next_sigma']", f"expected a sigma in (0, 1] before the last step, got {sigma!r}")


def _check_settings(settings: Any, pipe, family, n_max: int) -> int:
    """The generation settings, field by field (as `make_settings` builds them); returns the batch size."""
    where = "meta['settings']"
    if not isinstance(settings, dict):
        raise _fail(where, f"expected a dict of generation settings, got {type(settings).__name__}")
    missing = [k for k in SETTINGS_FIELDS if k not in settings]
    unknown = sorted(set(settings) - set(SETTINGS_FIELDS))
    if missing or unknown:
        raise _fail(where, f"fields {missing} missing" if missing else f"unknown fields {unknown}")
    prompt = settings["prompt"]
    if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_BATCH or \
            not all(isinstance(p, str) for p in prompt):
        raise _fail(f"{where}['prompt']", f"expected a list of 1 to {MAX_BATCH} str")
    negative = settings["negative_prompt"]
    if negative is not None and (not isinstance(negative, list) or len(negative) != len(prompt)
                                 or not all(isinstance(p, str) for p in negative)):
        raise _fail(f"{where}['negative_prompt']", f"expected None or a list of {len(prompt)} str")
    _int_in(settings["num_inference_steps"], f"{where}['num_inference_steps']", 1, n_max)
    per_prompt = _int_in(settings["num_images_per_prompt"], f"{where}['num_images_per_prompt']", 1, MAX_BATCH)
    if len(prompt) * per_prompt > MAX_BATCH:
        raise _fail(f"{where}['num_images_per_prompt']", f"{len(prompt)} prompts x {per_prompt} images exceed "
                    f"{MAX_BATCH} images")
    for name in ("guidance_scale", "guidance_rescale", "eta"):
        value = _finite(settings[name], f"{where}[{name!r}]")
        if name != "guidance_scale" and value and name not in family.supports:
            raise _fail(f"{where}[{name!r}]", f"a {family.name} pipeline does not use it; expected 0, got {value!r}")
    multiple = family.size_multiple(pipe)
    for name in ("height", "width"):
        value = _int_in(settings[name], f"{where}[{name!r}]", multiple, MAX_SIDE)
        if value % multiple:
            raise _fail(f"{where}[{name!r}]", f"expected a multiple of {multiple}, got {value}")
    options = settings["options"]
    if not isinstance(options, dict) or set(options) != set(family.options):
        raise _fail(f"{where}['options']", f"expected the {family.name} options {sorted(family.options)}, got "
                    f"{sorted(options) if isinstance(options, dict) else type(options).__name__}")
    try:
        checked = family.check_options(pipe, dict(options))
    except (TypeError, ValueError) as exc:
        raise _fail(f"{where}['options']", str(exc)) from None
    canonical = {k: list(v) if isinstance(v, tuple) else v for k, v in checked.items()}
    if canonical != options:
        bad = sorted(k for k in options if canonical.get(k) != options[k])
        raise _fail(f"{where}['options']", f"{bad} are not in the form this device's {family.name} pipeline uses")
    return len(prompt) * per_prompt


def _check_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    latents = tensors.get("latents")
    if latents is None:
        raise PayloadError("payload: incomplete ('latents' missing)")
    if latents.is_complex() or not latents.is_floating_point() or latents.dim() < 3:
        raise _fail("tensors['latents']", f"expected real floating latents (B, ...), got {latents.dtype} "
                    f"{tuple(latents.shape)}")
    for name, value in tensors.items():
        if value.is_complex():
            raise _fail(f"tensors[{name!r}]", "channel symbols reached the device: a link stage did not decode them")
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            raise _fail(f"tensors[{name!r}]", "contains NaN or inf")


def _check_cond_dtypes(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    if "cond_dtypes" not in meta:
        return
    wire = meta["cond_dtypes"]
    if not isinstance(wire, dict):
        raise _fail("meta['cond_dtypes']", f"expected a dict, got {type(wire).__name__}")
    for name, dtype in wire.items():
        if name not in tensors or name == "latents" or name.startswith(("scheduler.", "generator.", "carry.")):
            raise _fail(f"meta['cond_dtypes'][{name!r}]", "names no conditioning tensor of the payload")
        if dtype not in MASK_DTYPES:
            raise _fail(f"meta['cond_dtypes'][{name!r}]", f"expected one of {MASK_DTYPES}, got {dtype!r}")


def _check_packed(value: Any, tensors: dict[str, torch.Tensor], where: str, top: bool = False,
                  depth: int = 0, budget: list[int] | None = None) -> None:
    """The structure `splitldm.pipeline.sampling.pack_value` writes: every marker well formed, every
    tensor it names present, numbers finite and non-negative, bounded depth and size."""
    budget = [MAX_ITEMS] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise _fail(where, f"scheduler state too large (more than {MAX_ITEMS} entries or {MAX_DEPTH} levels)")
    if top and not (isinstance(value, dict) and set(value) == {"__dict__"} and isinstance(value["__dict__"], dict)):
        raise _fail(where, "expected {'__dict__': {attribute: value}}")
    if isinstance(value, dict):
        if set(value) in ({"__tensor__"}, {"__ndarray__"}):
            name = next(iter(value.values()))
            if not isinstance(name, str) or name not in tensors:
                raise _fail(where, f"names tensor {name!r}, which the payload does not hold")
            return
        if set(value) == {"__dict__"} and isinstance(value["__dict__"], dict):
            for key, item in value["__dict__"].items():
                _check_packed(item, tensors, f"{where}[{key!r}]", depth=depth + 1, budget=budget)
            return
        if set(value) == {"__seq__", "tuple"} and isinstance(value["__seq__"], list) and \
                isinstance(value["tuple"], bool):
            for i, item in enumerate(value["__seq__"]):
                _check_packed(item, tensors, f"{where}[{i}]", depth=depth + 1, budget=budget)
            return
        raise _fail(where, f"malformed packed value with keys {sorted(value)}")
    if value is None or isinstance(value, (bool, str)):
        return
    if _is_number(value):
        if not math.isfinite(value) or value < 0:
            raise _fail(where, f"expected a finite, non-negative number, got {value!r}")
        return
    raise _fail(where, f"unexpected {type(value).__name__}")


@functools.lru_cache(maxsize=8)
def _generator_state_size(device_type: str) -> int:
    return int(torch.Generator(device=device_type).get_state().numel())


def _check_generator(info: Any, tensors: dict[str, torch.Tensor], batch: int) -> None:
    where = "meta['generator']"
    if not isinstance(info, dict) or not {"devices", "list"} <= set(info) or set(info) - {"devices", "list", "seeds"}:
        raise _fail(where, "expected {'devices': [...], 'list': bool} (and optionally 'seeds')")
    devices, as_list = info["devices"], info["list"]
    if not isinstance(as_list, bool):
        raise _fail(f"{where}['list']", f"expected a bool, got {as_list!r}")
    count = batch if as_list else 1
    if not isinstance(devices, list) or len(devices) != count:
        raise _fail(f"{where}['devices']", f"expected a list of {count} device names "
                    f"({'one per image' if as_list else 'one generator'})")
    for i, name in enumerate(devices):
        try:
            device = torch.device(_str(name, f"{where}['devices'][{i}]", 32))
        except RuntimeError:
            raise _fail(f"{where}['devices'][{i}]", f"not a device name: {name!r}") from None
        if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
            raise _fail(f"{where}['devices'][{i}]", f"a generator on {name!r} cannot be rebuilt on this device")
    if "seeds" in info:
        seeds = info["seeds"]
        if not isinstance(seeds, list) or len(seeds) != count or \
                not all(_is_int(s) and 0 <= s < 2 ** 64 for s in seeds):
            raise _fail(f"{where}['seeds']", f"expected {count} ints in [0, 2**64)")
        return
    for i, name in enumerate(devices):
        key = f"generator.{i}"
        state = tensors.get(key)
        size = _generator_state_size(torch.device(name).type)
        if state is None:
            raise _fail(f"tensors[{key!r}]", "generator state missing")
        if state.dtype != torch.uint8 or state.dim() != 1 or state.numel() != size:
            raise _fail(f"tensors[{key!r}]", f"expected a uint8 generator state of {size} bytes, got "
                        f"{state.dtype} {tuple(state.shape)}")
        try:
            torch.Generator(device=name).set_state(state.cpu())
        except RuntimeError as exc:
            raise _fail(f"tensors[{key!r}]", f"not a valid generator state ({exc})") from None


def _check_carry(carry: Any, tensors: dict[str, torch.Tensor], family, pipe) -> None:
    where = "meta['carry']"
    chain = family.chain(pipe)
    if chain is None:
        raise _fail(where, f"a {family.name} denoiser cannot be resumed inside a pass on this device")
    if not isinstance(carry, dict) or set(carry) != {"stage", "layout"} or not isinstance(carry["layout"], dict):
        raise _fail(where, "expected {'stage': int, 'layout': {...}}")
    _int_in(carry["stage"], f"{where}['stage']", 1, len(chain) - 1)
    if "carry.hidden" not in tensors:
        raise _fail("tensors['carry.hidden']", "missing: a carry needs its hidden state")
    layout = carry["layout"]
    for key, value in layout.items():
        field = f"{where}['layout'][{key!r}]"
        if key == "num_skips":
            _int_in(value, field, 0, 256)
        elif key in ("last_skip_is_hidden", "forward_upsample_size"):
            if not isinstance(value, bool):
                raise _fail(field, f"expected a bool, got {value!r}")
        elif key == "size":
            if value is not None and not (isinstance(value, list) and len(value) == 2
                                          and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in value)):
                raise _fail(field, f"expected None or [h, w], got {value!r}")
        else:
            raise _fail(field, "unknown carry layout field")


# ------------------------------------------------------------------------------ the scheduler state
@functools.lru_cache(maxsize=64)
def scheduler_attributes(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """``(stepping, setup)``: the attributes instances of scheduler class ``cls`` carry, from its source.

    ``stepping``: assigned or mutated (``self.x = ``, ``self.x[i] = ``, ``self.x += ``,
    ``self.x.append(...)``) in some method other than the set-up ones (``__init__``,
    ``set_timesteps``, ...): the dynamic state a resumed generation needs. ``setup``: the others
    (the schedule itself). Read with `ast` from every class of ``cls``'s MRO whose source is available.
    """
    stepping: set[str] = set()
    setup: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            tree = ast.parse(inspect.getsource(klass).lstrip())
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            target = setup if node.name in _SETUP_METHODS else stepping
            for sub in ast.walk(node):
                target.update(_self_attributes(sub))
    return frozenset(stepping - _NOT_STATE), frozenset(setup - stepping - _NOT_STATE)


def _self_attr(node: ast.AST) -> str | None:
    """``x`` for ``self.x`` or ``self.x[...]``."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _self_attributes(node: ast.AST) -> list[str]:
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr in ("append", "extend", "insert", "pop", "clear", "remove"):
        targets = [node.func.value]
    names = []
    for target in targets:
        for part in (target.elts if isinstance(target, ast.Tuple) else [target]):
            name = _self_attr(part)
            if name is not None:
                names.append(name)
    return names


def apply_scheduler_state(scheduler, state: Any, latent_shape: tuple[int, ...] | None = None):
    """Apply a received scheduler ``state`` (attribute -> value) to a freshly set-up ``scheduler``.

    Only attributes of `scheduler_attributes` are set: a stepping attribute must hold the kind of value
    the fresh scheduler holds (see the module doc; tensors of ``latent_shape``, the latents' shape, or
    of the fresh value's shape); a set-up attribute must equal the fresh value. Anything else raises
    `PayloadError` naming ``meta['scheduler_state'][name]``. Returns ``scheduler``.
    """
    where = "meta['scheduler_state']"
    if not isinstance(state, dict):
        raise _fail(where, f"expected a dict of attributes, got {type(state).__name__}")
    stepping, setup = scheduler_attributes(type(scheduler))
    known = vars(scheduler)
    bound = len(getattr(scheduler, "timesteps", None) if getattr(scheduler, "timesteps", None) is not None else [])
    bound = max(bound, 1)
    cls_name = type(scheduler).__name__
    updates = {}
    for key, value in state.items():
        field = f"{where}[{key!r}]"
        if not isinstance(key, str) or key in _NOT_STATE or (key not in stepping and key not in setup
                                                              and key not in known):
            raise _fail(field, f"not an attribute a {cls_name} carries")
        fresh = known.get(key, _MISSING)
        if key not in stepping or isinstance(fresh, (torch.Tensor, np.ndarray)):  # the schedule (maybe moved)
            if not _same(value, fresh):
                raise _fail(field, f"is part of the schedule this device computes for {cls_name}; a payload may "
                            "not change it")
            continue
        _check_state_value(value, fresh, field, latent_shape, bound, depth=0)
        updates[key] = value
    _check_history(updates, known)
    for key, value in updates.items():
        setattr(scheduler, key, value)
    return scheduler


def _check_history(updates: dict[str, Any], known: dict[str, Any]) -> None:
    """Multistep history (DPM-Solver, UniPC): outputs fill a list from its end, and the solver order in
    use (``lower_order_nums``) never exceeds the outputs held."""
    for key in ("model_outputs", "timestep_list"):
        history = updates.get(key, known.get(key))
        if isinstance(history, (list, tuple)):
            filled = [item is not None for item in history]
            if filled != sorted(filled):
                raise _fail(f"meta['scheduler_state'][{key!r}]", "entries must fill the list from its end "
                            "(None only before the first value)")
    outputs = updates.get("model_outputs", known.get("model_outputs"))
    order = updates.get("lower_order_nums", known.get("lower_order_nums"))
    if _is_int(order) and isinstance(outputs, (list, tuple)) and order > sum(o is not None for o in outputs):
        raise _fail("meta['scheduler_state']['lower_order_nums']", f"{order} exceeds the "
                    f"{sum(o is not None for o in outputs)} model outputs the payload holds")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _check_state_value(value: Any, fresh: Any, field: str, latent_shape, bound: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _fail(field, "nested too deeply")
    proto = None if fresh is _MISSING else fresh
    if value is None:
        if proto is not None:
            raise _fail(field, f"expected {type(proto).__name__} (as a fresh scheduler holds), got None")
        return
    if isinstance(value, bool):
        if proto is not None and not isinstance(proto, bool):
            raise _fail(field, f"expected {type(proto).__name__}, got bool")
        return
    if _is_int(value):
        if proto is not None and not _is_number(proto):
            raise _fail(field, f"expected {type(proto).__name__}, got int")
        if not 0 <= value <= bound:
            raise _fail(field, f"expected an int in [0, {bound}] (the schedule's length), got {value}")
        return
    if isinstance(value, float):
        if proto is not None and not isinstance(proto, float):
            raise _fail(field, f"expected {type(proto).__name__}, got float")
        if not math.isfinite(value) or value < 0:
            raise _fail(field, f"expected a finite, non-negative number, got {value!r}")
        return
    if isinstance(value, torch.Tensor):
        if proto is not None and not isinstance(proto, torch.Tensor):
            raise _fail(field, f"expected {type(proto).__name__}, got a tensor")
        if isinstance(proto, torch.Tensor):
            if value.shape != proto.shape or value.dtype != proto.dtype:
                raise _fail(field, f"expected {proto.dtype} {tuple(proto.shape)}, got {value.dtype} {tuple(value.shape)}")
        elif not (value.is_floating_point() or value.dtype in (torch.int64, torch.int32)) or \
                (value.numel() > 1 and (latent_shape is None or tuple(value.shape) != tuple(latent_shape))):
            raise _fail(field, f"expected a tensor of the latents' shape {latent_shape} or a scalar, got "
                        f"{value.dtype} {tuple(value.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise _fail(field, "contains NaN or inf")
        return
    if isinstance(value, (list, tuple)):
        if proto is not None and not isinstance(proto, (list, tuple)):
            raise _fail(field, f"expected {type(proto).__name__}, got a sequence")
        if isinstance(proto, (list, tuple)) and proto and len(value) != len(proto):
            raise _fail(field, f"expected {len(proto)} entries, got {len(value)}")
        if len(value) > bound + 1:
            raise _fail(field, f"expected at most {bound + 1} entries, got {len(value)}")
        for i, item in enumerate(value):
            item_proto = proto[i] if isinstance(proto, (list, tuple)) and i < len(proto) else _MISSING
            _check_state_value(item, item_proto, f"{field}[{i}]", latent_shape, bound, depth + 1)
        return
    raise _fail(field, f"a {type(value).__name__} is not a value this scheduler attribute takes")


def check_resumed_schedule(meta: dict[str, Any], state) -> None:
    """After the device rebuilt the schedule: ``meta['next_timestep']`` must be its timestep at ``step``
    (``-1`` when finished), so a payload can neither skip nor repeat a step unnoticed."""
    step, timesteps = state.step, state.timesteps
    expected = -1.0 if step >= len(timesteps) else float(timesteps[step])
    got = float(meta["next_timestep"])
    if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-6):
        raise _fail("meta['next_timestep']", f"{meta['next_timestep']!r} is not this device's timestep at step "
                    f"{step} ({expected:g})")
