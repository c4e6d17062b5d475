"""Two-timescale model caching and resource allocation at an edge server (T2DRL).

* `ModelCaching` ("splitldm/ModelCaching-v0"): one step = one **frame**. The action picks which
  generative models the ES keeps in memory (an index into `subsets`, every subset of the catalogue
  that fits ``memory_gb``); the frame's ``slots_per_frame`` slots are then served, each slot's
  compute and bandwidth shared among the users by ``allocator`` (default: equal shares). Reward: the
  frame's summed slot rewards minus ``w_load`` x GB newly loaded.
* `ResourceAllocation` ("splitldm/ResourceAllocation-v0"): the same system seen at the **slot**
  timescale. One step = one slot; the action is a share of compute and of bandwidth per user slot
  (``Box(0, 1, (2 U,))``, each half normalised over the active users; all zeros = equal shares). The
  cache is set at every frame start by ``cacher`` (default LFU, `ModelCaching.lfu_subset`).

System (per slot): ``num_users`` users (an int or a list, one drawn per frame; at most
``max_users``) each ask one model of the catalogue, drawn from a Zipf popularity whose ranking drifts
between frames (probability ``drift``: two models swap ranks). User ``u`` has a deadline
``deadline_s`` and a downlink SNR (path loss at U[200, 300] m + Rayleigh, `splitldm.analysis.costs`).

* Requested model cached: the ES gives user ``u`` a compute share ``c_u`` of ``flops_per_s`` and a
  bandwidth share ``b_u`` of ``bandwidth_hz``; it runs the largest step count ``n`` of the model's
  grid with ``n step_flops / (c_u F) + latent_bits / (b_u B log2(1 + SNR)) <= deadline`` (the least
  steps if none fits: late). Quality = the model's curve at ``n``.
* Not cached: the cloud serves it at its best quality after ``cloud_delay_s``, then the latent
  crosses the ES downlink with share ``b_u``.
* User reward: ``w_quality quality - w_latency latency / deadline - late_penalty [late]``; a user
  starved of a resource counts at most ``3 deadline`` of latency (it gives up).

Catalogue (`default_catalog`): the embedded teacher ``tiny``, its distilled student ``tiny-lcm``
(same architecture, 1-8 steps), and ``sd15``, ``sd21``, ``sdxl`` with FLOPs from
`splitldm.analysis.costs.model_flops` and memory from their parameter count (fp16, counted on the meta
device). Quality curves: the shape vs steps comes from the measured `QualityTable` when one is
shipped (``checkpoints/quality/<name>.json``), else from the stand-in; each model's ceiling
(``tiny`` 0.35 ... ``sdxl`` 0.95) is an assumed relative quality, not a measurement. Everything
random comes from ``self.np_random``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from splitldm.analysis.costs import ChannelParams, ModelFlops, model_flops, model_params
from splitldm.analysis.limits import awgn_capacity
from splitldm.eval.quality import QualityTable
from splitldm.rl.envs.meg import stand_in_quality_table
from splitldm.zoo import checkpoints_dir

__all__ = ["GenModel", "default_catalog", "model_memory_gb", "ModelCaching", "ResourceAllocation", "CEILINGS"]


@functools.lru_cache(maxsize=16)
def model_memory_gb(name: str, bytes_per_param: int = 2) -> float:
    """Memory of config ``name``'s weights (denoiser + VAE + text encoders) in GB (1e9 bytes), parameters
    counted on the meta device by `splitldm.analysis.costs.model_params` (any family: UNet and DiT names),
    ``bytes_per_param`` 2 = fp16."""
    return model_params(name) * bytes_per_param / 1e9


@dataclass(frozen=True)
class GenModel:
    """One cacheable generative model.

    ``memory_gb``: weights in memory; ``step_flops``: FLOPs of one denoising step (with guidance);
    ``latent_bits``: what crosses to the user; ``steps`` / ``quality``: its quality (0..1) per step
    count, increasing steps; ``source``: where the curve comes from.
    """

    name: str
    memory_gb: float
    step_flops: float
    latent_bits: float
    steps: tuple[int, ...]
    quality: tuple[float, ...]
    source: str = "stand-in"

    def __post_init__(self):
        for f in ("memory_gb", "step_flops", "latent_bits"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{f}: expected a finite number > 0 for model {self.name!r}, got {v!r}")
        if len(self.steps) == 0 or len(self.steps) != len(self.quality):
            raise ValueError(f"steps, quality: expected equal non-empty lists for model {self.name!r}")
        if list(self.steps) != sorted(set(self.steps)) or self.steps[0] < 1:
            raise ValueError(f"steps: expected increasing step counts >= 1 for model {self.name!r}")

    def quality_at(self, steps: int) -> float:
        return float(self.quality[self.steps.index(int(steps))])


#: Assumed relative quality ceiling of each catalogue model (not measured; orders them by size).
CEILINGS = {"tiny": 0.35, "tiny-lcm": 0.33, "sd15": 0.75, "sd21": 0.8, "sdxl": 0.95}


def _teacher_shape(name: str) -> tuple[tuple[int, ...], tuple[float, ...], str]:
    """Quality-vs-steps shape (max 1) from a shipped measured table, else from the stand-in table."""
    path = checkpoints_dir() / "quality" / f"{name}.json"
    if path.exists():
        table, src = QualityTable.load(path), str(path)
    else:
        table, src = stand_in_quality_table(), "stand-in"
    # shape(n) = 1 - 0.8 MSE(n) / MSE(fewest steps): 0.2 at the fewest steps, -> 1 as MSE -> 0
    mse = np.array([table.mse(n, 0.0) for n in table.steps])
    return tuple(table.steps), tuple((1.0 - 0.8 * mse / mse[0]).tolist()), src


def _lcm_shape() -> tuple[tuple[int, ...], tuple[float, ...], str]:
    path = checkpoints_dir() / "quality" / "tiny-lcm.json"
    if path.exists():
        return _teacher_shape("tiny-lcm")
    # Stand-in for a consistency-distilled student: most of its quality at 1-4 steps.
    steps = (1, 2, 4, 8)
    return steps, (0.7, 0.88, 0.97, 1.0), "stand-in"


def default_catalog(names: Sequence[str] = ("tiny", "tiny-lcm", "sd15", "sd21", "sdxl"),
                    flops: Mapping[str, ModelFlops] | None = None,
                    memory: Mapping[str, float] | None = None) -> list[GenModel]:
    """The catalogue of cacheable models. ``flops`` / ``memory`` (GB) override counted values by name."""
    out = []
    for name in names:
        base = "tiny" if name == "tiny-lcm" else name
        if name not in CEILINGS:
            raise ValueError(f"names: unknown model {name!r}; choose from {sorted(CEILINGS)}")
        mf = (flops or {}).get(name) or (flops or {}).get(base) or model_flops(base)
        mem = (memory or {}).get(name)
        mem = model_memory_gb(base) if mem is None else float(mem)
        steps, shape, src = _lcm_shape() if name == "tiny-lcm" else _teacher_shape(base)
        out.append(GenModel(name, mem, 2.0 * mf.unet_step, float(mf.latent_values * 16), steps,
                            tuple(CEILINGS[name] * s for s in shape), src))
    return out


def _check_pos(name: str, v, allow_zero=False) -> float:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return float(v)


class ModelCaching(gym.Env):
    """Frame-level caching decisions (see the module docstring).

    Args:
        catalog: list of `GenModel` (default `default_catalog()`).
        memory_gb, flops_per_s, bandwidth_hz: the ES's memory, compute and downlink band (> 0).
        num_users: int in [1, max_users] or a list of them; max_users: user slots of the allocation
            observation/action (default: the largest num_users).
        slots_per_frame, frames_per_episode: the two timescales.
        zipf, drift: popularity exponent and the per-frame probability that two ranks swap.
        allocator: ``allocator(slot_obs, env) -> (2 max_users,)`` shares, or None (equal shares).

    Observation (float32, 3 M + 1): per model ``[share of last frame's requests, cached, memory /
    ES memory]`` and the fraction of the episode left. ``info["action_mask"]``: all subsets allowed.
    """

    metadata = {"render_modes": []}

    def __init__(self, catalog: Sequence[GenModel] | None = None, memory_gb: float = 8.0,
                 flops_per_s: float = 200e12, bandwidth_hz: float = 20e6, num_users: int | Sequence[int] = 4,
                 max_users: int | None = None, slots_per_frame: int = 10, frames_per_episode: int = 20,
                 zipf: float = 0.8, drift: float = 0.3, deadline_s: tuple[float, float] = (2.0, 4.0),
                 cloud_delay_s: float = 3.5, channel: ChannelParams = ChannelParams(),
                 w_quality: float = 1.0, w_latency: float = 0.2, late_penalty: float = 0.5,
                 w_load: float = 0.02, allocator: Callable | None = None):
        super().__init__()
        # what a slot-level twin (`ResourceAllocation`) needs to rebuild the same system
        self.init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "allocator", "__class__")}
        self.catalog = list(default_catalog() if catalog is None else catalog)
        if not self.catalog or not all(isinstance(m, GenModel) for m in self.catalog):
            raise ValueError("catalog: expected a non-empty list of GenModel")
        self.memory_gb = _check_pos("memory_gb", memory_gb)
        self.flops_per_s = _check_pos("flops_per_s", flops_per_s)
        self.bandwidth_hz = _check_pos("bandwidth_hz", bandwidth_hz)
        if min(m.memory_gb for m in self.catalog) > self.memory_gb:
            raise ValueError(f"memory_gb: {self.memory_gb} GB holds no model of the catalogue "
                             f"(smallest needs {min(m.memory_gb for m in self.catalog):.3g} GB)")
        users = [num_users] if isinstance(num_users, (int, np.integer)) else list(num_users)
        if not users or any(isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 1 for u in users):
            raise ValueError(f"num_users: expected an int >= 1 or a list of them, got {num_users!r}")
        self.user_choices = [int(u) for u in users]
        self.max_users = int(max_users) if max_users is not None else max(self.user_choices)
        if self.max_users < max(self.user_choices):
            raise ValueError(f"max_users: {max_users} is below num_users {num_users!r}")
        for name, v in (("slots_per_frame", slots_per_frame), ("frames_per_episode", frames_per_episode)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        self.S, self.F = int(slots_per_frame), int(frames_per_episode)
        self.zipf = _check_pos("zipf", zipf, allow_zero=True)
        if not 0 <= drift <= 1:
            raise ValueError(f"drift: expected a probability in [0, 1], got {drift!r}")
        self.drift = float(drift)
        lo, hi = (float(x) for x in deadline_s)
        if not 0 < lo <= hi:
            raise ValueError(f"deadline_s: expected 0 < lo <= hi seconds, got {deadline_s!r}")
        self.deadline_s = (lo, hi)
        self.cloud_delay_s = _check_pos("cloud_delay_s", cloud_delay_s, allow_zero=True)
        self.channel = channel
        self.w_quality, self.w_latency = _check_pos("w_quality", w_quality, True), _check_pos("w_latency", w_latency, True)
        self.late_penalty, self.w_load = _check_pos("late_penalty", late_penalty, True), _check_pos("w_load", w_load, True)
        self.allocator = allocator
        self.max_latency_factor = 3.0

        M = len(self.catalog)
        self.M = M
        mem = np.array([m.memory_gb for m in self.catalog])
        self.subsets = [tuple(s) for k in range(M + 1) for s in itertools.combinations(range(M), k)
                        if mem[list(s)].sum() <= self.memory_gb + 1e-9]
        self._mem = mem
        self._flops_step = np.array([m.step_flops for m in self.catalog])
        self._bits = np.array([m.latent_bits for m in self.catalog])
        self._best_q = np.array([m.quality[-1] for m in self.catalog])
        self._step_grid = [np.array(m.steps, float) for m in self.catalog]
        self._q_grid = [np.array(m.quality, float) for m in self.catalog]
        self.action_space = spaces.Discrete(len(self.subsets))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(3 * M + 1,), dtype=np.float32)
        self.slot_obs_dim = 6 * self.max_users
        self._init_state(np.random.default_rng(0))

    # ------------------------------------------------------------------ state
    def _init_state(self, rng) -> None:
        self.rank = rng.permutation(self.M)          # rank[i] = popularity rank of model i
        self.cache: tuple[int, ...] = ()
        self.frame = 0
        self.last_counts = np.zeros(self.M)
        self.total_counts = np.zeros(self.M)
        self.last_counts_frame = np.zeros(self.M)
        self._draw_frame(rng)

    def popularity(self) -> np.ndarray:
        p = 1.0 / (self.rank + 1.0) ** self.zipf
        return p / p.sum()

    def _draw_frame(self, rng) -> None:
        """Requests of the next frame: (S, max_users) model, SNR [dB], deadline [s], active."""
        if self.frame > 0 and rng.random() < self.drift:
            i, j = rng.choice(self.M, 2, replace=False)
            self.rank[i], self.rank[j] = self.rank[j], self.rank[i]
        U = self.user_choices[int(rng.integers(len(self.user_choices)))]
        self.num_users = U
        shape = (self.S, self.max_users)
        self.req_model = rng.choice(self.M, size=shape, p=self.popularity())
        d = rng.uniform(*self.channel.distance_m, size=shape)
        fade = rng.exponential(1.0, size=shape) if self.channel.rayleigh else np.ones(shape)
        from splitldm.analysis.costs import snr_db

        self.req_snr_db = snr_db(self.channel.tx_power_dbm, self.channel.noise_dbm, d, fade)
        self.req_deadline = rng.uniform(*self.deadline_s, size=shape)
        self.req_active = np.zeros(shape, bool)
        self.req_active[:, :U] = True
        self.slot = 0

    # ------------------------------------------------------------------ one slot
    def slot_observation(self, slot: int | None = None, cache: Sequence[int] | None = None) -> np.ndarray:
        """(6 max_users,) float32 per user ``[log10 step FLOPs / 14, cached, SNR / 30, deadline / 4,
        best quality, active]`` (inactive users all zeros)."""
        s = self.slot if slot is None else slot
        cache = self.cache if cache is None else cache
        m = self.req_model[s]
        f = np.stack([np.log10(self._flops_step[m]) / 14.0, np.isin(m, cache).astype(float),
                      np.clip(self.req_snr_db[s] / 30.0, -1, 1), self.req_deadline[s] / 4.0,
                      self._best_q[m], np.ones(self.max_users)], 1)
        f[~self.req_active[s]] = 0.0
        return f.reshape(-1).astype(np.float32)

    def normalise(self, action, slot: int | None = None, cache: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Validated allocation ``(2 max_users,)`` in [0, 1] -> (compute shares, bandwidth shares) of the
        current slot's users; inactive users get 0, each resource sums to 1 over active users (all-zero
        -> equal). Compute given to cloud-served users is handed back to the edge-served ones."""
        a = np.asarray(action, dtype=float).reshape(-1)
        if a.shape != (2 * self.max_users,):
            raise ValueError(f"action: expected shape ({2 * self.max_users},), got {np.shape(action)}")
        if not np.all(np.isfinite(a)) or np.any(a < -1e-6) or np.any(a > 1 + 1e-6):
            raise ValueError("action: expected finite shares in [0, 1]")
        a = np.clip(a, 0.0, 1.0)
        s = self.slot if slot is None else slot
        act = self.req_active[s]
        edge = act & np.isin(self.req_model[s], self.cache if cache is None else cache)
        out = []
        for part, who in ((a[: self.max_users], edge), (a[self.max_users:], act)):
            w = np.where(who, part, 0.0)
            out.append(w / w.sum() if w.sum() > 0 else who / max(1, who.sum()))
        return out[0], out[1]

    def user_outcomes(self, slot: int, cache: Sequence[int], compute: np.ndarray, band: np.ndarray
                      ) -> dict[str, np.ndarray]:
        """Per user (max_users,): reward, latency [s], steps, quality, late, edge (served at the ES).

        ``compute``/``band``: shares (any shape broadcasting to (..., max_users)); vectorised over
        leading axes (used by the search optimum)."""
        m, act = self.req_model[slot], self.req_active[slot]
        dl, snr = self.req_deadline[slot], self.req_snr_db[slot]
        edge = np.isin(m, cache)
        c, b = np.broadcast_arrays(np.asarray(compute, float), np.asarray(band, float))
        rate = np.maximum(b, 1e-12) * self.bandwidth_hz * np.asarray(awgn_capacity(snr))
        tx = self._bits[m] / rate
        lat = np.empty(c.shape)
        q = np.empty(c.shape)
        steps = np.zeros(c.shape)
        for u in range(self.max_users):
            mi = m[u]
            if not edge[u]:
                lat[..., u] = self.cloud_delay_s + tx[..., u]
                q[..., u] = self._best_q[mi]
                steps[..., u] = self._step_grid[mi][-1]
                continue
            per = self._flops_step[mi] / (np.maximum(c[..., u], 1e-12) * self.flops_per_s)
            budget = (dl[u] - tx[..., u]) / per                      # steps that fit the deadline
            grid = self._step_grid[mi]
            k = np.clip(np.searchsorted(grid, budget, side="right") - 1, 0, len(grid) - 1)
            steps[..., u] = grid[k]
            q[..., u] = self._q_grid[mi][k]
            lat[..., u] = grid[k] * per + tx[..., u]
        late = lat > dl
        lat = np.minimum(lat, self.max_latency_factor * dl)  # a starved user waits at most this long
        r = self.w_quality * q - self.w_latency * lat / dl - self.late_penalty * late
        r = np.where(act, r, 0.0)
        return {"reward": r, "latency": np.where(act, lat, 0.0), "steps": steps, "quality": q,
                "late": late & act, "edge": edge & act}

    def serve_slot(self, action) -> tuple[float, dict[str, Any]]:
        """Serve the current slot with allocation ``action``; returns (reward, info) and advances."""
        c, b = self.normalise(action)
        out = self.user_outcomes(self.slot, self.cache, c, b)
        act = self.req_active[self.slot]
        np.add.at(self.last_counts_frame, self.req_model[self.slot][act], 1)
        info = {"latency_s": float(out["latency"][act].mean()), "late_rate": float(out["late"][act].mean()),
                "quality": float(out["quality"][act].mean()), "edge_rate": float(out["edge"][act].mean()),
                "compute_share": c, "bandwidth_share": b}
        self.slot += 1
        return float(out["reward"].sum()), info

    # ------------------------------------------------------------------ frame API (gym)
    def _obs(self) -> np.ndarray:
        share = self.last_counts / max(1.0, self.last_counts.sum())
        cached = np.isin(np.arange(self.M), self.cache).astype(float)
        left = (self.F - self.frame) / self.F
        return np.concatenate([share, cached, np.minimum(self._mem / self.memory_gb, 1.0), [left]]).astype(np.float32)

    def action_mask(self) -> np.ndarray:
        return np.ones(len(self.subsets), np.int8)

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        self._init_state(self.np_random)
        return self._obs(), {"action_mask": self.action_mask(), "num_users": self.num_users}

    def set_cache(self, action) -> float:
        """Cache the subset ``action`` (index into `subsets`); returns GB newly loaded."""
        a = np.asarray(action)
        if a.size != 1 or not float(a.reshape(-1)[0]).is_integer() or not 0 <= int(a.reshape(-1)[0]) < len(self.subsets):
            raise ValueError(f"action: expected a subset index in [0, {len(self.subsets)}), got {action!r}")
        new = self.subsets[int(a.reshape(-1)[0])]
        loaded = float(self._mem[[i for i in new if i not in self.cache]].sum())
        self.cache = new
        return loaded

    def lfu_subset(self) -> int:
        """Least-frequently-used caching: models by requests so far this episode (ties: smaller first),
        added while they fit in memory. Returns the subset index (into `subsets`)."""
        order = sorted(range(self.M), key=lambda i: (-self.total_counts[i], self._mem[i]))
        chosen, used = [], 0.0
        for i in order:
            if used + self._mem[i] <= self.memory_gb + 1e-9:
                chosen.append(i)
                used += self._mem[i]
        return self.subsets.index(tuple(sorted(chosen)))

    def end_frame(self) -> None:
        self.last_counts = self.last_counts_frame.copy()
        self.total_counts += self.last_counts
        self.last_counts_frame = np.zeros(self.M)
        self.frame += 1
        self._draw_frame(self.np_random)

    def step(self, action):
        if self.frame >= self.F:
            raise RuntimeError("step: episode is over; call reset()")
        loaded = self.set_cache(action)
        total, lat, late, q = -self.w_load * loaded, [], [], []
        for _ in range(self.S):
            obs = self.slot_observation()
            alloc = np.ones(2 * self.max_users) if self.allocator is None else self.allocator(obs, self)
            r, info = self.serve_slot(alloc)
            total += r
            lat.append(info["latency_s"]); late.append(info["late_rate"]); q.append(info["quality"])
        cache = self.cache
        self.end_frame()
        done = self.frame >= self.F
        return self._obs(), float(total), False, done, {
            "action_mask": self.action_mask(), "cache": [self.catalog[i].name for i in cache],
            "loaded_gb": loaded, "latency_s": float(np.mean(lat)), "late_rate": float(np.mean(late)),
            "quality": float(np.mean(q)), "num_users": self.num_users}


