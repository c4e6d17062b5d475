"""PPO with a continuous action, one file: transmit power across fading blocks (MEG, Zhong et al.).

The policy is a diagonal Gaussian over ``u`` in R^M; the action sent to the environment is
``sigmoid(u)`` in [0, 1]^M, or with ``squash="softmax"`` ``exp(u - max u)`` (then `SeedPower`'s power
split is ``p = M softmax(u)``: the policy acts on log-powers), which `SeedPower` projects onto the
power simplex. ``lr_end`` decays the learning rate linearly; ``log_std_end`` caps the exploration
noise with a floor lowered linearly from ``log_std_init`` (an exploration schedule).
With ``gamma = 0`` on an environment with ``bandit_batch`` (`SeedPower`: every seed is independent, a
contextual bandit) a rollout of ``rollout`` seeds is drawn and scored in one call instead of a
step loop (``batched=False`` keeps the loop); the PPO update is the same. Ratios and
log-probabilities are taken in ``u`` space (the squashing is part of the environment).
Hyper-parameters in `PPOConfig`; train with ``PPO.train_on(SeedPower(), cfg)``. ``gamma = 0`` by
default: the seeds of a `SeedPower` episode are independent (the next seed's gains do not depend on
the action), so the return is the immediate reward; bootstrapping across seeds (gamma 0.97) only
added value noise and left the policy below equal power.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from splitldm.rl.agents.common import PolicyMixin, check_obs, mlp

logger = logging.getLogger(__name__)


@dataclass
class PPOConfig:
    total_steps: int = 40_000
    hidden: int = 128
    lr: float = 1e-3
    gamma: float = 0.0               # independent seeds (see the module docstring)
    gae_lambda: float = 0.95
    rollout: int = 1024
    epochs: int = 10
    minibatch: int = 128
    clip: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    log_std_init: float = -0.5
    seed: int = 0
    squash: str = "sigmoid"          # u -> action: "sigmoid" (sigmoid(u)) or "softmax" (exp(u - max u))
    lr_end: float | None = None      # None: constant lr; else linear decay to lr_end over total_steps
    log_std_end: float | None = None  # None: learned log_std; else its floor, lowered linearly to this value
    batched: bool = True             # gamma 0 and env.bandit_batch: roll out a whole batch of seeds at once


class PPO(PolicyMixin):
    algorithm = "ppo"

    def __init__(self, obs_dim: int, act_dim: int, config: PPOConfig | None = None):
        if not isinstance(obs_dim, int) or obs_dim < 1 or not isinstance(act_dim, int) or act_dim < 1:
            raise ValueError(f"obs_dim, act_dim: expected ints >= 1, got {obs_dim!r}, {act_dim!r}")
        self.cfg = config or PPOConfig()
        if self.cfg.squash not in ("sigmoid", "softmax"):
            raise ValueError(f"squash: expected 'sigmoid' or 'softmax', got {self.cfg.squash!r}")
        torch.manual_seed(self.cfg.seed)
        h = self.cfg.hidden
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.mean = mlp([obs_dim, h, h, act_dim], out_gain=0.01)
        self.log_std = torch.nn.Parameter(torch.full((act_dim,), self.cfg.log_std_init))
        self.value = mlp([obs_dim, h, h, 1])
        self.opt = torch.optim.Adam([*self.mean.parameters(), self.log_std, *self.value.parameters()],
                                    lr=self.cfg.lr, eps=1e-5)
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        self.history: dict[str, list[float]] = {"step": [], "episode_reward": []}

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        mu = self.mean(check_obs(obs, self.obs_dim))[0]
        u = mu if deterministic else mu + self.log_std.exp() * torch.randn(mu.shape, generator=self.gen)
        return self.squash(u).numpy().astype(np.float32)

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` (..., act_dim) -> action in [0, 1]: ``sigmoid(u)``, or with ``squash="softmax"``
        ``exp(u - max u)`` (a `SeedPower` power split ``p = M softmax(u)``: ``u`` is the log-power)."""
        if self.cfg.squash == "softmax":
            return torch.exp(u - u.max(-1, keepdim=True).values)
        return torch.sigmoid(u)

    def _logp(self, obs, u):
        mu = self.mean(obs)
        std = self.log_std.exp()
        return (-0.5 * ((u - mu) / std) ** 2 - self.log_std - 0.5 * np.log(2 * np.pi)).sum(-1)

    @classmethod
    def train_on(cls, env, config: PPOConfig | None = None, log=None) -> "PPO":
        log = log or logger.info  # progress lines (None: this module's logger, INFO)
        cfg = config or PPOConfig()
        agent = cls(int(env.observation_space.shape[0]), int(env.action_space.shape[0]), cfg)
        obs, _ = env.reset(seed=cfg.seed)
        ep_r, episode, step, t0 = 0.0, 0, 0, time.time()
        # discount 0 on an environment of independent seeds (SeedPower): roll out a batch at once
        batched = cfg.gamma == 0 and cfg.batched and hasattr(env, "bandit_batch")
        n = cfg.rollout
        while step < cfg.total_steps:
            frac = step / cfg.total_steps
            if cfg.lr_end is not None:
                for group in agent.opt.param_groups:
                    group["lr"] = cfg.lr + (cfg.lr_end - cfg.lr) * frac
            if cfg.log_std_end is not None:
                floor = cfg.log_std_init + (cfg.log_std_end - cfg.log_std_init) * frac
                with torch.no_grad():
                    agent.log_std.clamp_(max=floor)
            O = np.zeros((n, agent.obs_dim), np.float32)
            U = np.zeros((n, agent.act_dim), np.float32)
            R, D, LP = (np.zeros(n, np.float32) for _ in range(3))
            if batched:  # n independent seeds at once: the same samples the loop below would see
                O[:], reward_of = env.bandit_batch(n, cfg.seed + 1 + step)
                with torch.no_grad():
                    ot = torch.from_numpy(O)
                    mu = agent.mean(ot)
                    u = mu + agent.log_std.exp() * torch.randn(mu.shape, generator=agent.gen)
                    LP[:] = agent._logp(ot, u).numpy()
                U[:] = u.numpy()
                R[:] = reward_of(agent.squash(u).numpy().astype(np.float32))
                D[:] = 1.0
                # one history point per rollout: the mean episode reward (seeds_per_episode seeds each)
                per = int(getattr(env, "seeds_per_episode", 1))
                step += n
                agent.history["step"].append(step)
                agent.history["episode_reward"].append(float(R.mean()) * per)
                last = 0.0
                if log and (step // n) % 10 == 0:
                    log(f"ppo step {step}: mean reward {R.mean():.3f} ({time.time() - t0:.0f} s)")
            for t in range(0 if batched else n):
                O[t] = obs
                with torch.no_grad():
                    ot = torch.from_numpy(np.asarray(obs, np.float32))[None]
                    mu = agent.mean(ot)[0]
                    u = mu + agent.log_std.exp() * torch.randn(mu.shape, generator=agent.gen)
                    LP[t] = float(agent._logp(ot, u[None])[0])
                U[t] = u.numpy()
                obs, r, term, trunc, info = env.step(agent.squash(u).numpy().astype(np.float32))
                R[t], D[t] = r, float(term or trunc)
                ep_r += r
                step += 1
                if term or trunc:
                    episode += 1
                    agent.history["step"].append(step)
                    agent.history["episode_reward"].append(ep_r)
                    if log and episode % 100 == 0:
                        log(f"ppo step {step}: episode reward {ep_r:.3f} ({time.time() - t0:.0f} s)")
                    ep_r = 0.0
                    obs, _ = env.reset(seed=cfg.seed + 1 + episode)
            with torch.no_grad():
                v = agent.value(torch.from_numpy(O))[:, 0].numpy()
                if not batched:
                    last = float(agent.value(torch.from_numpy(np.asarray(obs, np.float32))[None]))
            adv = np.zeros(n, np.float32)
            g = 0.0
            for t in reversed(range(n)):
                nxt = last if t == n - 1 else v[t + 1]
                delta = R[t] + cfg.gamma * nxt * (1 - D[t]) - v[t]
                g = delta + cfg.gamma * cfg.gae_lambda * (1 - D[t]) * g
                adv[t] = g
            ret = adv + v
            advn = (adv - adv.mean()) / (adv.std() + 1e-8)
            T = {k: torch.from_numpy(x) for k, x in dict(o=O, u=U, lp=LP, adv=advn, ret=ret).items()}
            for _ in range(cfg.epochs):
                perm = torch.randperm(n, generator=agent.gen)
                for s in range(0, n, cfg.minibatch):
                    i = perm[s:s + cfg.minibatch]
                    logp = agent._logp(T["o"][i], T["u"][i])
                    ratio = (logp - T["lp"][i]).exp()
                    pg = -torch.min(ratio * T["adv"][i], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * T["adv"][i]).mean()
                    vloss = F.mse_loss(agent.value(T["o"][i])[:, 0], T["ret"][i])
                    loss = pg + cfg.vf_coef * vloss - cfg.ent_coef * agent.log_std.sum()
                    agent.opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([*agent.mean.parameters(), agent.log_std, *agent.value.parameters()], 0.5)
                    agent.opt.step()
                    if cfg.log_std_end is not None:  # the exploration schedule holds through the update
                        with torch.no_grad():
                            agent.log_std.clamp_(max=floor)
        return agent

    def _init_config(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "config": asdict(self.cfg)}

    @classmethod
    def _from_init_config(cls, config) -> "PPO":
        return cls(config["obs_dim"], config["act_dim"], PPOConfig(**config["config"]))

    def _weights(self) -> dict[str, torch.nn.Module | torch.Tensor]:
        return {"mean": self.mean, "value": self.value, "log_std": self.log_std}

    def _training_state(self) -> dict[str, Any]:
        return {"history": self.history}

    def _load_weights_and_state(self, weights, state) -> None:
        self.mean.load_state_dict(weights["mean"])
        self.value.load_state_dict(weights["value"])
        # the previous format kept it as "std.log_std"
        log_std = weights["log_std"] if "log_std" in weights else weights["std"]["log_std"]
        with torch.no_grad():
            self.log_std.copy_(log_std)
        self.history = state["history"]
