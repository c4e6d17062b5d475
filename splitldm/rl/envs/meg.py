"""Gymnasium environments for mobile edge generation (MEG) control.

* `MEGRates` ("splitldm/MEGRates-v0", flattened: "splitldm/MEGRatesFlat-v0"): one task (image
  request) per step, 64 per episode. Observe the task's channel SNR and the previous task's latency
  and energy; choose the number of denoising steps N in 4..12 and the token-merging ratio r. Reward:
  ``-log MSE`` of the received latent against the backbone's own 12-step output, read from a
  measured `splitldm.eval.quality.QualityTable`. Costs (``info["cost"]``): latency [s] and energy [J]
  from `splitldm.analysis.costs.split_cost`, against limits (3 s, 1.8 kJ by default).
* `SeedPower` ("splitldm/SeedPower-v0"): a seed of ``k`` complex symbols spread over ``M`` Rayleigh
  blocks with known gains; choose a power split (projected to the simplex x total power). Reward:
  ``-log`` reconstruction MSE of the shipped seed codec measured over blocks of different SNR
  (`splitldm.rl.envs.power_curve`), or of a closed-form / 1-D curve.

All randomness comes from ``self.np_random`` (seed it with ``reset(seed=...)``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from splitldm.analysis.costs import (
    ES_DEFAULT, UE_DEFAULT, ChannelParams, DeviceProfile, ModelFlops, channel_rate_bps, model_flops,
    sample_channel_gain_db, transmission,
)
from splitldm.analysis.limits import lmmse_mse
from splitldm.eval.quality import QualityTable
from splitldm.rl.envs.power_curve import PowerCurve, default_power_curve
from splitldm.zoo import checkpoints_dir

__all__ = ["MEGRates", "SeedPower", "default_quality_table", "stand_in_quality_table", "analog_mmse_curve",
           "DEFAULT_STEPS", "DEFAULT_MERGE_RATIOS"]

DEFAULT_STEPS = tuple(range(4, 13))
DEFAULT_MERGE_RATIOS = (0.0, 0.25, 0.5, 0.75)
SNR_OBS_CLIP_DB = 60.0  # observations are SNR/10 clipped to +-6
COST_OBS_CLIP = 4.0     # cost_obs: log2 relative load clipped to +-4 (1/16 .. 16 x the limit)


def stand_in_quality_table() -> QualityTable:
    """A placeholder table (NOT measured): MSE falls with steps, rises with merging.

    Only used when no measured table is shipped; environments built on it say so in
    ``info["quality_source"] == "stand-in"``.
    """
    steps = list(DEFAULT_STEPS)
    ratios = list(DEFAULT_MERGE_RATIOS)
    mse = np.array([[0.002 + 0.5 * ((12 - n) / 8) ** 1.5 + 0.2 * r ** 2 for r in ratios] for n in steps])
    return QualityTable(steps, ratios, [0.0], ["none"], {"latent_mse": mse[None, :, :, None]},
                        {"source": "stand-in (analytic, not measured)"})


def default_quality_table() -> tuple[QualityTable, str]:
    """The shipped measured table (``checkpoints/quality/tiny.json``), else the stand-in (with a warning)."""
    path = checkpoints_dir() / "quality" / "tiny.json"
    if path.exists():
        return QualityTable.load(path), str(path)
    warnings.warn(f"no measured quality table at {path}; using the analytic stand-in", stacklevel=3)
    return stand_in_quality_table(), "stand-in"


def _check_positive(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
    return float(v)


class MEGRates(gym.Env):
    """Choose (steps, merge ratio) per task under latency and energy limits.

    Args:
        quality: a `QualityTable`, a path to one, or None (the shipped table).
        model: config name / `ModelFlops` whose counted FLOPs drive the costs (default SDXL at
            1024 px, as in the MEG-CVPO paper; the quality table may come from a smaller backbone).
        steps, merge_ratios: the action grid (non-empty).
        latency_limit_s, energy_limit_j: per-task limits (> 0).
        tasks_per_episode: episode length.
        flat: a `spaces.Discrete` action (index ``i_steps * len(merge_ratios) + i_ratio``) instead of
            `spaces.MultiDiscrete`.
        link: ``"digital"`` (lossless at the Shannon rate; quality from channel "none") or ``"analog"``
            (the latent sent uncoded at ``rho`` uses per value; quality at the task's SNR from
            ``analog_channel`` in the table).
        cost_obs: append the cost model's prediction for every action (see below). The prediction is
            a deterministic function of the observed SNR and the known device / model / channel
            parameters (what an ES scheduler computes before choosing); it carries no quality
            information and no information beyond the SNR, only in a form a network reads easily.

    Observation (float32): ``[snr_db / 10, prev latency / limit, prev energy / limit]``, clipped to
    ``[-6, 6] x [0, 10] x [0, 10]``; with ``cost_obs`` followed by one value per action (flat
    order): ``log2 max(latency / latency limit, energy / energy limit)`` predicted at the task's SNR,
    clipped to ``[-4, 4]`` (<= 0 iff the action meets both limits).

    Constraint signal (``info["constraint_cost"]``): 1 when the action's relative load
    ``max(latency / limit, energy / limit)`` exceeds ``max(1, smallest load of any action)``: a
    violation some action would have avoided, or, in a deep fade where no action is feasible, an
    excess larger than the least-violating action's (what the oracle picks there). Otherwise 0.
    """

    metadata = {"render_modes": []}

    def __init__(self, quality: QualityTable | str | Path | None = None, model: str | ModelFlops = "sdxl",
                 steps: Sequence[int] = DEFAULT_STEPS, merge_ratios: Sequence[float] = DEFAULT_MERGE_RATIOS,
                 latency_limit_s: float = 3.0, energy_limit_j: float = 1800.0, tasks_per_episode: int = 64,
                 channel: ChannelParams = ChannelParams(), es: DeviceProfile = ES_DEFAULT,
                 ue: DeviceProfile = UE_DEFAULT, guidance: bool = True, fixed_delay_s: float = 0.2,
                 flat: bool = False, link: str = "digital", rho: float = 0.5, analog_channel: str = "rayleigh",
                 mse_floor: float = 1e-3, cost_obs: bool = False):
        super().__init__()
        self.latency_limit_s = _check_positive("latency_limit_s", latency_limit_s)
        self.energy_limit_j = _check_positive("energy_limit_j", energy_limit_j)
        self.mse_floor = _check_positive("mse_floor", mse_floor)
        if not isinstance(tasks_per_episode, int) or tasks_per_episode < 1:
            raise ValueError(f"tasks_per_episode: expected an int >= 1, got {tasks_per_episode!r}")
        self.tasks_per_episode = tasks_per_episode
        if steps is None or len(steps) == 0:
            raise ValueError("steps: expected a non-empty grid of step counts")
        if merge_ratios is None or len(merge_ratios) == 0:
            raise ValueError("merge_ratios: expected a non-empty grid of merge ratios")
        self.steps = [int(n) for n in steps]
        if any(n < 1 for n in self.steps):
            raise ValueError(f"steps: expected step counts >= 1, got {steps!r}")
        self.merge_ratios = [float(r) for r in merge_ratios]
        if any(not 0 <= r < 1 for r in self.merge_ratios):
            raise ValueError(f"merge_ratios: expected ratios in [0, 1), got {merge_ratios!r}")
        if link not in ("digital", "analog"):
            raise ValueError(f"link: expected 'digital' or 'analog', got {link!r}")
        self.link, self.rho, self.analog_channel = link, _check_positive("rho", rho), analog_channel

        if quality is None:
            self.quality, self.quality_source = default_quality_table()
        elif isinstance(quality, QualityTable):
            self.quality, self.quality_source = quality, quality.meta.get("source", "given")
        elif isinstance(quality, (str, Path)):
            self.quality, self.quality_source = QualityTable.load(quality), str(quality)
        else:
            raise TypeError(f"quality: expected a QualityTable, a path or None, got {type(quality).__name__}")
        if link == "analog" and analog_channel not in self.quality.channels:
            raise ValueError(f"analog_channel: {analog_channel!r} not measured in the quality table "
                             f"({self.quality.channels})")
        self.flops = model if isinstance(model, ModelFlops) else model_flops(model)
        self.channel, self.es, self.ue = channel, es, ue
        self.guidance, self.fixed_delay_s = bool(guidance), float(fixed_delay_s)

        # Every action's cost is "fixed part + bits / rate(snr)": precompute the fixed parts.
        self.actions = [(n, r) for n in self.steps for r in self.merge_ratios]
        per_step = self.flops.unet_step * (2 if self.guidance else 1)
        f_es = np.array([self.flops.text_encode + n * per_step for n, _ in self.actions])
        f_ue = np.full(len(self.actions), self.flops.vae_decode)
        tx = [transmission(self.flops.latent_values, r, self.rho if link == "analog" else None) for _, r in self.actions]
        self._bits = np.array([b for b, _ in tx])
        self._uses = np.array([u for _, u in tx])
        self._t_fixed = f_es / es.flops_per_s + f_ue / ue.flops_per_s + self.fixed_delay_s + self._uses / channel.bandwidth_hz
        self._e_fixed = f_es * es.joules_per_flop + f_ue * ue.joules_per_flop
        self._reward_digital = np.array([self.quality.reward(n, r, None, "none", self.mse_floor) for n, r in self.actions]) \
            if "none" in self.quality.channels else None

        n_r = len(self.merge_ratios)
        self.action_space = spaces.Discrete(len(self.actions)) if flat else spaces.MultiDiscrete([len(self.steps), n_r])
        self.flat = bool(flat)
        self.cost_obs = bool(cost_obs)
        k = len(self.actions) if self.cost_obs else 0
        self.observation_space = spaces.Box(np.array([-6.0, 0.0, 0.0] + [-COST_OBS_CLIP] * k, np.float32),
                                            np.array([6.0, 10.0, 10.0] + [COST_OBS_CLIP] * k, np.float32),
                                            dtype=np.float32)
        self._t = 0
        self._snr = np.zeros(tasks_per_episode)
        self._prev = (0.0, 0.0)

    # ------------------------------------------------------------------ model of one task
    def action_index(self, action) -> int:
        """Flat index of ``action`` (validated against the action space)."""
        if self.flat:
            a = np.asarray(action)
            if a.size != 1 or not np.issubdtype(a.dtype, np.integer) and not float(a.reshape(-1)[0]).is_integer():
                raise ValueError(f"action: expected one integer in [0, {len(self.actions)}), got {action!r}")
            i = int(a.reshape(-1)[0])
            if not 0 <= i < len(self.actions):
                raise ValueError(f"action: {i} outside [0, {len(self.actions)})")
            return i
        a = np.asarray(action)
        if a.shape != (2,) or np.any(a != np.round(a)):
            raise ValueError(f"action: expected [step index, ratio index] integers, got {action!r}")
        i, j = int(a[0]), int(a[1])
        if not (0 <= i < len(self.steps) and 0 <= j < len(self.merge_ratios)):
            raise ValueError(f"action: {action!r} outside the space {self.action_space}")
        return i * len(self.merge_ratios) + j

    def all_outcomes(self, snr_db: float) -> dict[str, np.ndarray]:
        """Reward, latency [s], energy [J] and feasibility of every action (flat order) at ``snr_db``."""
        if not math.isfinite(snr_db):
            raise ValueError(f"snr_db: expected a finite SNR in dB, got {snr_db!r}")
        rate = channel_rate_bps(self.channel.bandwidth_hz, snr_db)
        t_tx = self._bits / rate + self._uses / self.channel.bandwidth_hz
        latency = self._t_fixed + self._bits / rate
        energy = self._e_fixed + self.channel.tx_power_w * t_tx
        if self.link == "digital":
            reward = self._reward_digital
        else:
            reward = np.array([self.quality.reward(n, r, snr_db, self.analog_channel, self.mse_floor)
                               for n, r in self.actions])
        feasible = (latency <= self.latency_limit_s) & (energy <= self.energy_limit_j)
        load = np.maximum(latency / self.latency_limit_s, energy / self.energy_limit_j)
        return {"reward": reward, "latency": latency, "energy": energy, "feasible": feasible, "load": load}

    # ------------------------------------------------------------------ gym API
    def observation(self, snr_db: float, prev_latency_s: float = 0.0, prev_energy_j: float = 0.0) -> np.ndarray:
        """The observation of a task at ``snr_db`` after a task that cost (``prev_latency_s``, ``prev_energy_j``)."""
        obs = np.array([snr_db / 10.0, prev_latency_s / self.latency_limit_s, prev_energy_j / self.energy_limit_j])
        if self.cost_obs:
            obs = np.concatenate([obs, np.log2(self.all_outcomes(float(snr_db))["load"])])
        return np.clip(obs, self.observation_space.low, self.observation_space.high).astype(np.float32)

    def _obs(self) -> np.ndarray:
        return self.observation(self.snr_db, *self._prev)

    @property
    def snr_db(self) -> float:
        """SNR of the current task, dB."""
        return float(self._snr[min(self._t, self.tasks_per_episode - 1)])

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        self._snr = sample_channel_gain_db(self.np_random, self.channel, size=self.tasks_per_episode)
        self._t, self._prev = 0, (0.0, 0.0)
        return self._obs(), {"snr_db": self.snr_db, "quality_source": self.quality_source}

    def step(self, action):
        if self._t >= self.tasks_per_episode:
            raise RuntimeError("step: episode is over; call reset()")
        i = self.action_index(action)
        snr = self.snr_db
        out = self.all_outcomes(snr)
        n, r = self.actions[i]
        lat, en = float(out["latency"][i]), float(out["energy"][i])
        reward = float(out["reward"][i])
        # avoidable: above the limits and above the least load any action reaches (1e-9: rounding)
        avoidable = bool(out["load"][i] > max(1.0, float(out["load"].min())) * (1 + 1e-9))
        info = {
            "cost": {"latency": lat, "energy": en},
            "cost_limit": {"latency": self.latency_limit_s, "energy": self.energy_limit_j},
            "violation": {"latency": lat > self.latency_limit_s, "energy": en > self.energy_limit_j},
            "feasible_exists": bool(out["feasible"].any()),
            # The constraint signal controllers train on: a violation some action would have avoided,
            # or in a deep fade (no action feasible) an excess above the least-violating action's.
            "constraint_cost": float(avoidable),
            "steps": n, "merge_ratio": r, "snr_db": snr, "action_index": i,
            "mse": math.exp(-reward), "quality_source": self.quality_source,
        }
        self._prev = (lat, en)
        self._t += 1
        truncated = self._t >= self.tasks_per_episode
        return self._obs(), reward, False, truncated, info


# ====================================================================== SeedPower

def analog_mmse_curve(snr_db: Sequence[float] = tuple(range(-20, 41, 2))) -> dict[str, list[float]]:
    """MSE vs SNR of an uncoded unit-variance Gaussian seed with linear MMSE: ``1 / (1 + SNR)``.

    A closed form (DOMAIN.md section 5, analog baseline), used when no measured codec curve is given.
    """
    s = np.asarray(snr_db, dtype=float)
    return {"snr_db": s.tolist(), "mse": np.atleast_1d(lmmse_mse(1.0, s)).tolist(), "source": "analog-mmse"}


class SeedPower(gym.Env):
    """Split the transmit power of one seed across ``M`` fading blocks (CSI at the transmitter).

    Each episode serves ``seeds_per_episode`` seeds; each seed is ``seed_symbols`` complex symbols
    spread evenly over ``num_blocks`` blocks with Rayleigh power gains ``g_m ~ Exp(1)``.
    Action: ``a`` in ``[0, 1]^M``, projected to ``p = M a / sum(a)`` (mean power 1 per block, the
    total power budget; ``a = 0`` means equal power). Block ``m`` sees ``SNR_m = p_m g_m SNR_mean``.
    Reward: ``-log MSE(SNR_1..SNR_M)``, the seed's normalised reconstruction MSE, from ``curve``:

    * ``"codec"`` (default; None is the same): the shipped seed codec's measured MSE when its ``k = 32``
      symbols cross ``M = 8`` blocks of these SNRs (`splitldm.rl.envs.power_curve.PowerCurve`, the
      table ``checkpoints/power-curve/seed-codec-8.json``: measured draws and a fitted surrogate; the
      decoder is not additive over blocks, see that module). Needs ``num_blocks`` = the table's.
    * a `PowerCurve` or a path to one (JSON with ``"format": "splitldm.power-curve/1"``).
    * ``"analog-mmse"``: the closed form of an uncoded Gaussian seed with MMSE, ``1 / (1 + SNR)``
      per block (`analog_mmse_curve`), averaged over blocks.
    * a 1-D curve ``{"snr_db": [...], "mse": [...]}`` (or a path to its JSON): the additive model
      ``mean_m MSE(SNR_m)``, interpolated in log-MSE; zero power gives MSE 1, the source variance.

    ``seed_symbols`` (None: the codec table's ``k``, else 512) only sets the airtime in ``info["cost"]``.
    Observation: ``log10 g_m``, clipped to [-4, 2].
    """

    metadata = {"render_modes": []}

    def __init__(self, num_blocks: int = 8, seed_symbols: int | None = None, mean_snr_db: float = 5.0,
                 curve: "PowerCurve | Mapping[str, Sequence[float]] | str | Path | None" = "codec",
                 seeds_per_episode: int = 16, bandwidth_hz: float = 1e6, tx_power_dbm: float = 30.0):
        super().__init__()
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks: expected an int >= 1, got {num_blocks!r}")
        if not isinstance(seeds_per_episode, int) or seeds_per_episode < 1:
            raise ValueError(f"seeds_per_episode: expected an int >= 1, got {seeds_per_episode!r}")
        if not isinstance(mean_snr_db, (int, float)) or not math.isfinite(mean_snr_db):
            raise ValueError(f"mean_snr_db: expected a finite SNR in dB, got {mean_snr_db!r}")
        self.bandwidth_hz = _check_positive("bandwidth_hz", bandwidth_hz)
        self.M, self.mean_snr_db = num_blocks, float(mean_snr_db)
        self.seeds_per_episode = seeds_per_episode
        self.tx_power_w = 10 ** (tx_power_dbm / 10) / 1000
        self.power_curve: PowerCurve | None = None
        if curve is None or isinstance(curve, str) and curve == "codec":
            self.power_curve = default_power_curve()
        elif isinstance(curve, PowerCurve):
            self.power_curve = curve
        elif isinstance(curve, str) and curve == "analog-mmse":
            curve = analog_mmse_curve()
        elif isinstance(curve, (str, Path)):
            import json

            path = Path(curve)
            if not path.is_file():
                raise FileNotFoundError(f"curve: no file at {path} (or use 'codec' / 'analog-mmse')")
            data = json.loads(path.read_text())
            if isinstance(data, Mapping) and "format" in data:
                self.power_curve = PowerCurve.from_dict(data)
            else:
                curve = data
        if self.power_curve is not None:
            if self.power_curve.num_blocks != num_blocks:
                raise ValueError(f"curve: the codec table was measured for {self.power_curve.num_blocks} blocks, "
                                 f"num_blocks is {num_blocks} (use curve='analog-mmse' or a 1-D curve)")
            self.curve_source = str(self.power_curve.meta.get("source", "power curve"))
            self.curve_snr_db = self.curve_log_mse = None
            default_k = int(self.power_curve.meta.get("symbols_per_latent", 512))
        else:
            if not isinstance(curve, Mapping) or "snr_db" not in curve or "mse" not in curve:
                raise ValueError("curve: expected 'codec', 'analog-mmse', a PowerCurve, a path, or a mapping "
                                 "with 'snr_db' and 'mse' lists")
            x, y = np.asarray(curve["snr_db"], float), np.asarray(curve["mse"], float)
            if x.ndim != 1 or x.shape != y.shape or len(x) < 2 or np.any(np.diff(x) <= 0) or np.any(y <= 0) \
                    or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
                raise ValueError("curve: 'snr_db' must increase strictly and 'mse' be positive, same length >= 2")
            self.curve_snr_db, self.curve_log_mse = x, np.log(y)
            self.curve_source = str(curve.get("source", "given"))
            default_k = 512
        seed_symbols = default_k if seed_symbols is None else seed_symbols
        if isinstance(seed_symbols, bool) or not isinstance(seed_symbols, int) or seed_symbols < num_blocks:
            raise ValueError(f"seed_symbols: expected an int >= num_blocks, got {seed_symbols!r}")
        self.k = seed_symbols
        self.action_space = spaces.Box(0.0, 1.0, shape=(num_blocks,), dtype=np.float32)
        self.observation_space = spaces.Box(-4.0, 2.0, shape=(num_blocks,), dtype=np.float32)
        self._g = np.ones((seeds_per_episode, num_blocks))
        self._t = 0

    def mse(self, snr_db: np.ndarray) -> np.ndarray:
        """Per-block MSE of a 1-D curve at ``snr_db`` (clamped to the curve's ends; ``-inf`` dB -> 1).
        With a codec table (not additive over blocks) use `seed_mse`."""
        if self.power_curve is not None:
            raise ValueError("curve: a codec PowerCurve has no per-block MSE; use seed_mse(block_snr_db)")
        s = np.asarray(snr_db, float)
        out = np.exp(np.interp(np.clip(s, self.curve_snr_db[0], self.curve_snr_db[-1]), self.curve_snr_db, self.curve_log_mse))
        return np.where(np.isneginf(s), 1.0, out)

    def project(self, action) -> np.ndarray:
        """Validated action -> per-block power ``p`` (mean 1)."""
        a = np.asarray(action, dtype=float)
        if a.shape != (self.M,):
            raise ValueError(f"action: expected shape ({self.M},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("action: contains NaN or inf")
        if np.any(a < -1e-6) or np.any(a > 1 + 1e-6):
            raise ValueError(f"action: values must lie in [0, 1], got min {a.min():.3g} max {a.max():.3g}")
        a = np.clip(a, 0.0, 1.0)
        s = a.sum()
        return np.ones(self.M) if s <= 0 else self.M * a / s

    def seed_mse(self, block_snr_db: np.ndarray) -> np.ndarray:
        """The seed's normalised MSE for block SNRs ``(..., M)`` in dB (``-inf``: no power); shape ``(...)``."""
        s = np.asarray(block_snr_db, float)
        if self.power_curve is not None:
            return self.power_curve.mse_of(s)
        return self.mse(s).mean(-1)

    def reward_of(self, power: np.ndarray, gains: np.ndarray) -> float:
        """``-log MSE`` of the seed for block powers ``power`` (mean 1) and power gains ``gains`` (M,)."""
        with np.errstate(divide="ignore"):
            snr = self.mean_snr_db + 10 * np.log10(np.asarray(power, float) * np.asarray(gains, float))
        return float(-np.log(self.seed_mse(snr)))

    @property
    def gains(self) -> np.ndarray:
        return self._g[min(self._t, self.seeds_per_episode - 1)]

    def observe(self, gains: np.ndarray) -> np.ndarray:
        """Observation(s) of power gains ``(..., M)``: ``log10 g`` clipped to [-4, 2], float32."""
        return np.clip(np.log10(np.maximum(np.asarray(gains, float), 1e-12)), -4.0, 2.0).astype(np.float32)

    def _obs(self) -> np.ndarray:
        return self.observe(self.gains)

    def bandit_batch(self, n: int, seed: int):
        """``n`` independent seeds at once, for on-policy training with discount 0 (each seed is its own
        episode of a contextual bandit): returns ``(obs, reward)``, the observations ``(n, M)`` of gains
        drawn with ``numpy.random.default_rng(seed)`` (``Exp(1)``, as `reset` draws them) and a function
        mapping actions ``(n, M)`` in [0, 1] to the rewards ``(n,)`` `step` would give."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected an int >= 1, got {n!r}")
        gains = np.random.default_rng(seed).exponential(1.0, size=(n, self.M))

        def reward(actions: np.ndarray) -> np.ndarray:
            a = np.clip(np.asarray(actions, float), 0.0, 1.0)
            if a.shape != gains.shape:
                raise ValueError(f"actions: expected shape {gains.shape}, got {a.shape}")
            total = a.sum(-1, keepdims=True)
            p = np.where(total > 0, self.M * a / np.where(total > 0, total, 1.0), 1.0)
            with np.errstate(divide="ignore"):
                snr = self.mean_snr_db + 10 * np.log10(p * gains)
            return -np.log(self.seed_mse(snr))

        return self.observe(gains), reward

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        self._g = self.np_random.exponential(1.0, size=(self.seeds_per_episode, self.M))
        self._t = 0
        return self._obs(), {"gains": self.gains.copy(), "curve_source": self.curve_source}

    def step(self, action):
        if self._t >= self.seeds_per_episode:
            raise RuntimeError("step: episode is over; call reset()")
        p = self.project(action)
        g = self.gains
        reward = self.reward_of(p, g)
        t_tx = self.k / self.bandwidth_hz
        info = {"cost": {"latency": t_tx, "energy": self.tx_power_w * t_tx * float(p.mean())},
                "power": p, "gains": g.copy(), "mse": math.exp(-reward)}
        self._t += 1
        return self._obs(), reward, False, self._t >= self.seeds_per_episode, info
