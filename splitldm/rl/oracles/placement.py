"""Reference placements for `ChainPlacement` (measured, like D3QL, with `splitldm.rl.evaluate.evaluate_placement`).

A policy is a callable ``policy(obs, env) -> action`` (as in `splitldm.rl.oracles.meg`); every policy
here only picks actions the mask allows.

* `monolithic`: all (asked) steps on one node, the node that finishes the request first.
* `fixed_chain(L)`: all asked steps on a chain of exactly ``L`` nodes (the fastest-finishing one).
* `greedy_placement`: the action with the best immediate reward (myopic, any chain, any reduction).
* `exhaustive_optimum`: every sequence of allowed actions for a whole episode (small instances only);
  the best total reward. It knows the future requests, so it bounds every policy.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from splitldm.rl.envs.placement import ChainPlacement, PlacementState

__all__ = ["monolithic", "fixed_chain", "greedy_placement", "exhaustive_optimum"]


def _unwrap(env) -> ChainPlacement:
    env = getattr(env, "unwrapped", env)
    if not isinstance(env, ChainPlacement):
        raise TypeError(f"env: expected a ChainPlacement, got {type(env).__name__}")
    return env


def _best(env: ChainPlacement, keep: Callable[[tuple, int], bool], key: str) -> int:
    """Allowed action among those ``keep(chain, reduction)`` accepts with the best ``key``
    ("latency": smallest latency; "reward": largest reward); 0 (reject) if there is none."""
    mask = env.mask()
    best, best_v = 0, -np.inf
    for i in np.flatnonzero(mask[1:]) + 1:
        chain, d = env.actions[i]
        if not keep(chain, d):
            continue
        _, r, out = env.simulate(env.state, int(i))
        v = -out["latency_s"] if key == "latency" else r
        if v > best_v:
            best, best_v = int(i), v
    if key == "reward" and best_v < -env.reject_penalty:
        return 0
    return best


def monolithic(obs, env) -> int:
    """All asked steps on the single node that finishes them first (reject if none is allowed)."""
    return _best(_unwrap(env), lambda c, d: len(c) == 1 and d == 0, "latency")


def fixed_chain(length: int = 2) -> Callable[[Any, Any], int]:
    """All asked steps on a chain of exactly ``length`` nodes, the one that finishes first."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected an int >= 1, got {length!r}")

    def policy(obs, env) -> int:
        e = _unwrap(env)
        if length > e.max_chain:
            raise ValueError(f"length: {length} exceeds the environment's max_chain {e.max_chain}")
        return _best(e, lambda c, d: len(c) == length and d == 0, "latency")

    policy.__name__ = f"fixed_chain_{length}"
    return policy


def greedy_placement(obs, env) -> int:
    """The allowed action with the largest immediate reward."""
    return _best(_unwrap(env), lambda c, d: True, "reward")


def exhaustive_optimum(env, max_sequences: int = 2_000_000) -> tuple[float, list[int]]:
    """Best total reward of the current episode (from the current state) over all allowed action
    sequences, and the sequence. Raises ValueError when the tree has more than ``max_sequences`` leaves
    (``A ** users_left``, A = number of actions)."""
    e = _unwrap(env)
    remaining = e.num_users - e.state.t
    if len(e.actions) ** remaining > max_sequences:
        raise ValueError(f"env: {len(e.actions)}^{remaining} action sequences exceed max_sequences={max_sequences}; "
                         "use fewer users or nodes")

    def dfs(state: PlacementState) -> tuple[float, list[int]]:
        if state.t >= e.num_users:
            return 0.0, []
        best, seq = -np.inf, []
        for a in np.flatnonzero(e.mask(state)):
            nxt, r, _ = e.simulate(state, int(a))
            v, rest = dfs(nxt)
            if r + v > best:
                best, seq = r + v, [int(a)] + rest
        return best, seq

    return dfs(e.state.copy())
