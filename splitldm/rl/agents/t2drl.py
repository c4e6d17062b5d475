"""T2DRL: the two timescales trained in turn, DDQN caching on top of D3PG allocation.

1. Short timescale: `D3PG` learns the per-slot compute / bandwidth shares on `ResourceAllocation`,
   whose cache is chosen every frame by LFU or (with probability ``random_cache``) a random subset
   that fits, so the allocator sees every kind of cache. Defaults here: the actor's active-user
   mask, the per-user critic (`splitldm.rl.agents.d3pg.UserCritic`), hidden width 64.
2. Long timescale: `DDQN` learns the per-frame cache on `ModelCaching` whose slots are served by
   the trained D3PG actor.

``agent.act(obs, mask)`` is the caching decision; ``agent.allocator`` the slot policy to pass as
``ModelCaching(allocator=...)`` (`evaluate` does it).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitldm.rl.envs.caching import ModelCaching, ResourceAllocation, lfu_cache
from splitldm.rl.agents.d3pg import D3PG, D3PGConfig
from splitldm.rl.agents.ddqn import DDQN, DDQNConfig

__all__ = ["T2DRL", "T2DRLConfig"]


@dataclass
class T2DRLConfig:
    total_steps: int = 20_000        # D3PG slots
    caching_steps: int = 3_000       # DDQN frames
    random_cache: float = 0.5        # share of frames with a random cache while D3PG trains
    d3pg: dict | None = None         # other D3PGConfig fields
    ddqn: dict | None = None         # other DDQNConfig fields
    seed: int = 0


class T2DRL:
    """A trained (DDQN cacher, D3PG allocator) pair; `act`, `allocator`, `train_on`, `save`, `load`."""

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
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        self.ddqn.save(d / "ddqn")
        self.d3pg.save(d / "d3pg")
        (d / "policy.json").write_text(json.dumps({"algorithm": self.algorithm, "config": asdict(self.cfg),
                                                   "env_kwargs": self.env_kwargs}, indent=1, default=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "T2DRL":
        d = Path(directory)
        if not (d / "policy.json").exists():
            raise FileNotFoundError(f"directory: {d} has no policy.json")
        meta = json.loads((d / "policy.json").read_text())
        if meta.get("algorithm") != cls.algorithm:
            raise ValueError(f"directory: {d} holds a {meta.get('algorithm')!r} policy, not {cls.algorithm!r}")
        return cls(DDQN.load(d / "ddqn"), D3PG.load(d / "d3pg"), T2DRLConfig(**meta["config"]), meta["env_kwargs"])
