"""Controllers in the loop: the ES chooses steps, split step, merge ratio and power split per request.

`Controller.choose(report) -> Decision` is the whole interface: ``report`` is what the UE told the ES
(`Report`: its SNR, optionally its fading gains), the `Decision` is ``(num_steps, split_step,
merge_ratio, power_split)`` plus where each part came from. ``Controller(...)`` is also a serve policy
(``EdgeService(pipe, codec, config, policy=Controller.from_pretrained())``): called with the request
and the handshake it returns a `ControlledChoice` (a `splitldm.serve.policy.Choice` that also carries
``num_steps`` and ``power_split``).

Steps and merge ratio (MEG-CVPO, `splitldm.rl.envs.meg.MEGRates`):

* With a CVPO policy (``rates``; the shipped one is ``"cvpo-meg"``) the observation is built exactly
  as the environment builds it, ``MEGRates.observation(snr_db, prev_latency_s, prev_energy_j)`` (SNR,
  the previous request's predicted latency and energy over the limits, and with ``cost_obs`` the cost
  model's load of every action at this SNR), and the policy's deterministic action ``(N, r)`` is
  taken. The controller remembers the cost model's latency and energy of its own last choice (as the
  environment does with the previous task).
* Without a policy, the documented fixed rule (`cost_rule`): among the actions that meet both
  limits at the reported SNR per the cost model (`MEGRates.all_outcomes`), the one with the most
  steps, then the smallest merge ratio (quality rises with steps and falls with merging; no quality
  table is read); when no action meets them (a deep fade), the action of least relative load
  ``max(latency / limit, energy / limit)`` (what the oracle picks there).

Mapping to the served pipeline: ``num_steps = N`` (the tiny model's DDIM scheduler runs any N; the
policy's grid is 4..12); ``split_step = N`` by default (``split="es"``: the ES runs every denoising
step and the UE only decodes, as MEGRates' cost model assumes; an int ``k`` instead runs
``min(k, N)`` steps on the ES and the rest on the UE); ``merge_ratio = r`` is the `TokenMerge`
ratio of the link (if ``r`` is not in the session's ratio table, its nearest entry, ties to the
smaller one). The controller overrides the request's own ``steps`` / ``split_step`` /
``merge_ratio``; the service tells the UE the chosen step count in the stream's ``accepted`` record
(the air header has no field for it).

Power split (`splitldm.rl.envs.meg.SeedPower`): with a PPO policy (``power``; the shipped one is
``"ppo-power"``, 8 blocks at a mean SNR of 5 dB) and a report of exactly as many per-block power
gains ``|h_m|^2`` as the policy's blocks, the split is ``p = M a / sum(a)`` of the policy's action
``a`` (mean 1: the total power is fixed); otherwise equal power (``p_m = 1``).

The split is applied. A session declares M fading blocks per image (``ServeConfig(blocks=M)``, the
handshake's ``channel.blocks``): the served channel (`splitldm.serve.session.build_link`,
``make_channel("rayleigh", blocks=M, power=p)``, i.e. `splitldm.link.channels.RayleighBlockFading`)
spreads an image's k symbols over M contiguous blocks (`splitldm.link.channels.block_sizes`: the first
``k mod M`` blocks one symbol longer), draws one Rayleigh gain per block from the request's link
generator, and sends block m's symbols at power ``p_m`` (``y_m = h_m sqrt(p_m) z + n``). The UE reports
its M block gains in the request's ``fading`` (``[re_0, im_0, ...]``; in the emulation the gains it
would measure are `splitldm.serve.session.emulated_fading` of its link seed); when the policy has M
blocks and M gains are reported, `Controller.__call__` returns the split and the ES applies it
(`splitldm.serve.policy.block_power`) to every image of the request. The frame carries the effective
per-block gains ``sqrt(p_m) h_m`` as its emulated CSI (what the UE estimates from pilots sent at the
block's power), so the UE equalises block by block without learning ``p``: the split costs no air
bits and the side information stays the 32-bit header + check. The accepted record reports the split
and its source. A session with another number of blocks than the policy, or a report of another
number of gains, gets equal power. ``power_db`` stays 0 dB (``10 log10 mean(p) = 0``).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from splitldm.rl.agents.auto import AutoPolicy
from splitldm.rl.agents.common import resolve_pretrained
from splitldm.rl.agents.cvpo import CVPO
from splitldm.rl.agents.ppo import PPO
from splitldm.rl.envs.meg import MEGRates
from splitldm.rl.envs.registry import make_env
from splitldm.serve.policy import Choice
from splitldm.serve.session import EdgeRequest
from splitldm.serve.wire import MAX_SPLIT_STEP, Handshake, WireError

__all__ = ["Report", "Decision", "ControlledChoice", "Controller", "cost_rule", "nearest_ratio"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """What the UE reports to the ES for one request.

    Attributes:
        snr_db: the UE's mean SNR, dB (finite, in [-20, 40] as the request envelope allows).
        gains: per-block fading power gains ``|h_m|^2`` (>= 0), or None (not reported).
    """

    snr_db: float
    gains: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        s = self.snr_db
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ValueError(f"snr_db: expected a finite SNR in dB, got {s!r}")
        if self.gains is not None:
            g = tuple(self.gains)
            if not g or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0
                            for x in g):
                raise ValueError(f"gains: expected a non-empty sequence of finite power gains >= 0, got {self.gains!r}")
            object.__setattr__(self, "gains", tuple(float(x) for x in g))

    @classmethod
    def of_request(cls, request: EdgeRequest) -> "Report":
        """The report carried by a served request: its SNR and its reported block gains
        ``[re_0, im_0, re_1, im_1, ...]`` as power gains ``|h_m|^2``."""
        f = request.fading
        gains = None if f is None else tuple(f[i] ** 2 + f[i + 1] ** 2 for i in range(0, len(f), 2))
        return cls(float(request.snr_db), gains)


@dataclass(frozen=True)
class Decision:
    """The controller's choice for one request.

    Attributes:
        num_steps: denoising steps N of the request.
        split_step: k, the ES runs steps ``[0, k)``, the UE ``[k, N)``.
        merge_ratio: token-merge ratio of the link.
        power_split: per-block transmit power (mean 1), one value per reported block (``(1.0,)`` when
            no block gains were reported).
        rates_source: ``"cvpo"`` or ``"rule"``; ``power_source``: ``"ppo"`` or ``"equal"``.
        latency_s, energy_j: the cost model's latency [s] and energy [J] of (N, r) at the reported SNR.
        action: the flat index into `MEGRates.actions`.
    """

    num_steps: int
    split_step: int
    merge_ratio: float
    power_split: tuple[float, ...]
    rates_source: str
    power_source: str
    latency_s: float
    energy_j: float
    action: int


@dataclass(frozen=True)
class ControlledChoice(Choice):
    """A `Choice` that also carries the step count and the power split the controller chose
    (the service runs ``num_steps`` steps and applies ``power_split`` per fading block, see the module
    docstring; ``(1.0,)``: equal power)."""

    num_steps: int | None = None
    power_split: tuple[float, ...] = (1.0,)
    source: dict[str, str] = field(default_factory=dict)


def cost_rule(env: MEGRates, snr_db: float) -> int:
    """The fixed rule (flat action index of ``env``): most steps, then smallest merge ratio, among the
    actions meeting both limits at ``snr_db`` per the cost model; none: the least relative load."""
    out = env.all_outcomes(float(snr_db))
    if out["feasible"].any():
        order = sorted(np.flatnonzero(out["feasible"]), key=lambda i: (-env.actions[i][0], env.actions[i][1]))
        return int(order[0])
    return int(np.argmin(out["load"]))


def nearest_ratio(ratio: float, table: Sequence[float]) -> float:
    """The entry of ``table`` nearest ``ratio`` (ties: the smaller entry)."""
    if not table:
        raise ValueError("table: empty merge ratio table")
    return float(min(table, key=lambda t: (abs(float(t) - ratio), float(t))))


def _load(policy, cls, name: str):
    if policy is None or isinstance(policy, cls):
        return policy
    if isinstance(policy, (str, Path)):
        loaded = AutoPolicy.from_pretrained(policy)
        if not isinstance(loaded, cls):
            raise TypeError(f"{name}: {policy} holds a {type(loaded).__name__}, expected a {cls.__name__}")
        return loaded
    raise TypeError(f"{name}: expected a {cls.__name__}, a folder or a zoo name, or None; got {type(policy).__name__}")


def _run_env(folder_or_policy, default: dict[str, Any]) -> dict[str, Any]:
    """The ``env`` block of the run config saved next to a policy (``run.json``), else ``default``."""
    import json

    if isinstance(folder_or_policy, (str, Path)):
        path = resolve_pretrained(folder_or_policy) / "run.json"
        if path.is_file():
            return dict(json.loads(path.read_text())["env"])
    return default


class Controller:
    """Per-request (steps, split step, merge ratio, power split) for the ES (see the module docstring).

    Args:
        rates: a `CVPO` policy, a folder or zoo name (``"cvpo-meg"``), or None (the fixed `cost_rule`).
        power: a `PPO` power policy, a folder or zoo name (``"ppo-power"``), or None (equal power).
        env: the MEGRates config the rates are chosen in (``{"id": ..., "kwargs": {...}}``); default:
            the policy folder's ``run.json`` env, else ``splitldm/MEGRatesFlat-v0`` with
            ``cost_obs=True`` when a policy is given (the shipped policy's), plain otherwise.
        split: ``"es"`` (split step = N: the ES runs all steps, the UE decodes) or an int k >= 0.
    """

    def __init__(self, rates: CVPO | str | Path | None = None, power: PPO | str | Path | None = None, *,
                 env: dict[str, Any] | None = None, split: str | int = "es"):
        if not (split == "es" or (isinstance(split, int) and not isinstance(split, bool) and split >= 0)):
            raise ValueError(f"split: expected 'es' or an int >= 0, got {split!r}")
        default = {"id": "splitldm/MEGRatesFlat-v0", "kwargs": {"cost_obs": rates is not None}}
        env_cfg = env if env is not None else _run_env(rates, default)
        self.rates = _load(rates, CVPO, "rates")
        self.power = _load(power, PPO, "power")
        self.env = make_env(env_cfg)
        if not isinstance(self.env, MEGRates):
            raise ValueError(f"env: expected a MEGRates environment, got {type(self.env).__name__}")
        if self.rates is not None:
            if not self.env.flat:
                raise ValueError("env: the CVPO policy acts on the flat action space (splitldm/MEGRatesFlat-v0)")
            obs_dim = self.env.observation_space.shape[0]
            if self.rates.obs_dim != obs_dim or self.rates.n_actions != len(self.env.actions):
                raise ValueError(f"rates: the policy sees {self.rates.obs_dim} values and has {self.rates.n_actions} "
                                 f"actions; the env {obs_dim} and {len(self.env.actions)}")
        if split == "es" and max(self.env.steps) > MAX_SPLIT_STEP:
            raise ValueError(f"env: steps up to {max(self.env.steps)} exceed the air header's split step "
                             f"limit {MAX_SPLIT_STEP}")
        self.split = split
        self._lock = threading.Lock()
        self._prev = (0.0, 0.0)

    @classmethod
    def from_pretrained(cls, rates: str | Path | None = "cvpo-meg", power: str | Path | None = "ppo-power",
                        **kwargs) -> "Controller":
        """The shipped controllers (zoo names) or saved folders; None keeps the fixed rule for that part."""
        return cls(rates, power, **kwargs)

    # ------------------------------------------------------------------ the interface
    def choose(self, report: Report) -> Decision:
        """The decision for one request (updates the remembered previous cost)."""
        if not isinstance(report, Report):
            raise TypeError(f"report: expected a Report, got {type(report).__name__}")
        env = self.env
        with self._lock:
            if self.rates is not None:
                i = self.rates.act(env.observation(report.snr_db, *self._prev))
                rates_source = "cvpo"
            else:
                i = cost_rule(env, report.snr_db)
                rates_source = "rule"
            out = env.all_outcomes(report.snr_db)
            latency, energy = float(out["latency"][i]), float(out["energy"][i])
            self._prev = (latency, energy)
        n, r = env.actions[i]
        k = n if self.split == "es" else min(int(self.split), n)
        power, power_source = self.power_split(report.gains)
        return Decision(num_steps=int(n), split_step=int(k), merge_ratio=float(r), power_split=power,
                        rates_source=rates_source, power_source=power_source, latency_s=latency, energy_j=energy,
                        action=int(i))

    def power_split(self, gains: tuple[float, ...] | None) -> tuple[tuple[float, ...], str]:
        """Per-block power (mean 1) for block power gains ``gains`` and its source (``"ppo"`` / ``"equal"``)."""
        if gains is None:
            return (1.0,), "equal"
        m = len(gains)
        if self.power is None or m != self.power.act_dim:
            return (1.0,) * m, "equal"
        with np.errstate(divide="ignore"):
            obs = np.clip(np.log10(np.maximum(np.asarray(gains, float), 1e-12)), -4.0, 2.0).astype(np.float32)
        a = np.clip(np.asarray(self.power.act(obs), float), 0.0, 1.0)
        s = a.sum()
        p = np.ones(m) if s <= 0 else m * a / s
        return tuple(float(x) for x in p), "ppo"

    def reset(self) -> None:
        """Forget the previous request's cost (the first request of an episode sees zeros)."""
        with self._lock:
            self._prev = (0.0, 0.0)

    # ------------------------------------------------------------------ the serve policy
    def __call__(self, request: EdgeRequest, handshake: Handshake) -> ControlledChoice:
        """The serve hook: `choose` on the request's report, mapped to the session's ratio table.

        ``power_db`` is 0: the split has mean 1 (the total power is fixed). The PPO split is kept only when
        the session has as many fading blocks per image as the split (``handshake.channel["blocks"]``);
        otherwise equal power (see the module docstring)."""
        d = self.choose(Report.of_request(request))
        power, power_source = d.power_split, d.power_source
        blocks = int(handshake.channel.get("blocks", 1)) if handshake.channel["kind"] == "rayleigh" else 0
        if power_source == "ppo" and len(power) != blocks:
            logger.warning("control: a %d-block power split for a session of %d blocks per image: equal power",
                           len(power), blocks)
            power, power_source = (1.0,), "equal"
        ratio = nearest_ratio(d.merge_ratio, handshake.merge["ratios"])
        try:
            handshake.ratio_index(ratio)
        except ValueError as exc:
            raise WireError("merge_ratio", str(exc)) from None
        logger.debug("control: snr %.1f dB -> N=%d k=%d r=%.2f (%s), power %s (%s)", request.snr_db, d.num_steps,
                     d.split_step, ratio, d.rates_source, power, power_source)
        return ControlledChoice(split_step=d.split_step, merge_ratio=ratio, power_db=0.0, num_steps=d.num_steps,
                                power_split=power, source={"rates": d.rates_source, "power": power_source})
