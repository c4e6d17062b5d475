"""What every controller shares: the MLP builder, observation checks, seeding, and the one way to save
and load a policy (`PolicyMixin`: ``save_pretrained`` / ``from_pretrained``, the diffusers contract).

A saved policy is a folder::

    config.json           {"_class_name": "CVPO", "_splitldm_version": "0.2.0", <constructor arguments>}
    model.safetensors     every network's weights, keys "<network>.<parameter>" (float32)
    training_state.json   what training left besides weights (learning curve, Lagrange multipliers, ...)

Nothing is pickled: weights are safetensors, everything else JSON. A composite policy (`T2DRL`) writes
its ``config.json`` and one such folder per component. ``from_pretrained`` accepts a local folder, a
`splitldm.zoo` name, or (only when it is neither and ``HF_HUB_OFFLINE`` is unset) a Hugging Face hub
id, fetched with ``huggingface_hub.snapshot_download``. Folders written by the previous format
(``policy.json`` + ``policy.safetensors``) still load.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from splitldm import __version__, zoo
from splitldm.checks import Bound, inside
from splitldm.checks import read_config as read_checked_config

__all__ = ["PolicyMixin", "resolve_pretrained", "read_class_name", "CONFIG_NAME", "WEIGHTS_NAME", "STATE_NAME",
           "mlp", "check_obs", "seed_everything", "save_policy", "load_policy_files"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "training_state.json"
LEGACY_CONFIG_NAME = "policy.json"
LEGACY_WEIGHTS_NAME = "policy.safetensors"


def mlp(sizes: list[int], out_gain: float = 1.0) -> torch.nn.Sequential:
    """Tanh MLP with orthogonal init (CleanRL's recipe): (B, sizes[0]) -> (B, sizes[-1])."""
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = torch.nn.Linear(sizes[i], sizes[i + 1])
        torch.nn.init.orthogonal_(lin.weight, out_gain if i == len(sizes) - 2 else 2 ** 0.5)
        torch.nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def check_obs(obs, dim: int) -> torch.Tensor:
    """Observation(s) as a float32 tensor (B, dim); NaN / inf / wrong size -> ValueError."""
    x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"obs: expected shape ({dim},) or (B, {dim}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("obs: contains NaN or inf")
    return x


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- folders, zoo, hub

def resolve_pretrained(pretrained_model_name_or_path: str | os.PathLike) -> Path:
    """The local folder of a saved policy: a `splitldm.zoo` name, a local folder, or (``HF_HUB_OFFLINE``
    unset) the hub snapshot of that id, through the library's one resolver `splitldm.zoo.resolve_pretrained`.

    Raises:
        TypeError: not a str or path.
        FileNotFoundError: neither a zoo name nor a folder, and the hub is off or could not provide it.
    """
    return zoo.resolve_pretrained(pretrained_model_name_or_path, (), what="policy",
                                  files=f"{CONFIG_NAME} + {WEIGHTS_NAME}")


#: Sanity bounds of a policy's ``config.json`` / ``policy.json`` (wherever the keys appear: the
#: hyper-parameters nest under ``config``), checked before any network or buffer is allocated.
POLICY_BOUNDS: dict[str, Bound] = {
    "obs_dim": Bound("int", 1, 1 << 16), "n_actions": Bound("int", 1, 1 << 16), "act_dim": Bound("int", 1, 1 << 16),
    "n_users": Bound("int", 1, 4096), "hidden": Bound("int", 1, 8192), "embed": Bound("int", 1, 8192),
    "action_embed": Bound("int", 1, 8192), "steps": Bound("int", 1, 10_000), "denoise_steps": Bound("int", 1, 10_000),
    "stride": Bound("int", 0, 1 << 16), "active_stride": Bound("int", 0, 1 << 16),
    "buffer_size": Bound("int", 1, 10_000_000), "batch_size": Bound("int", 1, 1 << 20),
    "estep_batch": Bound("int", 1, 1 << 20), "minibatch": Bound("int", 1, 1 << 20), "rollout": Bound("int", 1, 1 << 24),
    "n_step": Bound("int", 1, 1000), "seed": Bound("int", 0, 2 ** 64 - 1),
}


#: Largest ``training_state.json`` / previous-format ``policy.json`` (they hold learning curves).
_MAX_STATE_BYTES = 64 << 20


def _read_json(d: Path, name: str, arg: str = "pretrained_model_name_or_path") -> dict[str, Any]:
    """A policy folder's JSON file, read by `splitldm.checks.read_config`: no symlink out of the folder,
    `POLICY_BOUNDS`; ``config.json`` strict JSON of at most 1 MiB, the files holding learning curves
    (``training_state.json``, ``policy.json``) up to 64 MiB and NaN allowed (a curve may hold NaN)."""
    if name == CONFIG_NAME:
        return read_checked_config(d, name, POLICY_BOUNDS, arg=arg)
    return read_checked_config(d, name, POLICY_BOUNDS, arg=arg, max_bytes=_MAX_STATE_BYTES, allow_nan=True)


def read_class_name(folder: str | os.PathLike) -> str:
    """The policy class saved in ``folder``: ``config.json``'s ``_class_name`` (or, for a folder of the
    previous format, the class of ``policy.json``'s ``algorithm``)."""
    d = Path(folder)
    if (d / CONFIG_NAME).exists():
        name = _read_json(d, CONFIG_NAME).get("_class_name")
        if not isinstance(name, str):
            raise ValueError(f"pretrained_model_name_or_path: {d / CONFIG_NAME} has no '_class_name'")
        return name
    if (d / LEGACY_CONFIG_NAME).exists():
        algo = _read_json(d, LEGACY_CONFIG_NAME).get("algorithm")
        if algo not in _LEGACY_CLASS:
            raise ValueError(f"pretrained_model_name_or_path: unknown algorithm {algo!r} in {d / LEGACY_CONFIG_NAME}")
        return _LEGACY_CLASS[algo]
    raise FileNotFoundError(f"pretrained_model_name_or_path: the directory {d} has no {CONFIG_NAME}")


#: ``algorithm`` tag of the previous format -> class name.
_LEGACY_CLASS = {"cvpo": "CVPO", "ppo": "PPO", "ppo_lagrangian": "PPOLagrangian", "d3ql": "D3QL", "ddqn": "DDQN",
                 "d3pg": "D3PG", "t2drl": "T2DRL"}


def _flatten(weights: Mapping[str, torch.nn.Module | torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        if isinstance(w, torch.nn.Module):
            out.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in w.state_dict().items()})
        else:
            out[name] = w.detach().cpu().contiguous()
    return out


def _unflatten(flat: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``{"actor.0.weight": t, "log_std": s}`` -> ``{"actor": {"0.weight": t}, "log_std": s}``."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if "." in k:
            name, rest = k.split(".", 1)
            out.setdefault(name, {})[rest] = v
        else:
            out[k] = v
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=float))


