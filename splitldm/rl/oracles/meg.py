"""Oracles and fixed policies of `MEGRates` and `SeedPower` (measured with `splitldm.rl.evaluate.evaluate`).

A policy here is any callable ``policy(obs, env) -> action``; controllers wrap themselves with
``lambda obs, env: agent.act(obs)``. Oracles read the environment's current state (they know the
channel and the constraints exactly): they bound what any policy can do.

MEGRates:
* `oracle_rates`: exhaustive search over the (steps, merge ratio) grid for the task's SNR; the best
  reward among feasible actions (if none is feasible, the action with the smallest relative excess).
* `fixed_rates(i_steps, i_ratio)`: the same action for every task.
SeedPower:
* `equal_power`, `water_filling` (capacity-optimal), `oracle_power` (numerical optimum of the
  environment's own reward for the current gains).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from splitldm.rl.envs.meg import MEGRates, SeedPower

__all__ = ["oracle_rates", "fixed_rates", "equal_power", "water_filling", "water_filling_power",
           "oracle_power", "oracle_index", "Policy"]

Policy = Callable[[np.ndarray, Any], Any]


def _unwrap(env):
    return getattr(env, "unwrapped", env)


def _rates_action(env: MEGRates, i: int):
    if env.flat:
        return int(i)
    return np.array(divmod(int(i), len(env.merge_ratios)), dtype=np.int64)


def oracle_index(env: MEGRates, snr_db: float) -> int:
    """Flat index of the best action at ``snr_db`` with the constraints known."""
    out = env.all_outcomes(snr_db)
    if out["feasible"].any():
        return int(np.argmax(np.where(out["feasible"], out["reward"], -np.inf)))
    return int(np.argmin(out["load"]))  # max(latency / limit, energy / limit)


def oracle_rates(obs, env) -> Any:
    """Exhaustive search per task (reads the true SNR from the environment)."""
    env = _unwrap(env)
    return _rates_action(env, oracle_index(env, env.snr_db))


def fixed_rates(i_steps: int, i_ratio: int) -> Policy:
    """Always the action (``steps[i_steps]``, ``merge_ratios[i_ratio]``)."""
    def policy(obs, env):
        env = _unwrap(env)
        if not (0 <= i_steps < len(env.steps) and 0 <= i_ratio < len(env.merge_ratios)):
            raise ValueError(f"i_steps, i_ratio: ({i_steps}, {i_ratio}) outside the action grid")
        return _rates_action(env, i_steps * len(env.merge_ratios) + i_ratio)
    policy.__name__ = f"fixed_{i_steps}_{i_ratio}"
    return policy


# ---------------------------------------------------------------------------- SeedPower

def equal_power(obs, env) -> np.ndarray:
    """The same power on every block."""
    return np.full(_unwrap(env).M, 1.0, dtype=np.float32)


def water_filling_power(gains: np.ndarray, mean_snr_db: float, total: float | None = None) -> np.ndarray:
    """Capacity water-filling: ``p_m = max(0, mu - 1 / (g_m SNR))`` with ``sum p = total`` (default M)."""
    g = np.asarray(gains, float) * 10 ** (mean_snr_db / 10)
    if np.any(~np.isfinite(g)) or np.any(g < 0):
        raise ValueError("gains: expected finite gains >= 0")
    total = float(len(g) if total is None else total)
    inv = 1.0 / np.maximum(g, 1e-30)
    lo, hi = 0.0, total + inv.max()
    for _ in range(100):  # bisection on the water level
        mu = 0.5 * (lo + hi)
        if np.maximum(mu - inv, 0).sum() > total:
            hi = mu
        else:
            lo = mu
    p = np.maximum(lo - inv, 0)
    return p * total / max(p.sum(), 1e-30)


def water_filling(obs, env) -> np.ndarray:
    env = _unwrap(env)
    p = water_filling_power(env.gains, env.mean_snr_db)
    return (p / p.max()).astype(np.float32)


def oracle_power(obs, env) -> np.ndarray:
    """The power split maximising the environment's reward for the current gains (SLSQP from equal
    power, water-filling, channel inversion, and inversion with the 1-3 weakest blocks off; never
    below equal power)."""
    from scipy.optimize import minimize

    env = _unwrap(env)
    g, M = env.gains, env.M

    def f(p):
        return -env.reward_of(np.maximum(p, 0), g)

    inverse = 1.0 / np.maximum(g, 1e-3)
    starts = [np.ones(M), water_filling_power(g, env.mean_snr_db) + 1e-3, inverse]
    for drop in range(1, min(4, M)):  # channel inversion with the weakest blocks switched off
        x0 = inverse.copy()
        x0[np.argsort(g)[:drop]] = 1e-3
        starts.append(x0)
    best = None
    for x0 in starts:
        x0 = M * x0 / x0.sum()
        res = minimize(f, x0, method="SLSQP", bounds=[(0, M)] * M,
                       constraints=[{"type": "eq", "fun": lambda p: p.sum() - M}], options={"maxiter": 200})
        if best is None or res.fun < best.fun:
            best = res
    p = np.maximum(best.x, 0)
    if f(p) > f(np.ones(M)):  # never worse than equal power
        p = np.ones(M)
    return (p / p.max()).astype(np.float32)
