"""T2DRL: the two timescales trained in turn, DDQN caching on top of D3PG allocation.

1. Short timescale: `D3PG` learns the per-slot compute / bandwidth shares on `ResourceAllocation`,
   whose cache is chosen every frame by LFU or (with probability ``random_cache``) a random subset
   that fits, so the allocator sees every kind of cache. Defaults here: the actor's active-user
   mask, the per-user critic (`splitldm.rl.agents.d3pg.UserCritic`), hidden width 64.
2. Long timescale: `DDQN` learns the per-frame cache on `ModelCaching` whose slots are served by
   the trained D3PG actor.

``agent.act(obs, mask)`` is the caching decision; ``agent.allocator`` the slot policy to pass as
``ModelCaching(allocator=...)`` (`splitldm.rl.evaluate.evaluate_caching` does it).

Saved (`save_pretrained`) as a folder with ``config.json`` (class name, `T2DRLConfig`, the
environment's keyword arguments) and one `save_pretrained` folder per component: ``ddqn/``, ``d3pg/``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitldm import checks
from splitldm.rl.agents.common import (
    CONFIG_NAME, PolicyMixin, _save_dir, _write_json, config_header, read_config, resolve_pretrained,
)
from splitldm.rl.agents.d3pg import D3PG, D3PGConfig
from splitldm.rl.agents.ddqn import DDQN, DDQNConfig
from splitldm.rl.envs.caching import ModelCaching, ResourceAllocation
from splitldm.rl.oracles.caching import lfu_cache

__all__ = ["T2DRL", "T2DRLConfig"]

logger = logging.getLogger(__name__)


@dataclass
class T2DRLConfig:
    total_steps: int = 20_000        # D3PG slots
    caching_steps: int = 3_000       # DDQN frames
    random_cache: float = 0.5        # share of frames with a random cache while D3PG trains
    d3pg: dict | None = None         # other D3PGConfig fields
    ddqn: dict | None = None         # other DDQNConfig fields
    seed: int = 0


class T2DRL(PolicyMixin):
    """A trained (DDQN cacher, D3PG allocator) pair; `act`, `allocator`, `train_on`, `save_pretrained`,
    `from_pretrained`."""

    algorithm = "t2drl"

    def __init__(self, ddqn: DDQN, d3pg: D3PG, config: T2DRLConfig, env_kwargs: dict[str, Any]):
        self.ddqn, self.d3pg, self.cfg, self.env_kwargs = ddqn, d3pg, config, dict(env_kwargs)
        self.history = {"step": ddqn.history["step"], "episode": ddqn.history["episode"],
                        "episode_reward": ddqn.history["episode_reward"],
                        "allocation_episode_reward": d3pg.history["episode_reward"]}

    def act(self, obs, mask=None) -> int:
        return self.ddqn.act(obs, mask)

    def allocator(self, obs, env) -> np.ndarray:
        return self.d3pg.act(obs)

    def cacher(self, obs, env) -> int:
        return self.ddqn.act(obs, getattr(env, "unwrapped", env).action_mask())

    @classmethod
    def train_on(cls, env: ModelCaching, config: T2DRLConfig | None = None, log=None) -> "T2DRL":
        log = log or logger.info  # progress lines (None: this module's logger, INFO)
        env = getattr(env, "unwrapped", env)
        if not isinstance(env, ModelCaching):
            raise TypeError(f"env: T2DRL trains on a ModelCaching environment, got {type(env).__name__}")
        cfg = config or T2DRLConfig()
        if not 0 <= cfg.random_cache <= 1:
            raise ValueError(f"random_cache: expected a probability in [0, 1], got {cfg.random_cache!r}")
        kwargs = getattr(env, "init_kwargs", {})
        rng = np.random.default_rng(cfg.seed)

        def mixed_cacher(obs, core):
            return int(rng.integers(len(core.subsets))) if rng.random() < cfg.random_cache else lfu_cache(obs, core)

        t0 = time.time()
        slot_env = ResourceAllocation(cacher=mixed_cacher, **kwargs)
        # the slot observation is 6 features per user slot, the last one "active"
        # per-user critic (the slot reward is a sum over users), hidden 64 to train in minutes on one core
        d3pg = D3PG.train_on(slot_env, D3PGConfig(**{"total_steps": cfg.total_steps, "seed": cfg.seed, "active_stride": 6,
                                                     "critic": "users", "hidden": 64, **(cfg.d3pg or {})}),
                             log=log)
        if log:
            log(f"t2drl: D3PG trained in {time.time() - t0:.0f} s")
        saved = env.allocator
        env.allocator = lambda obs, e: d3pg.act(obs)
        try:
            ddqn = DDQN.train_on(env, DDQNConfig(**{"total_steps": cfg.caching_steps, "seed": cfg.seed,
                                                    **(cfg.ddqn or {})}), log=log)
        finally:
            env.allocator = saved
        return cls(ddqn, d3pg, cfg, kwargs)

    # ------------------------------------------------------------------ io
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """``config.json`` + ``ddqn/`` and ``d3pg/`` (each a `save_pretrained` folder); returns the folder."""
        d = _save_dir(save_directory)
        self.ddqn.save_pretrained(d / "ddqn")
        self.d3pg.save_pretrained(d / "d3pg")
        components = {"ddqn": type(self.ddqn).__name__, "d3pg": type(self.d3pg).__name__}
        _write_json(d / CONFIG_NAME, {**config_header(self), "config": asdict(self.cfg),
                                      "env_kwargs": _jsonable(self.env_kwargs), "components": components})
        return d

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike) -> "T2DRL":
        """The pair saved by `save_pretrained` (or by the previous format's ``save``) in a local folder, a
        zoo name, or a hub id (online only)."""
        d = resolve_pretrained(pretrained_model_name_or_path)
        meta = read_config(d, cls)
        if meta is None:  # previous format: policy.json
            meta = checks.read_config(d, "policy.json")  # bounded, strict JSON, no symlink out
            if meta.get("algorithm") != cls.algorithm:
                raise ValueError(f"directory: {d} holds a {meta.get('algorithm')!r} policy, not {cls.algorithm!r}")
        return cls(DDQN.from_pretrained(d / "ddqn"), D3PG.from_pretrained(d / "d3pg"), T2DRLConfig(**meta["config"]),
                   meta["env_kwargs"])


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Environment keyword arguments as JSON (objects such as `ChannelParams` as their repr, as before)."""
    return json.loads(json.dumps(kwargs, default=str))
