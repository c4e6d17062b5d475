"""Evaluation of every controller and reference policy: ONE episode loop (`rollout`), the per-environment
summaries built on it, the agent-vs-baselines suites, and the learning-curve / reward-vs-users plots.

A policy is a callable ``policy(obs, env) -> action`` (agents wrap themselves, e.g. ``agent.policy()``
or ``lambda obs, env: agent.act(obs)``). Episode ``k`` is reset with seed ``seed + k``, so every
policy of a comparison sees the same draws. Summaries (the figures differ per environment):

* `evaluate`: MEGRates / SeedPower (any environment): reward per task, and the latency / energy /
  violation figures when the environment reports costs.
* `evaluate_placement`: ChainPlacement, per request (served, late, rejected, chain length, masked choices).
* `evaluate_caching`: ModelCaching, a frame policy (cacher) with a slot policy (allocator), per frame.
* `evaluate_allocation`: ResourceAllocation, a slot policy, per slot.

Suites: `evaluate_agent` (what ``splitldm rl train / eval`` report), `evaluate_episodic`,
`reward_vs_users`. Plots: `plot_history`, `plot_vs_users` (PNG files through the library's one plotting
helper, `splitldm.eval.plotting`; the backend is never switched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from splitldm.eval.plotting import new_figure, save_figure
from splitldm.rl.envs.caching import ModelCaching, ResourceAllocation
from splitldm.rl.envs.meg import MEGRates, SeedPower
from splitldm.rl.envs.placement import ChainPlacement
from splitldm.rl.envs.registry import make_env
from splitldm.rl.oracles.caching import lfu_cache
from splitldm.rl.oracles.meg import equal_power, fixed_rates, oracle_power, oracle_rates, water_filling
from splitldm.rl.oracles.placement import fixed_chain, greedy_placement, monolithic

__all__ = ["Policy", "Step", "rollout", "evaluate", "evaluate_placement", "evaluate_caching", "evaluate_allocation",
           "evaluate_agent", "evaluate_episodic", "reward_vs_users", "plot_history", "plot_vs_users"]

Policy = Callable[[Any, Any], Any]


# ---------------------------------------------------------------------------- the loop

@dataclass(frozen=True)
class Step:
    """One environment step of `rollout`.

    ``episode``: index k of the episode (reset with seed ``seed + k``); ``action``: what the policy
    chose; ``reward``: what ``env.step`` returned; ``info``: ``env.step``'s info; ``prior_info``: the
    info in force when the action was chosen (``env.reset``'s or the previous step's, e.g. its
    ``action_mask``).
    """

    episode: int
    action: Any
    reward: float
    info: dict[str, Any]
    prior_info: dict[str, Any]


def rollout(env, policy: Policy, episodes: int = 10, seed: int = 100_000,
            options: Mapping[str, Any] | None = None) -> Iterator[Step]:
    """The one evaluation loop: run ``policy`` for ``episodes`` episodes (seeds ``seed, seed + 1, ...``,
    reset ``options`` passed on) and yield every step; an episode ends on ``terminated or truncated``.

    Raises:
        ValueError: ``episodes`` is not an int >= 1 (raised here, before any episode runs).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes: expected an int >= 1, got {episodes!r}")
    if not callable(policy):
        raise TypeError(f"policy: expected a callable policy(obs, env), got {type(policy).__name__}")
    return _episodes(env, policy, episodes, seed, options)


def _episodes(env, policy, episodes, seed, options) -> Iterator[Step]:
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k, options=options)
        done = False
        while not done:
            action = policy(obs, env)
            obs, reward, terminated, truncated, nxt = env.step(action)
            yield Step(k, action, reward, nxt, info)
            info = nxt
            done = terminated or truncated


# ---------------------------------------------------------------------------- summaries

