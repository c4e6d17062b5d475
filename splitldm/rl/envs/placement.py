"""`ChainPlacement`: denoising blocks of each user's request placed on a chain of edge nodes (LEARN-GDM).

One episode is one frame: ``num_users`` users each send one image request, arriving at times drawn
uniformly in ``[0, frame_s]`` and served in arrival order, one request per environment step.

System model (all times in seconds, FLOPs counted by `splitldm.analysis.costs.model_flops`):

* Edge nodes ``n = 0..N-1``: sustained FLOP/s ``flops_per_s[n]``, memory ``memory_gb[n]`` and a
  queue: node ``n`` is busy until ``avail[n]`` (FIFO); a block may only be queued on a node whose
  backlog at the block's arrival is at most ``queue_limit_s``. A node whose memory cannot hold the
  model (``model_memory_gb``) is never usable. Node 0 is the access node (base station) that
  talks to the users.
* A request asks for ``n_ask`` denoising steps and accepts any step count whose quality
  ``Q(n) = -log MSE`` (from the measured `QualityTable`, or its stand-in) is at least its quality
  floor ``q_min``; it has a deadline ``deadline_s`` counted from its arrival.
* An action places the request: a chain ``(n_1, ..., n_L)`` of distinct usable nodes (``L <=
  max_chain``) and a step reduction ``d`` from ``reductions`` (``n = n_ask - d`` steps, at least the
  table's smallest). The ``n`` steps are cut into ``L`` consecutive blocks proportional to the nodes'
  FLOP/s (largest remainder). Block ``i`` starts at ``max(ready_i, avail[n_i])`` and takes
  ``steps_i * step_flops / flops_per_s[n_i]``; the latent then crosses the inter-node link
  (``link_latency_s + latent_bits / link_rate_bps``) to the next node, and finally to node 0 and
  over the user's wireless channel (``latent_bits / rate_u``); the device decodes it
  (``ue_decode_s``). Latency = finish - arrival. Action 0 rejects the request (always allowed).
* Multiple access (`greedy_channel_assignment`): ``num_channels`` orthogonal channels of
  ``bandwidth_hz`` each; every user sees an independent gain on every channel (path loss at its
  distance + Rayleigh). Greedy rule, best channel gain first: repeatedly give the (user, channel)
  pair with the highest gain among unassigned users and free channels; when all channels are taken,
  they are freed for the next round. Users on the same channel share it in time (rate / users).

Reward of one request (``info`` has the parts):

* served (latency <= deadline and ``Q(n) >= q_min``): ``1 + w_quality (Q(n) - q_min) / Q_span``
  ``- w_latency latency / deadline - w_resource compute_s / ref_compute_s``
* missed (deadline or quality): ``-1 - w_resource compute_s / ref_compute_s`` (resources were spent)
* rejected: ``-reject_penalty`` (default 1; nothing spent).

``compute_s`` is the node-seconds the request occupied and ``ref_compute_s`` what ``n_ask`` steps
take on the fastest node. Observation (float32): per node backlog at arrival / 2 s, FLOP/s /
max FLOP/s, usable, latency of all asked steps there alone / deadline (10 if unusable); then ``[n_ask / max steps, allowed reduction / max reduction, deadline / 3 s,
wireless time / deadline, users left / 20]``; with ``lookahead_obs`` (default) also the
immediate reward of every action + 3 (masked ones: 0), i.e. the one-step outcome a scheduler with
the node model can compute, so the agent learns the long-term correction on top of it. ``info["action_mask"]`` (int8, one per action) marks
the placements allowed now; every randomness comes from ``self.np_random``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from splitldm.analysis.costs import ChannelParams, ModelFlops, model_flops, path_loss_db
from splitldm.analysis.limits import awgn_capacity
from splitldm.eval.quality import QualityTable
from splitldm.rl.envs.meg import default_quality_table

__all__ = ["ChainPlacement", "greedy_channel_assignment", "PlacementState"]


def _pos(name: str, v, allow_zero: bool = False) -> float:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return float(v)


def greedy_channel_assignment(gains_db: np.ndarray) -> np.ndarray:
    """Channel of each user by the greedy rule "best channel gain first".

    ``gains_db``: (U, K) gain of user ``u`` on channel ``k`` (dB, any common offset). Repeatedly
    assign the (unassigned user, free channel) pair with the highest gain; once all ``K`` channels
    are taken in a round they are all freed again, so with ``U > K`` channels are reused
    (time-shared). Ties: lowest user index, then lowest channel index. Returns (U,) int64.
    """
    g = np.asarray(gains_db, dtype=float)
    if g.ndim != 2 or g.shape[1] < 1:
        raise ValueError(f"gains_db: expected shape (users, channels) with >= 1 channel, got {g.shape}")
    if np.any(np.isnan(g)):
        raise ValueError("gains_db: contains NaN")
    U, K = g.shape
    out = np.full(U, -1, dtype=np.int64)
    free = np.ones(K, bool)
    for _ in range(U):
        if not free.any():
            free[:] = True
        masked = np.where((out[:, None] < 0) & free[None, :], g, -np.inf)
        u, k = np.unravel_index(int(np.argmax(masked)), masked.shape)  # first max in row-major order
        out[u], free[k] = k, False
    return out


@dataclass
class PlacementState:
    """What the environment's dynamics depend on: node busy-until times and the next request index."""

    avail: np.ndarray      # (N,) absolute time [s] each node becomes free
    t: int = 0

    def copy(self) -> "PlacementState":
        return PlacementState(self.avail.copy(), self.t)


