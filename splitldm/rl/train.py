"""Config-driven training of the controllers (what ``splitldm rl train`` runs; ``rl eval`` uses
`splitldm.rl.evaluate.evaluate_agent`).

A run config (YAML or dict)::

    algorithm: cvpo                 # cvpo | ppo_lagrangian | ppo | d3ql | t2drl
    env: {id: splitldm/MEGRatesFlat-v0, kwargs: {}}
    hparams: {total_steps: 12000}   # fields of CVPOConfig / PPOLagConfig / PPOConfig / D3QLConfig / T2DRLConfig
    output: runs/cvpo               # the policy (save_pretrained: config.json + model.safetensors + ...),
                                    # run.json, curve.png, eval.json (+ reward_vs_users.png with users)
    eval: {episodes: 20, seed: 100000}
    users: [2, 5, 10, 20]           # placement / caching only: reward-vs-users evaluation
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping

from splitldm.rl.agents.auto import AutoPolicy
from splitldm.rl.agents.cvpo import CVPO, CVPOConfig
from splitldm.rl.agents.d3ql import D3QL, D3QLConfig
from splitldm.rl.agents.ppo import PPO, PPOConfig
from splitldm.rl.agents.ppo_lagrangian import PPOLagConfig, PPOLagrangian
from splitldm.rl.agents.t2drl import T2DRL, T2DRLConfig
from splitldm.rl.envs.registry import make_env
from splitldm.rl.evaluate import evaluate_agent, plot_history, reward_vs_users

__all__ = ["ALGORITHMS", "DEFAULT_ENV", "load_run_config", "train", "load_agent"]

logger = logging.getLogger(__name__)

ALGORITHMS = {"cvpo": (CVPO, CVPOConfig), "ppo_lagrangian": (PPOLagrangian, PPOLagConfig), "ppo": (PPO, PPOConfig),
              "d3ql": (D3QL, D3QLConfig), "t2drl": (T2DRL, T2DRLConfig)}
DEFAULT_ENV = {"cvpo": "splitldm/MEGRatesFlat-v0", "ppo_lagrangian": "splitldm/MEGRatesFlat-v0",
               "ppo": "splitldm/SeedPower-v0", "d3ql": "splitldm/ChainPlacement-v0",
               "t2drl": "splitldm/ModelCaching-v0"}


def load_run_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Validated run config from a YAML path or a mapping."""
    if isinstance(source, (str, Path)):
        import yaml

        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"config: no file at {path}")
        cfg = yaml.safe_load(path.read_text()) or {}
    else:
        cfg = dict(source)
    if not isinstance(cfg, Mapping):
        raise ValueError("config: expected a mapping")
    algo = cfg.get("algorithm")
    if algo not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {sorted(ALGORITHMS)}, got {algo!r}")
    unknown = set(cfg) - {"algorithm", "env", "hparams", "output", "eval", "users"}
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)}")
    env = dict(cfg.get("env") or {})
    env.setdefault("id", DEFAULT_ENV[algo])
    env.setdefault("kwargs", {})
    hp = dict(cfg.get("hparams") or {})
    allowed = {f.name for f in fields(ALGORITHMS[algo][1])}
    bad = set(hp) - allowed
    if bad:
        raise ValueError(f"hparams: unknown for {algo}: {sorted(bad)}; allowed {sorted(allowed)}")
    ev = dict(cfg.get("eval") or {})
    ev.setdefault("episodes", 20)
    ev.setdefault("seed", 100_000)
    out = {"algorithm": algo, "env": env, "hparams": hp, "output": str(cfg.get("output", f"runs/{algo}")), "eval": ev}
    if "users" in cfg:  # user counts of the reward-vs-users evaluation (placement / caching)
        users = cfg["users"]
        if not isinstance(users, list) or not users or any(not isinstance(u, int) or u < 1 for u in users):
            raise ValueError(f"users: expected a non-empty list of ints >= 1, got {users!r}")
        out["users"] = users
    return out


def train(config: str | Path | Mapping[str, Any], log: Callable[[str], None] | None = None
          ) -> tuple[Any, dict[str, Any]]:
    """Train, save the policy, the learning curve and the held-out evaluation; returns (agent, summary).

    ``log``: called with the agents' progress lines (None: the agents' loggers, INFO)."""
    cfg = load_run_config(config)
    cls, cfg_cls = ALGORITHMS[cfg["algorithm"]]
    env = make_env(cfg["env"])
    t0 = time.time()
    agent = cls.train_on(env, cfg_cls(**cfg["hparams"]), log=log)
    seconds = time.time() - t0
    out = Path(cfg["output"])
    agent.save_pretrained(out)
    (out / "run.json").write_text(json.dumps(cfg, indent=1))
    episodic = cfg["algorithm"] in ("d3ql", "t2drl")
    plot_history(agent.history, out / "curve.png", title=f"{cfg['algorithm']} on {cfg['env']['id']}",
                 x_key="episode" if episodic else "step")
    summary = {"algorithm": cfg["algorithm"], "train_seconds": round(seconds, 1),
               **evaluate_agent(agent, cfg["env"], cfg["eval"]["episodes"], cfg["eval"]["seed"])}
    if episodic and cfg.get("users"):
        summary["vs_users"] = reward_vs_users(agent, cfg["env"], cfg["users"], cfg["eval"]["episodes"],
                                              cfg["eval"]["seed"], out / "reward_vs_users.png")
    (out / "eval.json").write_text(json.dumps(summary, indent=1))
    logger.info("%s: policy, curve and evaluation written to %s", cfg["algorithm"], out)
    return agent, summary


def load_agent(directory: str | Path):
    """Deprecated alias of `splitldm.rl.agents.auto.AutoPolicy.from_pretrained`."""
    warnings.warn("load_agent is deprecated and will be removed in the next release; use "
                  "splitldm.rl.agents.auto.AutoPolicy.from_pretrained", DeprecationWarning, stacklevel=2)
    return AutoPolicy.from_pretrained(directory)