def evaluate(env, policy: Policy, episodes: int = 10, seed: int = 10_000) -> dict[str, Any]:
    """Run ``episodes`` episodes (seeds ``seed, seed+1, ...``) and summarise.

    Returns mean reward per task, and for environments with costs: mean latency / energy, the
    violation rate over all tasks and over tasks where some action was feasible (``violation_rate``,
    the figure that matters: a deep fade that no action survives is no policy's fault), and
    ``avoidable_rate``, the mean of ``info["constraint_cost"]`` (those violations plus deep-fade
    excesses above the least-violating action's). ``reward_ci``: the 95 % Student-t interval of the
    mean reward over the episodes (their per-task means; `splitldm.eval.stats.t_interval`), as a dict.
    """
    from splitldm.eval.stats import t_interval

    rewards, per_episode, lat, en, viol, feas, avoid = [], {}, [], [], [], [], []
    for s in rollout(env, policy, episodes, seed):
        rewards.append(s.reward)
        per_episode.setdefault(s.episode, []).append(s.reward)
        info = s.info
        if "violation" in info:
            lat.append(info["cost"]["latency"])
            en.append(info["cost"]["energy"])
            viol.append(info["violation"]["latency"] or info["violation"]["energy"])
            feas.append(info["feasible_exists"])
            avoid.append(float(info.get("constraint_cost", 0.0)))
    out: dict[str, Any] = {"reward": float(np.mean(rewards)), "tasks": len(rewards),
                           "reward_ci": t_interval([float(np.mean(r)) for r in per_episode.values()]).to_dict()}
    if viol:
        viol, feas = np.array(viol), np.array(feas)
        out.update(latency_s=float(np.mean(lat)), energy_j=float(np.mean(en)),
                   violation_rate_all=float(viol.mean()),
                   violation_rate=float(viol[feas].mean()) if feas.any() else 0.0,
                   infeasible_tasks=float(1 - feas.mean()), avoidable_rate=float(np.mean(avoid)))
    return out


def _placement_env(env) -> ChainPlacement:
    env = getattr(env, "unwrapped", env)
    if not isinstance(env, ChainPlacement):
        raise TypeError(f"env: expected a ChainPlacement, got {type(env).__name__}")
    return env


def evaluate_placement(env, policy: Policy, episodes: int = 10, seed: int = 100_000, num_users: int | None = None
                       ) -> dict[str, Any]:
    """Run ``episodes`` episodes (seeds ``seed, seed+1, ...``; ``num_users`` users each, or drawn as in
    training when None) and summarise per request.

    Returns mean ``reward`` per request, ``served_rate`` (within deadline and quality),
    ``latency_violation_rate`` (requests not delivered within their deadline: late or rejected),
    ``rejected_rate``, mean ``latency_s`` and ``steps`` of the delivered ones, ``mean_chain`` length,
    and ``masked_choices`` (times the policy picked a masked action: must be 0).
    """
    e = _placement_env(env)
    opts = None if num_users is None else {"num_users": int(num_users)}
    rew, served, late, rej, lat, steps, chain, bad = [], [], [], [], [], [], [], 0
    for s in rollout(e, policy, episodes, seed, opts):
        info = s.info
        bad += int(not s.prior_info["action_mask"][int(s.action)])
        rew.append(s.reward)
        served.append(info["served"])
        rej.append(info["rejected"])
        late.append(info["rejected"] or info["late"])
        if not info["rejected"]:
            lat.append(info["latency_s"])
            steps.append(info["steps"])
            chain.append(len(info["chain"]))
    return {"reward": float(np.mean(rew)), "served_rate": float(np.mean(served)),
            "latency_violation_rate": float(np.mean(late)), "rejected_rate": float(np.mean(rej)),
            "latency_s": float(np.mean(lat)) if lat else float("nan"),
            "steps": float(np.mean(steps)) if steps else float("nan"),
            "mean_chain": float(np.mean(chain)) if chain else float("nan"),
            "requests": len(rew), "masked_choices": bad}


def _caching_env(env) -> ModelCaching:
    env = getattr(env, "unwrapped", env)
    if isinstance(env, ResourceAllocation):
        env = env.core
    if not isinstance(env, ModelCaching):
        raise TypeError(f"env: expected a ModelCaching or ResourceAllocation, got {type(env).__name__}")
    return env


