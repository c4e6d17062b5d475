"""The gymnasium registrations of every splitldm environment (the single place they happen) and
`make_env`, which builds one from a run config's ``env`` block.

| id | entry point | fixed kwargs |
|---|---|---|
| ``splitldm/MEGRates-v0`` | `splitldm.rl.envs.meg.MEGRates` | |
| ``splitldm/MEGRatesFlat-v0`` | `splitldm.rl.envs.meg.MEGRates` | ``flat=True`` |
| ``splitldm/SeedPower-v0`` | `splitldm.rl.envs.meg.SeedPower` | |
| ``splitldm/ChainPlacement-v0`` | `splitldm.rl.envs.placement.ChainPlacement` | |
| ``splitldm/ModelCaching-v0`` | `splitldm.rl.envs.caching.ModelCaching` | |
| ``splitldm/ResourceAllocation-v0`` | `splitldm.rl.envs.caching.ResourceAllocation` | |

Entry points are strings, so registering imports no environment module; `register_envs` runs once
when `splitldm.rl.envs` is first imported and is idempotent.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym

__all__ = ["ENV_IDS", "register_envs", "make_env"]

#: Registered id -> (entry point, fixed keyword arguments).
ENV_IDS: dict[str, tuple[str, dict[str, Any]]] = {
    "splitldm/MEGRates-v0": ("splitldm.rl.envs.meg:MEGRates", {}),
    "splitldm/MEGRatesFlat-v0": ("splitldm.rl.envs.meg:MEGRates", {"flat": True}),
    "splitldm/SeedPower-v0": ("splitldm.rl.envs.meg:SeedPower", {}),
    "splitldm/ChainPlacement-v0": ("splitldm.rl.envs.placement:ChainPlacement", {}),
    "splitldm/ModelCaching-v0": ("splitldm.rl.envs.caching:ModelCaching", {}),
    "splitldm/ResourceAllocation-v0": ("splitldm.rl.envs.caching:ResourceAllocation", {}),
}


def register_envs() -> None:
    """Register every id of `ENV_IDS` with gymnasium (ids already registered are left alone)."""
    for env_id, (entry, kwargs) in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, kwargs=dict(kwargs))


def make_env(env_cfg: Mapping[str, Any]) -> gym.Env:
    """The unwrapped environment of a run config's ``env`` block ``{"id": ..., "kwargs": {...}}``.

    Raises:
        TypeError: ``env_cfg`` is not a mapping or its ``kwargs`` is not one.
        ValueError: ``env_cfg["id"]`` is missing or not a registered id.
    """
    if not isinstance(env_cfg, Mapping):
        raise TypeError(f"env_cfg: expected a mapping with 'id' (and 'kwargs'), got {type(env_cfg).__name__}")
    env_id = env_cfg.get("id")
    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise ValueError(f"env_cfg: id {env_id!r} is not a registered environment; splitldm's are {sorted(ENV_IDS)}")
    kwargs = env_cfg.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"env_cfg: 'kwargs' must be a mapping, got {type(kwargs).__name__}")
    return gym.make(env_id, **dict(kwargs)).unwrapped