class ResourceAllocation(gym.Env):
    """Slot-level view of `ModelCaching`: one step = one slot, the action shares compute and bandwidth.

    ``cacher(frame_obs, caching_env) -> subset index`` decides the cache at each frame start (default
    `ModelCaching.lfu_subset`, the rule of `splitldm.rl.oracles.caching.lfu_cache`); other keyword
    arguments go to `ModelCaching`. An episode is ``frames_per_episode``
    frames. Reward: the slot's summed user rewards.
    """

    metadata = {"render_modes": []}

    def __init__(self, cacher: Callable | None = None, **caching_kwargs):
        super().__init__()
        caching_kwargs.pop("allocator", None)
        self.core = ModelCaching(**caching_kwargs)
        self.cacher = cacher or _lfu
        U = self.core.max_users
        self.action_space = spaces.Box(0.0, 1.0, shape=(2 * U,), dtype=np.float32)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(6 * U,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        self.core._np_random = self.np_random  # one generator drives both timescales
        obs, _ = self.core.reset()
        self.core.set_cache(self.cacher(obs, self.core))
        return self.core.slot_observation(), {"cache": list(self.core.cache)}

    def step(self, action):
        if self.core.frame >= self.core.F:
            raise RuntimeError("step: episode is over; call reset()")
        r, info = self.core.serve_slot(action)
        if self.core.slot >= self.core.S:
            self.core.end_frame()
            if self.core.frame < self.core.F:
                self.core.set_cache(self.cacher(self.core._obs(), self.core))
        done = self.core.frame >= self.core.F
        obs = self.core.slot_observation() if not done else np.zeros(self.observation_space.shape, np.float32)
        return obs, r, False, done, info


def _lfu(obs, core: ModelCaching) -> int:
    """`ResourceAllocation`'s default frame cacher: `ModelCaching.lfu_subset`."""
    return core.lfu_subset()