def evaluate_caching(env, cacher: Policy, allocator: Policy | None = None, episodes: int = 5,
                     seed: int = 100_000, num_users: int | None = None) -> dict[str, Any]:
    """Mean frame reward of ``cacher`` (frame policy) with ``allocator`` (slot policy; None: equal
    shares) on a `ModelCaching` env over held-out episodes (``num_users`` users per frame, or drawn as
    in training when None); also ``reward_per_request``, latency [s], late rate and quality (per user
    request), and the number of ``frames``. The env's own allocator and user counts are restored."""
    e = _caching_env(env)
    saved = (e.allocator, e.user_choices)
    e.allocator = allocator
    if num_users is not None:
        e.user_choices = [int(num_users)]
    rew, lat, late, q = [], [], [], []
    try:
        for s in rollout(e, cacher, episodes, seed):
            rew.append(s.reward)
            lat.append(s.info["latency_s"])
            late.append(s.info["late_rate"])
            q.append(s.info["quality"])
    finally:
        e.allocator, e.user_choices = saved
    users = e.num_users if num_users is None else num_users
    return {"reward": float(np.mean(rew)), "reward_per_request": float(np.mean(rew)) / (e.S * users),
            "latency_s": float(np.mean(lat)), "late_rate": float(np.mean(late)), "quality": float(np.mean(q)),
            "frames": len(rew)}


def evaluate_allocation(env, allocator: Policy, episodes: int = 3, seed: int = 100_000) -> dict[str, Any]:
    """Mean slot reward and late rate of ``allocator`` on a `ResourceAllocation` env (its own cacher)
    over held-out episodes, and the number of ``slots``."""
    rew, late = [], []
    for s in rollout(env, allocator, episodes, seed):
        rew.append(s.reward)
        late.append(s.info["late_rate"])
    return {"reward": float(np.mean(rew)), "late_rate": float(np.mean(late)), "slots": len(rew)}


# ---------------------------------------------------------------------------- suites

def _agent_policy(agent) -> Policy:
    return agent.policy() if hasattr(agent, "policy") else (lambda obs, env: agent.act(obs))


def _policies(agent, env, baselines: bool) -> dict[str, Any]:
    """name -> (cacher, allocator) for caching, or a placement policy."""
    if isinstance(env, ChainPlacement):
        out = {"agent": _agent_policy(agent)}
        if baselines:
            out.update(monolithic=monolithic, greedy=greedy_placement)
            if env.max_chain >= 2:
                out["fixed_chain_2"] = fixed_chain(2)
        return out
    if isinstance(env, ModelCaching):
        if hasattr(agent, "cacher"):  # T2DRL: its own cacher and allocator
            cacher, allocator = agent.cacher, agent.allocator
        else:
            cacher, allocator = _agent_policy(agent), None
        out = {"agent": (cacher, allocator)}
        if baselines:
            out.update(lfu_equal=(lfu_cache, None), lfu_d3pg=(lfu_cache, allocator), ddqn_equal=(cacher, None))
        return out
    raise TypeError(f"env: expected ChainPlacement or ModelCaching, got {type(env).__name__}")


def _run(env, policy, episodes: int, seed: int, users: int | None) -> dict[str, Any]:
    if isinstance(env, ChainPlacement):
        return evaluate_placement(env, policy, episodes, seed, users)
    return evaluate_caching(env, policy[0], policy[1], episodes, seed, users)


def evaluate_episodic(agent, env, episodes: int = 10, seed: int = 100_000, baselines: bool = True) -> dict[str, Any]:
    """The agent and the baselines on the same held-out episodes (user counts drawn as in training);
    ``env``: a `ChainPlacement` (D3QL) or a `ModelCaching` (T2DRL)."""
    env = getattr(env, "unwrapped", env)
    return {name: _run(env, pol, episodes, seed, None) for name, pol in _policies(agent, env, baselines).items()}