def _save_dir(save_directory) -> Path:
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"save_directory: expected a folder path, got {type(save_directory).__name__}")
    d = Path(save_directory).expanduser()
    if d.exists() and not d.is_dir():
        raise ValueError(f"save_directory: {d} is a file, expected a folder")
    d.mkdir(parents=True, exist_ok=True)
    return d


def config_header(obj: object) -> dict[str, str]:
    """The first keys of every ``config.json``: the class name and the splitldm version that wrote it."""
    return {"_class_name": type(obj).__name__, "_splitldm_version": __version__}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=3)


class PolicyMixin:
    """``save_pretrained`` / ``from_pretrained`` for a controller (the diffusers contract for an object
    that is not one ``nn.Module``), plus the deprecated ``save`` / ``load`` aliases.

    A subclass provides ``_init_config()`` (its constructor arguments, JSON), ``_from_init_config(cfg)``
    (the constructor call), ``_weights()`` (name -> module or tensor) and ``_training_state()`` (JSON),
    and restores them in ``_load_weights_and_state(weights, state)``.
    """

    algorithm: str = ""

    # --------------------------------------------------------------- to implement
    def _init_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_init_config(cls, config: Mapping[str, Any]):
        raise NotImplementedError

    def _weights(self) -> dict[str, torch.nn.Module | torch.Tensor]:
        raise NotImplementedError

    def _training_state(self) -> dict[str, Any]:
        return {}

    def _load_weights_and_state(self, weights: dict[str, Any], state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- the contract
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``training_state.json`` into
        ``save_directory`` (created if needed); returns the folder."""
        d = _save_dir(save_directory)
        _write_json(d / CONFIG_NAME, {**config_header(self), **self._init_config()})
        save_file(_flatten(self._weights()), str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        _write_json(d / STATE_NAME, self._training_state())
        logger.debug("saved %s to %s", type(self).__name__, d)
        return d

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike):
        """The policy saved by `save_pretrained` in a local folder, a zoo name, or a hub id (online only).

        Raises:
            FileNotFoundError: nothing to load (see `resolve_pretrained`), or a file missing.
            ValueError: the folder holds another class of policy.
        """
        d = resolve_pretrained(pretrained_model_name_or_path)
        config, weights, state = _read_folder(d, cls)
        agent = cls._from_init_config(config)
        agent._load_weights_and_state(weights, state)
        return agent

    # --------------------------------------------------------------- deprecated aliases (one release)
    def save(self, directory: str | os.PathLike) -> Path:
        """Deprecated alias of `save_pretrained`."""
        _deprecated(f"{type(self).__name__}.save", f"{type(self).__name__}.save_pretrained")
        return self.save_pretrained(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike):
        """Deprecated alias of `from_pretrained`."""
        _deprecated(f"{cls.__name__}.load", f"{cls.__name__}.from_pretrained")
        return cls.from_pretrained(directory)


def _check_class(d: Path, found: str, cls: type) -> None:
    if found != cls.__name__:
        want = getattr(cls, "algorithm", "") or cls.__name__
        raise ValueError(f"pretrained_model_name_or_path: the directory {d} holds a {found} policy, "
                         f"not a {cls.__name__} one ({want!r})")


def read_config(d: Path, cls: type) -> dict[str, Any] | None:
    """``config.json`` of folder ``d`` checked to be a ``cls`` policy; None for a previous-format folder."""
    if not (d / CONFIG_NAME).exists():
        if (d / LEGACY_CONFIG_NAME).exists():
            return None
        raise FileNotFoundError(f"pretrained_model_name_or_path: the directory {d} has no {CONFIG_NAME}")
    config = _read_json(d, CONFIG_NAME)
    _check_class(d, read_class_name(d), cls)
    return config


def _read_folder(d: Path, cls: type) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(constructor config, weights by network, training state) of folder ``d``, either format."""
    config = read_config(d, cls)
    if config is None:  # previous format: policy.json holds config and state, policy.safetensors the weights
        weights, meta = _load_legacy(d, getattr(cls, "algorithm", ""))
        return meta, weights, meta
    if not (d / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"pretrained_model_name_or_path: the directory {d} has no {WEIGHTS_NAME}")
    state = _read_json(d, STATE_NAME) if (d / STATE_NAME).exists() else {}
    return config, _unflatten(_load_safetensors(d, WEIGHTS_NAME)), state


# ---------------------------------------------------------------------------- previous format

def _load_legacy(directory: str | Path, algorithm: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    d = Path(directory)
    for f in (LEGACY_WEIGHTS_NAME, LEGACY_CONFIG_NAME):
        if not (d / f).exists():
            raise FileNotFoundError(f"directory: {d} has no {f}")
    config = _read_json(d, LEGACY_CONFIG_NAME, arg="directory")
    if config.get("algorithm") != algorithm:
        raise ValueError(f"directory: {d} holds a {config.get('algorithm')!r} policy, not {algorithm!r}")
    return _unflatten(_load_safetensors(d, LEGACY_WEIGHTS_NAME, arg="directory")), config


def _load_safetensors(d: Path, name: str, arg: str = "pretrained_model_name_or_path") -> dict[str, torch.Tensor]:
    """The tensors of ``d / name`` (no symlink out of ``d``); a corrupt file is a ValueError naming ``arg``."""
    from safetensors import SafetensorError

    file = inside(d, name, arg=arg)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{arg}: corrupt weights file {file}: {exc}") from exc


def save_policy(directory: str | Path, modules: dict[str, torch.nn.Module], config: dict[str, Any]) -> Path:
    """Deprecated (previous format): ``directory/policy.safetensors`` (all modules' weights, prefixed by
    name) + ``policy.json``. Use the policy's ``save_pretrained``."""
    _deprecated("save_policy", "the policy's save_pretrained")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(_flatten(modules), str(d / LEGACY_WEIGHTS_NAME))
    (d / LEGACY_CONFIG_NAME).write_text(json.dumps(config, indent=1, default=float))
    return d


def load_policy_files(directory: str | Path, algorithm: str
                      ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Deprecated (previous format): (weights by module name, config) saved by `save_policy`; checks the
    algorithm matches. Use the policy class's ``from_pretrained``."""
    _deprecated("load_policy_files", "the policy class's from_pretrained")
    return _load_legacy(directory, algorithm)
