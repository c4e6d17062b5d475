"""Evaluation of the placement (D3QL) and caching (T2DRL) agents against their baselines, per number of
users, with a reward-vs-users plot. Used by ``splitldm rl train / eval`` and bench/placement_caching.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


from splitldm.rl.envs.caching import ModelCaching, evaluate_caching, lfu_cache
from splitldm.rl.envs.placement import ChainPlacement
from splitldm.rl.plotting import save_figure
from splitldm.rl.oracles.placement import evaluate_placement, fixed_chain, greedy_placement, monolithic

__all__ = ["evaluate_episodic", "reward_vs_users", "plot_vs_users"]


def _policies(agent, env, baselines: bool) -> dict[str, Any]:
    """name -> (cacher, allocator) for caching, or a placement policy."""
    if isinstance(env, ChainPlacement):
        out = {"agent": agent.policy()}
        if baselines:
            out.update(monolithic=monolithic, greedy=greedy_placement)
            if env.max_chain >= 2:
                out["fixed_chain_2"] = fixed_chain(2)
        return out
    if isinstance(env, ModelCaching):
        out = {"agent": (agent.cacher, agent.allocator)}
        if baselines:
            out.update(lfu_equal=(lfu_cache, None), lfu_d3pg=(lfu_cache, agent.allocator),
                       ddqn_equal=(agent.cacher, None))
        return out
    raise TypeError(f"env: expected ChainPlacement or ModelCaching, got {type(env).__name__}")


def _run(env, policy, episodes: int, seed: int, users: int | None) -> dict[str, Any]:
    if isinstance(env, ChainPlacement):
        return evaluate_placement(env, policy, episodes, seed, users)
    return evaluate_caching(env, policy[0], policy[1], episodes, seed, users)


def evaluate_episodic(agent, env, episodes: int = 10, seed: int = 100_000, baselines: bool = True) -> dict[str, Any]:
    """The agent and the baselines on the same held-out episodes (user counts drawn as in training)."""
    env = getattr(env, "unwrapped", env)
    return {name: _run(env, pol, episodes, seed, None) for name, pol in _policies(agent, env, baselines).items()}


def reward_vs_users(agent, env_cfg: Mapping[str, Any], users: Sequence[int], episodes: int = 10,
                    seed: int = 100_000, plot: str | Path | None = None) -> dict[str, Any]:
    """Per user count: every policy's evaluation; a PNG of reward vs users when ``plot`` is given."""
    from splitldm.rl.train import make_env

    env = make_env(env_cfg)
    res = {int(u): {name: _run(env, pol, episodes, seed, int(u)) for name, pol in _policies(agent, env, True).items()}
           for u in users}
    if plot is not None:
        key = "reward"
        plot_vs_users({name: [res[u][name][key] for u in res] for name in next(iter(res.values()))},
                      list(res), plot, ylabel="reward per request" if isinstance(env, ChainPlacement) else "reward per frame")
    return res


def plot_vs_users(curves: Mapping[str, Sequence[float]], users: Sequence[int], path: str | Path,
                  ylabel: str = "reward", title: str = "") -> Path:
    """One line per policy: ``curves[name][i]`` at ``users[i]`` users (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, ys in curves.items():
        ax.plot(list(users), list(ys), marker="o", label=name)
    ax.set_xlabel("number of users")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