def evaluate_agent(agent, env_cfg: Mapping[str, Any], episodes: int = 20, seed: int = 100_000,
                   baselines: bool = True) -> dict[str, Any]:
    """The agent and the reference policies on the same held-out episodes (seeds from ``seed``) of the
    environment ``env_cfg`` (a run config's ``env`` block): episodic suites for placement and caching,
    for MEGRates the exhaustive oracle and the best fixed action, for SeedPower equal power,
    water-filling and the numerical optimum (on the first quarter of the episodes, where the agent is
    evaluated again: ``agent_on_oracle_episodes``, ``agent_vs_oracle``)."""
    env = make_env(env_cfg)
    if isinstance(env, (ChainPlacement, ModelCaching)):
        return evaluate_episodic(agent, env, episodes, seed, baselines)
    res: dict[str, Any] = {"agent": evaluate(env, lambda o, e: agent.act(o), episodes, seed)}
    if not baselines:
        return res
    if isinstance(env, MEGRates):
        res["oracle"] = evaluate(env, oracle_rates, episodes, seed)
        fixed = {}
        for i in range(len(env.steps)):
            for j in range(len(env.merge_ratios)):
                fixed[(i, j)] = evaluate(env, fixed_rates(i, j), episodes, seed)
        ok = {k: v for k, v in fixed.items() if v["violation_rate"] <= 0.01}
        best = max(ok or fixed, key=lambda k: (ok or fixed)[k]["reward"])
        res["best_fixed"] = {"steps": env.steps[best[0]], "merge_ratio": env.merge_ratios[best[1]], **fixed[best]}
        res["reward_vs_oracle"] = res["agent"]["reward"] / res["oracle"]["reward"]
    elif isinstance(env, SeedPower):
        res["equal_power"] = evaluate(env, equal_power, episodes, seed)
        res["water_filling"] = evaluate(env, water_filling, episodes, seed)
        res["oracle"] = evaluate(env, oracle_power, max(1, episodes // 4), seed)
        # the oracle is slow, so it runs on the first quarter of the episodes: compare on those
        same = evaluate(env, lambda o, e: agent.act(o), max(1, episodes // 4), seed)
        res["agent_on_oracle_episodes"] = same
        res["agent_vs_oracle"] = same["reward"] / res["oracle"]["reward"]
    return res


def reward_vs_users(agent, env_cfg: Mapping[str, Any], users: Sequence[int], episodes: int = 10,
                    seed: int = 100_000, plot: str | Path | None = None) -> dict[str, Any]:
    """Per user count: every policy's evaluation; a PNG of reward vs users when ``plot`` is given."""
    env = make_env(env_cfg)
    res = {int(u): {name: _run(env, pol, episodes, seed, int(u)) for name, pol in _policies(agent, env, True).items()}
           for u in users}
    if plot is not None:
        key = "reward"
        plot_vs_users({name: [res[u][name][key] for u in res] for name in next(iter(res.values()))},
                      list(res), plot,
                      ylabel="reward per request" if isinstance(env, ChainPlacement) else "reward per frame")
    return res


# ---------------------------------------------------------------------------- plots

def plot_history(history: Mapping[str, list], path: str | Path, title: str = "", x_key: str = "step") -> Path:
    """Episode reward (and constraint cost, when recorded) against ``history[x_key]`` (environment
    steps by default, or "episode"), smoothed; written as a PNG to ``path``."""
    steps = np.asarray(history.get(x_key) or history.get("step", []))
    keys = [k for k in ("episode_reward", "episode_cost") if history.get(k)]
    fig, axes = new_figure(1, len(keys) or 1, figsize=(5 * max(1, len(keys)), 3.2))
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
    return save_figure(fig, path, dpi=100)


def plot_vs_users(curves: Mapping[str, Sequence[float]], users: Sequence[int], path: str | Path,
                  ylabel: str = "reward", title: str = "") -> Path:
    """One line per policy: ``curves[name][i]`` at ``users[i]`` users (PNG at ``path``)."""
    fig, axes = new_figure(figsize=(5, 3.4))
    ax = axes[0][0]
    for name, ys in curves.items():
        ax.plot(list(users), list(ys), marker="o", label=name)
    ax.set_xlabel("number of users")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path, dpi=100)
