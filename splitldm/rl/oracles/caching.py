"""Reference policies of model caching and resource allocation (`ModelCaching`, `ResourceAllocation`).

A frame policy (cacher) is ``cacher(obs, env) -> subset index``; a slot policy (allocator) is
``allocator(slot_obs, env) -> (2 max_users,)`` shares (compute, then bandwidth). ``env`` may be a
`ModelCaching`, a `ResourceAllocation` (its ``core`` is used) or a wrapper of either.

* `lfu_cache`: least-frequently-used caching (the classical baseline).
* `equal_allocation`: equal compute and bandwidth shares.
* `oracle_cache(allocator)`: per-frame clairvoyant caching (tries every subset on the frame's actual
  requests, via `frame_value`).
* `optimal_allocation`: the best allocation of the current slot by exhaustive search on a grid of
  shares (small instances only).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from splitldm.rl.envs.caching import ModelCaching, ResourceAllocation

__all__ = ["lfu_cache", "equal_allocation", "optimal_allocation", "oracle_cache", "frame_value"]


def _compositions(total: int, parts: int) -> np.ndarray:
    """All (P, parts) int arrays of non-negative entries summing to ``total``."""
    if parts == 0:
        return np.zeros((1, 0), np.int64)
    out = [[c[0]] + [c[i] - c[i - 1] for i in range(1, len(c))] + [total - c[-1]] if c else [total]
           for c in itertools.combinations_with_replacement(range(total + 1), parts - 1)]
    return np.array(out, np.int64).reshape(-1, parts)


def optimal_allocation(obs, env, resolution: int = 20, max_pairs: int = 5_000_000) -> np.ndarray:
    """The best allocation of the current slot by exhaustive search on the grid of shares
    ``k / resolution`` (compute over the edge-served users, bandwidth over the active users).
    Small instances only: raises ValueError when more than ``max_pairs`` share pairs would be tried."""
    e = _core(env)
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution: expected an int >= 1, got {resolution!r}")
    s = e.slot
    act = np.flatnonzero(e.req_active[s])
    edge = [u for u in act if e.req_model[s][u] in e.cache]
    n_c = math.comb(resolution + len(edge) - 1, len(edge) - 1) if edge else 1
    n_b = math.comb(resolution + len(act) - 1, len(act) - 1)
    if n_c * n_b > max_pairs:
        raise ValueError(f"resolution: {n_c} x {n_b} share pairs exceed max_pairs={max_pairs}; "
                         "use fewer users or a coarser grid")
    pc, pb = _compositions(resolution, len(edge)), _compositions(resolution, len(act))
    g = np.arange(resolution + 1) / resolution
    U = e.max_users
    R = e.user_outcomes(s, e.cache, np.broadcast_to(g[:, None, None], (len(g), 1, U)),
                        np.broadcast_to(g[None, :, None], (1, len(g), U)))["reward"]   # (kc, kb, U)
    kc = np.zeros((len(pc), U), np.int64)
    kc[:, edge] = pc
    kb = np.zeros((len(pb), U), np.int64)
    kb[:, act] = pb
    total = np.zeros((len(pc), len(pb)))
    for u in act:
        total += R[kc[:, u][:, None], kb[:, u][None, :], u]
    i, j = np.unravel_index(int(np.argmax(total)), total.shape)
    a = np.zeros(2 * U, np.float32)
    a[:U] = kc[i] / resolution
    a[U:] = kb[j] / resolution
    if not edge:
        a[:U] = 0.0
    return a


def frame_value(env, subset: int, allocator: Callable | None = None) -> float:
    """Reward the current frame would earn with cache ``subset`` and ``allocator`` (no side effects)."""
    e = _core(env)
    saved = (e.cache, e.slot, e.last_counts_frame.copy())
    loaded = e.set_cache(subset)
    total = -e.w_load * loaded
    try:
        for _ in range(e.S):
            obs = e.slot_observation()
            total += e.serve_slot(np.ones(2 * e.max_users) if allocator is None else allocator(obs, e))[0]
    finally:
        e.cache, e.slot, e.last_counts_frame = saved
    return float(total)


def oracle_cache(allocator: Callable | None = None) -> Callable:
    """Per-frame clairvoyant caching: the subset with the best reward on the frame's actual requests
    (served by ``allocator``), found by trying every subset."""
    def policy(obs, env) -> int:
        e = _core(env)
        return int(np.argmax([frame_value(e, k, allocator) for k in range(len(e.subsets))]))

    return policy


def _core(env) -> ModelCaching:
    env = getattr(env, "unwrapped", env)
    if isinstance(env, ResourceAllocation):
        env = env.core
    if not isinstance(env, ModelCaching):
        raise TypeError(f"env: expected a ModelCaching or ResourceAllocation, got {type(env).__name__}")
    return env


def lfu_cache(obs, env) -> int:
    """Least-frequently-used caching: models by requests so far this episode (ties: smaller first),
    added while they fit in memory. Returns the subset index (`ModelCaching.lfu_subset`)."""
    return _core(env).lfu_subset()


def equal_allocation(obs, env) -> np.ndarray:
    """Equal compute and bandwidth shares (the environment normalises over the active users)."""
    return np.ones(2 * _core(env).max_users, dtype=np.float32)
