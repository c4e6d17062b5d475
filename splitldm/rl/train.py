"""Config-driven training and evaluation of the controllers (what ``splitldm rl train / eval`` run).

A run config (YAML or dict)::

    algorithm: cvpo                 # cvpo | ppo_lagrangian | ppo | d3ql | t2drl
    env: {id: splitldm/MEGRatesFlat-v0, kwargs: {}}
    hparams: {total_steps: 12000}   # fields of CVPOConfig / PPOLagConfig / PPOConfig
    output: runs/cvpo               # policy.safetensors + policy.json + curve.png + eval.json
    eval: {episodes: 20, seed: 100000}
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from splitldm.rl.envs import meg as _envs  # noqa: F401  (registers the environments)
from splitldm.rl.envs import placement as _placement  # noqa: F401  (registers splitldm/ChainPlacement-v0)
from splitldm.rl.oracles.meg import (
    equal_power, evaluate, fixed_rates, oracle_power, oracle_rates, water_filling,
)
from splitldm.rl.agents.cvpo import CVPO, CVPOConfig
from splitldm.rl.agents.d3ql import D3QL, D3QLConfig
from splitldm.rl.agents.ppo import PPO, PPOConfig
from splitldm.rl.plotting import save_figure
from splitldm.rl.agents.ppo_lagrangian import PPOLagConfig, PPOLagrangian
from splitldm.rl.agents.t2drl import T2DRL, T2DRLConfig

__all__ = ["ALGORITHMS", "load_run_config", "make_env", "train", "load_agent", "evaluate_agent", "plot_history"]

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


def make_env(env_cfg: Mapping[str, Any]):
    return gym.make(env_cfg["id"], **dict(env_cfg.get("kwargs", {}))).unwrapped


def train(config: str | Path | Mapping[str, Any], log=print) -> tuple[Any, dict[str, Any]]:
    """Train, save the policy, the learning curve and the held-out evaluation; returns (agent, summary)."""
    cfg = load_run_config(config)
    cls, cfg_cls = ALGORITHMS[cfg["algorithm"]]
    env = make_env(cfg["env"])
    t0 = time.time()
    agent = cls.train_on(env, cfg_cls(**cfg["hparams"]), log=log)
    seconds = time.time() - t0
    out = Path(cfg["output"])
    agent.save(out)
    (out / "run.json").write_text(json.dumps(cfg, indent=1))
    episodic = cfg["algorithm"] in ("d3ql", "t2drl")
    plot_history(agent.history, out / "curve.png", title=f"{cfg['algorithm']} on {cfg['env']['id']}",
                 x_key="episode" if episodic else "step")
    summary = {"algorithm": cfg["algorithm"], "train_seconds": round(seconds, 1),
               **evaluate_agent(agent, cfg["env"], cfg["eval"]["episodes"], cfg["eval"]["seed"])}
    if episodic and cfg.get("users"):
        from splitldm.rl.evaluate import reward_vs_users

        summary["vs_users"] = reward_vs_users(agent, cfg["env"], cfg["users"], cfg["eval"]["episodes"],
                                              cfg["eval"]["seed"], out / "reward_vs_users.png")
    (out / "eval.json").write_text(json.dumps(summary, indent=1))
    return agent, summary


def load_agent(directory: str | Path):
    path = Path(directory) / "policy.json"
    if not path.exists():
        raise FileNotFoundError(f"directory: {directory} has no policy.json")
    meta = json.loads(path.read_text())
    algo = meta.get("algorithm")
    if algo not in ALGORITHMS:
        raise ValueError(f"directory: unknown algorithm {algo!r} in {directory}")
    return ALGORITHMS[algo][0].load(directory)


def evaluate_agent(agent, env_cfg: Mapping[str, Any], episodes: int = 20, seed: int = 100_000,
                   baselines: bool = True) -> dict[str, Any]:
    """The agent and the reference policies on the same held-out episodes (seeds from ``seed``)."""
    env = make_env(env_cfg)
    if isinstance(agent, (D3QL, T2DRL)):
        from splitldm.rl.evaluate import evaluate_episodic

        return evaluate_episodic(agent, env, episodes, seed, baselines)
    res: dict[str, Any] = {"agent": evaluate(env, lambda o, e: agent.act(o), episodes, seed)}
    if not baselines:
        return res
    if isinstance(env, _envs.MEGRates):
        res["oracle"] = evaluate(env, oracle_rates, episodes, seed)
        fixed = {}
        for i in range(len(env.steps)):
            for j in range(len(env.merge_ratios)):
                fixed[(i, j)] = evaluate(env, fixed_rates(i, j), episodes, seed)
        ok = {k: v for k, v in fixed.items() if v["violation_rate"] <= 0.01}
        best = max(ok or fixed, key=lambda k: (ok or fixed)[k]["reward"])
        res["best_fixed"] = {"steps": env.steps[best[0]], "merge_ratio": env.merge_ratios[best[1]], **fixed[best]}
        res["reward_vs_oracle"] = res["agent"]["reward"] / res["oracle"]["reward"]
    elif isinstance(env, _envs.SeedPower):
        res["equal_power"] = evaluate(env, equal_power, episodes, seed)
        res["water_filling"] = evaluate(env, water_filling, episodes, seed)
        res["oracle"] = evaluate(env, oracle_power, max(1, episodes // 4), seed)
    return res


def plot_history(history: Mapping[str, list], path: str | Path, title: str = "", x_key: str = "step") -> Path:
    """Episode reward (and constraint cost, when recorded) against ``history[x_key]`` (environment
    steps by default, or "episode"), smoothed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(history.get(x_key) or history.get("step", []))
    keys = [k for k in ("episode_reward", "episode_cost") if history.get(k)]
    fig, axes = plt.subplots(1, len(keys) or 1, figsize=(5 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        y = np.asarray(history[k], float)
        w = max(1, len(y) // 20)
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(steps[:len(y)], y, alpha=0.3)
        ax.plot(steps[w - 1:len(y)], smooth)
        ax.set_xlabel("episodes" if x_key == "episode" else "environment steps")
        ax.set_ylabel(k.replace("_", " "))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)
