"""PPO-Lagrangian for discrete actions, one file: the constrained baseline MEG-CVPO compares against.

PPO (clipped surrogate, GAE) on the Lagrangian advantage ``(A_r - lam A_c) / (1 + lam)``; the
multiplier follows projected gradient ascent ``lam <- max(0, lam + lr_lam (mean cost - cost_limit))``
on the per-task constraint cost ``info["constraint_cost"]`` (avoidable violations).
Hyper-parameters in `PPOLagConfig`; train with ``PPOLagrangian.train_on(MEGRates(flat=True), cfg)``.
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
class PPOLagConfig:
    total_steps: int = 12_000
    hidden: int = 128
    lr: float = 5e-4
    gamma: float = 0.97
    gae_lambda: float = 0.95
    rollout: int = 512               # env steps per update
    epochs: int = 8
    minibatch: int = 128
    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    cost_limit: float = 0.005        # expected avoidable violations per task
    lr_lambda: float = 1.0
    lambda_init: float = 1.0
    seed: int = 0


class PPOLagrangian(PolicyMixin):
    algorithm = "ppo_lagrangian"

    def __init__(self, obs_dim: int, n_actions: int, config: PPOLagConfig | None = None):
        if not isinstance(obs_dim, int) or obs_dim < 1 or not isinstance(n_actions, int) or n_actions < 2:
            raise ValueError(f"obs_dim, n_actions: expected ints >= 1 and >= 2, got {obs_dim!r}, {n_actions!r}")
        self.cfg = config or PPOLagConfig()
        torch.manual_seed(self.cfg.seed)
        h = self.cfg.hidden
        self.obs_dim, self.n_actions = obs_dim, n_actions
        self.actor = mlp([obs_dim, h, h, n_actions], out_gain=0.01)
        self.v_r = mlp([obs_dim, h, h, 1])
        self.v_c = mlp([obs_dim, h, h, 1])
        self.opt = torch.optim.Adam([*self.actor.parameters(), *self.v_r.parameters(), *self.v_c.parameters()],
                                    lr=self.cfg.lr, eps=1e-5)
        self.lam = float(self.cfg.lambda_init)
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        self.history: dict[str, list[float]] = {"step": [], "episode_reward": [], "episode_cost": [], "lam": []}

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> int:
        logits = self.actor(check_obs(obs, self.obs_dim))[0]
        return int(logits.argmax()) if deterministic else int(torch.multinomial(F.softmax(logits, -1), 1, generator=self.gen))

    @staticmethod
    def _gae(rew, val, last_val, done, gamma, lam):
        adv = np.zeros_like(rew)
        g = 0.0
        for t in reversed(range(len(rew))):
            nxt = last_val if t == len(rew) - 1 else val[t + 1]
            nonterm = 1.0 - done[t]
            delta = rew[t] + gamma * nxt * nonterm - val[t]
            g = delta + gamma * lam * nonterm * g
            adv[t] = g
        return adv

    @classmethod
    def train_on(cls, env, config: PPOLagConfig | None = None, log=None) -> "PPOLagrangian":
        log = log or logger.info  # progress lines (None: this module's logger, INFO)
        from gymnasium import spaces

        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError("env: PPO-Lagrangian here needs a Discrete action space (e.g. MEGRates(flat=True))")
        cfg = config or PPOLagConfig()
        agent = cls(int(env.observation_space.shape[0]), int(env.action_space.n), cfg)
        obs, _ = env.reset(seed=cfg.seed)
        ep_r = ep_c = 0.0
        episode, step, t0 = 0, 0, time.time()
        n = cfg.rollout
        while step < cfg.total_steps:
            O = np.zeros((n, agent.obs_dim), np.float32)
            A = np.zeros(n, np.int64)
            R, C, D, LP = (np.zeros(n, np.float32) for _ in range(4))
            for t in range(n):
                O[t] = obs
                with torch.no_grad():
                    logits = agent.actor(torch.from_numpy(obs)[None])[0]
                    a = int(torch.multinomial(F.softmax(logits, -1), 1, generator=agent.gen))
                    LP[t] = float(F.log_softmax(logits, -1)[a])
                obs, r, term, trunc, info = env.step(a)
                A[t], R[t], C[t] = a, r, float(info.get("constraint_cost", 0.0))
                # Time-limit truncation is treated as an episode end (tasks are i.i.d., so the
                # bootstrap value barely matters and this keeps GAE simple).
                D[t] = float(term or trunc)
                ep_r, ep_c = ep_r + r, ep_c + C[t]
                step += 1
                if term or trunc:
                    episode += 1
                    agent.history["step"].append(step)
                    agent.history["episode_reward"].append(ep_r)
                    agent.history["episode_cost"].append(ep_c)
                    if log and episode % 20 == 0:
                        log(f"ppo-lag step {step}: episode reward {ep_r:.2f} cost {ep_c:.0f} lam {agent.lam:.3g} "
                            f"({time.time() - t0:.0f} s)")
                    ep_r = ep_c = 0.0
                    obs, _ = env.reset(seed=cfg.seed + 1 + episode)
            with torch.no_grad():
                ot = torch.from_numpy(O)
                vr, vc = agent.v_r(ot)[:, 0].numpy(), agent.v_c(ot)[:, 0].numpy()
                last = torch.from_numpy(np.asarray(obs, np.float32))[None]
                lr_, lc_ = float(agent.v_r(last)), float(agent.v_c(last))
            adv_r = cls._gae(R, vr, lr_, D, cfg.gamma, cfg.gae_lambda)
            # per-task constraint: the cost critic predicts the immediate cost (discount 0)
            adv_c = C - vc
            ret_r, ret_c = adv_r + vr, C.copy()
            agent.lam = max(0.0, agent.lam + cfg.lr_lambda * (float(C.mean()) - cfg.cost_limit))
            agent.history["lam"].append(agent.lam)
            adv = (adv_r - agent.lam * adv_c) / (1.0 + agent.lam)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            T = {k: torch.from_numpy(v) for k, v in dict(o=O, a=A, lp=LP, adv=adv.astype(np.float32),
                                                         rr=ret_r.astype(np.float32), rc=ret_c).items()}
            for _ in range(cfg.epochs):
                perm = torch.randperm(n, generator=agent.gen)
                for s in range(0, n, cfg.minibatch):
                    i = perm[s:s + cfg.minibatch]
                    logp_all = F.log_softmax(agent.actor(T["o"][i]), -1)
                    logp = logp_all.gather(1, T["a"][i][:, None])[:, 0]
                    ratio = (logp - T["lp"][i]).exp()
                    pg = -torch.min(ratio * T["adv"][i], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * T["adv"][i]).mean()
                    ent = -(logp_all.exp() * logp_all).sum(-1).mean()
                    vloss = F.mse_loss(agent.v_r(T["o"][i])[:, 0], T["rr"][i]) + F.mse_loss(agent.v_c(T["o"][i])[:, 0], T["rc"][i])
                    loss = pg - cfg.ent_coef * ent + cfg.vf_coef * vloss
                    agent.opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(agent.actor.parameters(), 0.5)
                    agent.opt.step()
        return agent

    def _init_config(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "n_actions": self.n_actions, "config": asdict(self.cfg)}

    @classmethod
    def _from_init_config(cls, config) -> "PPOLagrangian":
        return cls(config["obs_dim"], config["n_actions"], PPOLagConfig(**config["config"]))

    def _weights(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "v_r": self.v_r, "v_c": self.v_c}

    def _training_state(self) -> dict[str, Any]:
        return {"lam": self.lam, "history": self.history}

    def _load_weights_and_state(self, weights, state) -> None:
        for name in ("actor", "v_r", "v_c"):
            getattr(self, name).load_state_dict(weights[name])
        self.lam, self.history = state["lam"], state["history"]