class ChainPlacement(gym.Env):
    """Place each request's denoising steps on a chain of heterogeneous edge nodes (see module doc).

    Args:
        flops_per_s, memory_gb: per node (same length N >= 1; > 0). Default: 4 nodes.
        model: config name or `ModelFlops` of the served model (default SD-1.5 at 512 px).
        model_memory_gb: memory the model needs on a node (default: counted parameters x 2 bytes).
        num_users: int >= 1, or a list of ints (one drawn per episode).
        num_channels, bandwidth_hz: orthogonal channels and the bandwidth of each.
        max_chain: longest chain (1 <= max_chain <= N). reductions: step reductions offered.
        deadline_s: (lo, hi) deadline range [s]; ask_steps: (lo, hi) asked step counts.
        max_slack: a request's quality floor is ``Q(n_ask - s)``, ``s ~ U{0..max_slack}``.
        w_quality, w_latency, w_resource, reject_penalty: reward weights (>= 0).

    A masked action passed to `step` is not executed: the request is rejected and
    ``info["infeasible_action"]`` is True (agents here never choose one).
    """

    metadata = {"render_modes": []}

    def __init__(self, flops_per_s: Sequence[float] = (40e12, 25e12, 15e12, 10e12),
                 memory_gb: Sequence[float] = (24.0, 16.0, 8.0, 8.0), model: str | ModelFlops = "sd15",
                 model_memory_gb: float | None = None, num_users: int | Sequence[int] = 5,
                 num_channels: int = 8, bandwidth_hz: float = 5e6, channel: ChannelParams = ChannelParams(),
                 max_chain: int = 2, reductions: Sequence[int] = (0, 2, 4), frame_s: float = 1.0,
                 queue_limit_s: float = 2.0, deadline_s: tuple[float, float] = (1.5, 3.0),
                 ask_steps: tuple[int, int] = (8, 12), max_slack: int = 4,
                 link_rate_bps: float = 1e9, link_latency_s: float = 0.005, ue_decode_s: float = 0.05,
                 guidance: bool = True, quality: QualityTable | None = None,
                 w_quality: float = 0.2, w_latency: float = 0.3, w_resource: float = 0.3,
                 reject_penalty: float = 1.0, lookahead_obs: bool = True):
        super().__init__()
        f = np.asarray(flops_per_s, dtype=float)
        m = np.asarray(memory_gb, dtype=float)
        if f.ndim != 1 or len(f) < 1:
            raise ValueError(f"flops_per_s: expected one value per node (>= 1 node), got {flops_per_s!r}")
        if m.shape != f.shape:
            raise ValueError(f"memory_gb: expected {len(f)} values (one per node), got {memory_gb!r}")
        if np.any(~np.isfinite(f)) or np.any(f <= 0):
            raise ValueError(f"flops_per_s: capacities must be finite and > 0, got {flops_per_s!r}")
        if np.any(~np.isfinite(m)) or np.any(m <= 0):
            raise ValueError(f"memory_gb: capacities must be finite and > 0, got {memory_gb!r}")
        self.flops_per_s, self.memory_gb, self.N = f, m, len(f)
        self._blocks: dict[tuple, tuple[int, ...]] = {}
        self.flops = model if isinstance(model, ModelFlops) else model_flops(model)
        if model_memory_gb is None:
            from splitldm.rl.envs.caching import model_memory_gb as _mem

            model_memory_gb = _mem(model if isinstance(model, str) else self.flops.model)
        self.model_memory_gb = _pos("model_memory_gb", model_memory_gb)
        self.usable = self.memory_gb >= self.model_memory_gb
        if not self.usable.any():
            raise ValueError(f"memory_gb: no node can hold the model ({self.model_memory_gb:.2f} GB needed, "
                             f"largest node has {self.memory_gb.max():.2f} GB)")
        users = [num_users] if isinstance(num_users, (int, np.integer)) else list(num_users)
        if not users or any(isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 1 for u in users):
            raise ValueError(f"num_users: expected an int >= 1 or a list of them, got {num_users!r}")
        self.user_choices = [int(u) for u in users]
        if not isinstance(num_channels, (int, np.integer)) or num_channels < 1:
            raise ValueError(f"num_channels: expected an int >= 1, got {num_channels!r}")
        self.num_channels = int(num_channels)
        self.bandwidth_hz = _pos("bandwidth_hz", bandwidth_hz)
        self.channel = channel
        if not isinstance(max_chain, (int, np.integer)) or not 1 <= max_chain <= self.N:
            raise ValueError(f"max_chain: expected an int in [1, {self.N}], got {max_chain!r}")
        self.max_chain = int(max_chain)
        red = [int(d) for d in reductions]
        if not red or red[0] != 0 or any(d < 0 for d in red) or sorted(set(red)) != red:
            raise ValueError(f"reductions: expected increasing ints >= 0 starting at 0, got {reductions!r}")
        self.reductions = red
        self.frame_s = _pos("frame_s", frame_s, allow_zero=True)
        self.queue_limit_s = _pos("queue_limit_s", queue_limit_s, allow_zero=True)
        lo, hi = (float(x) for x in deadline_s)
        if not 0 < lo <= hi:
            raise ValueError(f"deadline_s: expected 0 < lo <= hi seconds, got {deadline_s!r}")
        self.deadline_s = (lo, hi)
        alo, ahi = (int(x) for x in ask_steps)
        if not 1 <= alo <= ahi:
            raise ValueError(f"ask_steps: expected 1 <= lo <= hi, got {ask_steps!r}")
        self.ask_steps = (alo, ahi)
        if not isinstance(max_slack, (int, np.integer)) or max_slack < 0:
            raise ValueError(f"max_slack: expected an int >= 0, got {max_slack!r}")
        self.max_slack = int(max_slack)
        self.link_rate_bps = _pos("link_rate_bps", link_rate_bps)
        self.link_latency_s = _pos("link_latency_s", link_latency_s, allow_zero=True)
        self.ue_decode_s = _pos("ue_decode_s", ue_decode_s, allow_zero=True)
        for name, v in (("w_quality", w_quality), ("w_latency", w_latency), ("w_resource", w_resource),
                        ("reject_penalty", reject_penalty)):
            _pos(name, v, allow_zero=True)
        self.w_quality, self.w_latency, self.w_resource = float(w_quality), float(w_latency), float(w_resource)
        self.reject_penalty = float(reject_penalty)
        self.lookahead_obs = bool(lookahead_obs)

        if quality is None:
            self.quality, self.quality_source = default_quality_table()
        elif isinstance(quality, QualityTable):
            self.quality, self.quality_source = quality, quality.meta.get("source", "given")
        else:
            raise TypeError(f"quality: expected a QualityTable or None, got {type(quality).__name__}")
        self.min_steps = int(self.quality.steps[0])
        self._q = {n: self.quality.reward(n, 0.0) for n in range(1, self.ask_steps[1] + 1)}
        self.q_span = max(1e-6, self._q[self.ask_steps[1]] - self._q[max(1, self.ask_steps[0] - self.max_slack)])

        self.step_flops = self.flops.unet_step * (2 if guidance else 1)
        self.latent_bits = float(self.flops.latent_values * 16)
        # actions: 0 = reject; then every (chain over usable nodes, reduction)
        nodes = [int(i) for i in np.flatnonzero(self.usable)]
        chains = [c for L in range(1, self.max_chain + 1) for c in itertools.permutations(nodes, L)]
        self.actions: list[tuple[tuple[int, ...], int] | None] = [None] + [(c, d) for c in chains for d in red]
        self.action_space = spaces.Discrete(len(self.actions))
        obs_dim = 4 * self.N + 5 + (len(self.actions) if self.lookahead_obs else 0)
        self.observation_space = spaces.Box(0.0, 10.0, shape=(obs_dim,), dtype=np.float32)
        self.state = PlacementState(np.zeros(self.N), 0)
        self._new_frame(np.random.default_rng(0), self.user_choices[0])

    # ------------------------------------------------------------------ episode draw
    def _new_frame(self, rng: np.random.Generator, users: int) -> None:
        U = users
        self.num_users = U
        self.arrival = np.sort(rng.uniform(0.0, self.frame_s, size=U))
        self.n_ask = rng.integers(self.ask_steps[0], self.ask_steps[1] + 1, size=U)
        slack = rng.integers(0, self.max_slack + 1, size=U)
        self.q_min = np.array([self._q[max(1, int(n - s))] for n, s in zip(self.n_ask, slack)])
        self.deadline = rng.uniform(*self.deadline_s, size=U)
        d = rng.uniform(*self.channel.distance_m, size=(U, 1))
        fade = rng.exponential(1.0, size=(U, self.num_channels)) if self.channel.rayleigh \
            else np.ones((U, self.num_channels))
        self.gains_db = path_loss_db(d) + 10 * np.log10(np.maximum(fade, 1e-30))
        self.assignment = greedy_channel_assignment(self.gains_db)
        share = np.bincount(self.assignment, minlength=self.num_channels)[self.assignment]
        g = self.gains_db[np.arange(U), self.assignment]
        self.rate_bps = self.bandwidth_hz * np.asarray(awgn_capacity(self.channel.tx_power_dbm + g - self.channel.noise_dbm)) / share
        self.tx_s = self.latent_bits / self.rate_bps

    # ------------------------------------------------------------------ dynamics (pure)
    def allowed_steps(self, u: int) -> list[int]:
        """Step counts of each reduction for request ``u`` (at least the table's smallest)."""
        return [max(self.min_steps, int(self.n_ask[u]) - d) for d in self.reductions]

    def mask(self, state: PlacementState | None = None) -> np.ndarray:
        """(A,) int8: 1 where the action may be taken for the current request."""
        s = self.state if state is None else state
        out = np.zeros(len(self.actions), np.int8)
        out[0] = 1
        if s.t >= self.num_users:
            return out
        ok = np.maximum(s.avail - self.arrival[s.t], 0.0) <= self.queue_limit_s
        for i, a in enumerate(self.actions[1:], 1):
            out[i] = all(ok[n] for n in a[0])
        return out

    def action_mask(self) -> np.ndarray:
        return self.mask()

    def split_blocks(self, chain: Sequence[int], steps: int) -> list[int]:
        """Steps per node of ``chain``, proportional to FLOP/s (largest remainder, in chain order)."""
        key = (tuple(int(n) for n in chain), int(steps))
        if key in self._blocks:  # pure function of (chain, steps): memoised
            return list(self._blocks[key])
        w = self.flops_per_s[list(chain)]
        raw = steps * w / w.sum()
        k = np.floor(raw).astype(int)
        for i in np.argsort(-(raw - k), kind="stable")[: steps - k.sum()]:
            k[i] += 1
        self._blocks[key] = tuple(int(x) for x in k)
        return list(self._blocks[key])

    def simulate(self, state: PlacementState, action: int) -> tuple[PlacementState, float, dict[str, Any]]:
        """Outcome of ``action`` for request ``state.t`` without touching the environment.

        Returns (next state, reward, info). Used by `step`, the greedy baseline and the exhaustive optimum.
        """
        u = state.t
        new = state.copy()
        new.t += 1
        arr, dl = float(self.arrival[u]), float(self.deadline[u])
        if action == 0:
            return new, -self.reject_penalty, {"served": False, "rejected": True, "latency_s": 0.0,
                                               "late": False, "quality_ok": False, "steps": 0, "chain": (),
                                               "compute_s": 0.0}
        chain, d = self.actions[action]
        steps = max(self.min_steps, int(self.n_ask[u]) - d)
        t = arr
        compute = 0.0
        hop = self.link_latency_s + self.latent_bits / self.link_rate_bps
        for i, (n, k) in enumerate(zip(chain, self.split_blocks(chain, steps))):
            if i > 0:
                t += hop
            if k == 0:
                continue
            dur = k * self.step_flops / self.flops_per_s[n]
            start = max(t, new.avail[n])
            t = start + dur
            new.avail[n] = t
            compute += dur
        if chain[-1] != 0:
            t += hop  # back to the access node
        latency = t + float(self.tx_s[u]) + self.ue_decode_s - arr
        q = self._q[steps]
        q_ok = q >= self.q_min[u] - 1e-9
        late = latency > dl
        ref = int(self.n_ask[u]) * self.step_flops / self.flops_per_s.max()
        res = self.w_resource * compute / ref
        if q_ok and not late:
            r = 1.0 + self.w_quality * (q - self.q_min[u]) / self.q_span - self.w_latency * latency / dl - res
        else:
            r = -1.0 - res
        return new, float(r), {"served": bool(q_ok and not late), "rejected": False, "latency_s": float(latency),
                               "late": bool(late), "quality_ok": bool(q_ok), "steps": steps, "chain": tuple(chain),
                               "compute_s": float(compute), "quality": float(q)}

    def request_frame(self, n_ask: int, deadline_s: float, rate_bps: float, slack: int = 0,
                      backlog_s: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Make the frame one live request arriving now (serving, `splitldm.serve.chain`): (obs, mask).

        ``n_ask``: its steps, in ``[min_steps, ask_steps[1]]``; ``deadline_s`` (s, > 0); ``rate_bps``: its
        wireless rate (bit/s, > 0); ``slack``: steps the quality floor allows dropping (``q_min = Q(n_ask -
        slack)``); ``backlog_s``: (N,) seconds each node is still busy (default idle). The episode's
        other draws are not used; `step` then places this one request.
        """
        lo, hi = self.min_steps, self.ask_steps[1]
        if isinstance(n_ask, bool) or not isinstance(n_ask, (int, np.integer)) or not lo <= n_ask <= hi:
            raise ValueError(f"n_ask: expected an int in [{lo}, {hi}] (the steps this placement model knows), got {n_ask!r}")
        if isinstance(slack, bool) or not isinstance(slack, (int, np.integer)) or slack < 0:
            raise ValueError(f"slack: expected an int >= 0, got {slack!r}")
        deadline = _pos("deadline_s", deadline_s)
        rate = _pos("rate_bps", rate_bps)
        avail = np.zeros(self.N) if backlog_s is None else np.asarray(backlog_s, dtype=float)
        if avail.shape != (self.N,) or np.any(~np.isfinite(avail)) or np.any(avail < 0):
            raise ValueError(f"backlog_s: expected {self.N} finite seconds >= 0, got {backlog_s!r}")
        self.num_users = 1
        self.arrival = np.zeros(1)
        self.n_ask = np.array([int(n_ask)])
        self.q_min = np.array([self._q[max(1, int(n_ask) - int(slack))]])
        self.deadline = np.array([deadline])
        self.gains_db = np.zeros((1, self.num_channels))
        self.assignment = np.zeros(1, np.int64)
        self.rate_bps = np.array([rate])
        self.tx_s = self.latent_bits / self.rate_bps
        self.state = PlacementState(avail.copy(), 0)
        return self.observe(), self.mask()

    # ------------------------------------------------------------------ gym API
    def observe(self, state: PlacementState | None = None) -> np.ndarray:
        s = self.state if state is None else state
        u = min(s.t, self.num_users - 1)
        backlog = np.maximum(s.avail - self.arrival[u], 0.0) / 2.0
        slack = int(self.n_ask[u]) - min(n for n in self.allowed_steps(u) if self._q[n] >= self.q_min[u] - 1e-9)
        req = [self.n_ask[u] / self.ask_steps[1], slack / max(1, self.reductions[-1]), self.deadline[u] / 3.0,
               self.tx_s[u] / self.deadline[u], (self.num_users - s.t) / 20.0]
        # latency of all asked steps on each node alone, relative to the deadline (the monolithic option)
        alone = (2 * backlog + self.n_ask[u] * self.step_flops / self.flops_per_s + self.tx_s[u]) / self.deadline[u]
        obs = np.concatenate([backlog, self.flops_per_s / self.flops_per_s.max(), self.usable.astype(float),
                              np.where(self.usable, alone, 10.0), req])
        if self.lookahead_obs:  # immediate reward of every action (masked: the floor), shifted to >= 0
            look = np.zeros(len(self.actions))
            if s.t < self.num_users:
                m = self.mask(s)
                look = np.array([self.simulate(s, i)[1] if m[i] else -3.0 for i in range(len(self.actions))])
                look = np.clip(look, -3.0, 2.0) + 3.0
            obs = np.concatenate([obs, look])
        return np.clip(obs, 0.0, 10.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        users = (options or {}).get("num_users")
        if users is None:
            users = self.user_choices[int(self.np_random.integers(len(self.user_choices)))]
        if isinstance(users, bool) or not isinstance(users, (int, np.integer)) or users < 1:
            raise ValueError(f"num_users: expected an int >= 1, got {users!r}")
        self._new_frame(self.np_random, int(users))
        self.state = PlacementState(np.zeros(self.N), 0)
        return self.observe(), self._info()

    def _info(self, **extra) -> dict[str, Any]:
        return {"action_mask": self.mask(), "num_users": self.num_users, "quality_source": self.quality_source, **extra}

    def step(self, action):
        if self.state.t >= self.num_users:
            raise RuntimeError("step: episode is over; call reset()")
        a = np.asarray(action)
        if a.size != 1 or not float(a.reshape(-1)[0]).is_integer():
            raise ValueError(f"action: expected one integer in [0, {len(self.actions)}), got {action!r}")
        a = int(a.reshape(-1)[0])
        if not 0 <= a < len(self.actions):
            raise ValueError(f"action: {a} outside [0, {len(self.actions)})")
        infeasible = not self.mask()[a]
        self.state, r, out = self.simulate(self.state, 0 if infeasible else a)
        out["infeasible_action"] = infeasible
        done = self.state.t >= self.num_users
        return self.observe(), r, done, False, self._info(**out)
