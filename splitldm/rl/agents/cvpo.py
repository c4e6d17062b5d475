"""CVPO (constrained variational policy optimisation, Liu et al. 2022) for discrete actions, one file.

Used by MEG-CVPO to pick (denoising steps, merge ratio) per task. Each update:

1. Critics: ``Q_r(s, .)`` (reward, discount ``gamma``) regressed on replayed transitions, and
   ``Q_c(s, .)`` (constraint cost: the per-task avoidable-violation indicator
   ``info["constraint_cost"]``, discount ``cost_gamma`` = 0 because the limits hold per task). Costs
   lie in [0, 1], so the cost network outputs logits, ``Q_c = sigmoid(logit) / (1 - cost_gamma)``,
   fitted by cross-entropy: a violation probability that is exactly 0 far from the feasibility
   boundary (a plain regression head leaves +-0.05 noise there, above the 0.005 cost limit, and the
   E-step's cost dual then blows up). Polyak targets for both.
2. E-step: the non-parametric variational policy ``q(a|s) ~ pi_old(a|s) exp((Q_r - lam Q_c) / eta)``
   with dual variables ``eta`` (KL(q || pi_old) <= ``kl_estep``) and ``lam`` (E_q Q_c <= ``cost_limit``)
   found by minimising the convex dual ``g(eta, lam) = eta eps + lam c + eta E_s log E_pi_old
   exp((Q_r - lam Q_c)/eta)`` (L-BFGS-B). With discrete actions the expectation over actions is
   exact (the full categorical replaces the 32 sampled actions of the continuous version).
3. M-step: weighted maximum likelihood ``max E_s sum_a q log pi_theta`` with a KL trust region
   ``KL(pi_old || pi_theta) <= kl_mstep`` kept by a Lagrange multiplier, ``mstep_iters`` steps.

Hyper-parameters are in `CVPOConfig`: MEG-CVPO's nets and learning rates (128x128, lr 5e-4 / 1e-3),
but ``gamma = 0`` (MEGRates tasks are independent: the next task's channel does not depend on the
action, so discounting only adds the noise of bootstrapped targets) and wider KL bounds than the
paper's (E-step 0.1, M-step 0.05 with 10 M-steps instead of 0.02 / 0.01 / 5): with the paper's
bounds the policy collapses onto an early, over-cautious action and cannot move off it within the
training budget. Train: ``agent = CVPO.train_on(env, CVPOConfig())`` with a ``Discrete``-action
environment (``MEGRates(flat=True)``).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from splitldm.rl.agents.common import PolicyMixin, check_obs, mlp

logger = logging.getLogger(__name__)


@dataclass
class CVPOConfig:
    total_steps: int = 20_000        # environment steps (tasks)
    hidden: int = 128                # two hidden layers of this width
    lr_actor: float = 5e-4
    lr_critic: float = 1e-3
    gamma: float = 0.0               # reward discount (MEGRates tasks are independent; MEG-CVPO: 0.97)
    cost_gamma: float = 0.0          # per-task constraint: the immediate cost
    kl_estep: float = 0.1            # E-step KL(q || pi_old) bound (MEG-CVPO: 0.02)
    kl_mstep: float = 0.05           # M-step trust region KL(pi_old || pi) (MEG-CVPO: 0.01)
    mstep_iters: int = 10            # (MEG-CVPO: 5)
    cost_limit: float = 0.005        # E_q[Q_c]: expected avoidable violations per task
    batch_size: int = 256
    estep_batch: int = 512
    buffer_size: int = 100_000
    learning_starts: int = 1_000     # uniform random actions before this
    update_every: int = 64           # env steps between updates (one MEGRates episode)
    critic_updates: int = 32         # critic gradient steps per update
    tau: float = 0.02                # polyak rate of the critic targets
    alpha_lr: float = 10.0           # M-step KL multiplier step
    seed: int = 0


class CVPO(PolicyMixin):
    """Actor ``pi(a|s)`` (categorical), critics ``Q_r``, ``Q_c``; `act` / `train_on` /
    `save_pretrained` / `from_pretrained`."""

    algorithm = "cvpo"

    def __init__(self, obs_dim: int, n_actions: int, config: CVPOConfig | None = None):
        if not isinstance(obs_dim, int) or obs_dim < 1 or not isinstance(n_actions, int) or n_actions < 2:
            raise ValueError(f"obs_dim, n_actions: expected ints >= 1 and >= 2, got {obs_dim!r}, {n_actions!r}")
        self.cfg = config or CVPOConfig()
        if self.cfg.cost_limit < 0 or self.cfg.kl_estep <= 0 or self.cfg.kl_mstep <= 0:
            raise ValueError("config: cost_limit must be >= 0 and the KL bounds > 0")
        torch.manual_seed(self.cfg.seed)
        h = self.cfg.hidden
        self.obs_dim, self.n_actions = obs_dim, n_actions
        self.actor = mlp([obs_dim, h, h, n_actions], out_gain=0.01)
        self.q_r = mlp([obs_dim, h, h, n_actions])
        self.q_c = mlp([obs_dim, h, h, n_actions])
        self.q_r_targ, self.q_c_targ = copy.deepcopy(self.q_r), copy.deepcopy(self.q_c)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=self.cfg.lr_actor)
        self.opt_critic = torch.optim.Adam([*self.q_r.parameters(), *self.q_c.parameters()], lr=self.cfg.lr_critic)
        self.eta, self.lam, self.alpha = 1.0, 1.0, 1.0
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        self.history: dict[str, list[float]] = {k: [] for k in
                                                ("step", "episode_reward", "episode_cost", "eta", "lam", "kl_q", "kl_m")}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def probs(self, obs) -> torch.Tensor:
        return F.softmax(self.actor(check_obs(obs, self.obs_dim)), -1)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> int:
        p = self.probs(obs)[0]
        return int(p.argmax()) if deterministic else int(torch.multinomial(p, 1, generator=self.gen))

    # ------------------------------------------------------------------ learning
    def cost_value(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``Q_c(s, .)`` in ``[0, 1 / (1 - cost_gamma)]``: the cost network outputs logits (costs are in [0, 1])."""
        return torch.sigmoid((self.q_c_targ if target else self.q_c)(obs)) / (1.0 - self.cfg.cost_gamma)

    def _critic_step(self, b) -> None:
        cfg = self.cfg
        with torch.no_grad():
            pi_next = F.softmax(self.actor(b["obs2"]), -1)
            nonterm = 1.0 - b["term"]
            y_r = b["rew"] + cfg.gamma * nonterm * (pi_next * self.q_r_targ(b["obs2"])).sum(-1)
            y_c = b["cost"] + cfg.cost_gamma * nonterm * (pi_next * self.cost_value(b["obs2"], True)).sum(-1)
            y_c = (y_c * (1.0 - cfg.cost_gamma)).clamp(0.0, 1.0)   # as a probability for the logit head
        q_r = self.q_r(b["obs"]).gather(1, b["act"][:, None])[:, 0]
        logit_c = self.q_c(b["obs"]).gather(1, b["act"][:, None])[:, 0]
        loss = F.mse_loss(q_r, y_r) + F.binary_cross_entropy_with_logits(logit_c, y_c)
        self.opt_critic.zero_grad()
        loss.backward()
        self.opt_critic.step()
        with torch.no_grad():
            for net, targ in ((self.q_r, self.q_r_targ), (self.q_c, self.q_c_targ)):
                for p, pt in zip(net.parameters(), targ.parameters()):
                    pt.mul_(1 - cfg.tau).add_(cfg.tau * p)

    def e_step(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q(a|s), pi_old(a|s)) for states ``obs`` (B, obs_dim); updates ``eta``, ``lam``."""
        cfg = self.cfg
        with torch.no_grad():
            logp_old = F.log_softmax(self.actor(obs), -1).double()
            qr, qc = self.q_r_targ(obs).double(), self.cost_value(obs, target=True).double()

        def dual(x):
            xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            eta, lam = xt[0], xt[1]
            adv = (qr - lam * qc) / eta
            g = eta * cfg.kl_estep + lam * cfg.cost_limit + eta * torch.logsumexp(logp_old + adv, -1).mean()
            g.backward()
            return float(g.detach()), xt.grad.numpy().copy()

        res = minimize(dual, np.array([self.eta, self.lam]), jac=True, method="L-BFGS-B",
                       bounds=[(1e-3, 1e3), (0.0, 1e4)])
        self.eta, self.lam = float(res.x[0]), float(res.x[1])
        with torch.no_grad():
            q = F.softmax(logp_old + (qr - self.lam * qc) / self.eta, -1)
            self.history["kl_q"].append(float((q * (q.clamp_min(1e-30).log() - logp_old)).sum(-1).mean()))
        return q.float(), logp_old.exp().float()

    def m_step(self, obs: torch.Tensor, q: torch.Tensor, pi_old: torch.Tensor) -> float:
        """Weighted maximum likelihood with a KL(pi_old || pi) trust region; returns the final KL."""
        cfg = self.cfg
        kl = 0.0
        for _ in range(cfg.mstep_iters):
            logp = F.log_softmax(self.actor(obs), -1)
            kl_t = (pi_old * (pi_old.clamp_min(1e-30).log() - logp)).sum(-1).mean()
            loss = -(q * logp).sum(-1).mean() + self.alpha * kl_t
            self.opt_actor.zero_grad()
            loss.backward()
            self.opt_actor.step()
            kl = float(kl_t.detach())
            self.alpha = max(0.0, self.alpha + cfg.alpha_lr * (kl - cfg.kl_mstep))
        self.history["kl_m"].append(kl)
        return kl

    def update(self, buf: "_Replay", rng: np.random.Generator) -> None:
        for _ in range(self.cfg.critic_updates):
            self._critic_step(buf.sample(self.cfg.batch_size, rng))
        obs = buf.sample(self.cfg.estep_batch, rng)["obs"]
        q, pi_old = self.e_step(obs)
        self.m_step(obs, q, pi_old)
        self.history["eta"].append(self.eta)
        self.history["lam"].append(self.lam)

    @classmethod
    def train_on(cls, env, config: CVPOConfig | None = None, log=None) -> "CVPO":
        """Train on ``env`` (Discrete actions, ``info["constraint_cost"]``) for ``config.total_steps``."""
        log = log or logger.info  # progress lines (None: this module's logger, INFO)
        from gymnasium import spaces

        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError("env: CVPO here needs a Discrete action space (e.g. MEGRates(flat=True))")
        cfg = config or CVPOConfig()
        agent = cls(int(env.observation_space.shape[0]), int(env.action_space.n), cfg)
        rng = np.random.default_rng(cfg.seed)
        buf = _Replay(cfg.buffer_size, agent.obs_dim)
        obs, _ = env.reset(seed=cfg.seed)
        ep_r, ep_c, episode, t0 = 0.0, 0.0, 0, time.time()
        for step in range(cfg.total_steps):
            a = int(rng.integers(agent.n_actions)) if step < cfg.learning_starts else agent.act(obs, deterministic=False)
            obs2, r, term, trunc, info = env.step(a)
            c = float(info.get("constraint_cost", 0.0))
            buf.add(obs, a, r, c, obs2, term)
            ep_r, ep_c = ep_r + r, ep_c + c
            obs = obs2
            if term or trunc:
                agent.history["step"].append(step + 1)
                agent.history["episode_reward"].append(ep_r)
                agent.history["episode_cost"].append(ep_c)
                episode += 1
                if log and episode % 20 == 0:
                    log(f"cvpo step {step + 1}: episode reward {ep_r:.2f} cost {ep_c:.0f} eta {agent.eta:.3g} "
                        f"lam {agent.lam:.3g} ({time.time() - t0:.0f} s)")
                ep_r, ep_c = 0.0, 0.0
                obs, _ = env.reset(seed=cfg.seed + 1 + episode)
            if step + 1 >= cfg.learning_starts and (step + 1) % cfg.update_every == 0:
                agent.update(buf, rng)
        return agent

    # ------------------------------------------------------------------ io
    def _init_config(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "n_actions": self.n_actions, "config": asdict(self.cfg)}

    @classmethod
    def _from_init_config(cls, config) -> "CVPO":
        return cls(config["obs_dim"], config["n_actions"], CVPOConfig(**config["config"]))

    def _weights(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "q_r": self.q_r, "q_c": self.q_c}

    def _training_state(self) -> dict[str, Any]:
        return {"eta": self.eta, "lam": self.lam, "history": self.history}

    def _load_weights_and_state(self, weights, state) -> None:
        for name in ("actor", "q_r", "q_c"):
            getattr(self, name).load_state_dict(weights[name])
        self.q_r_targ.load_state_dict(weights["q_r"])
        self.q_c_targ.load_state_dict(weights["q_c"])
        self.eta, self.lam, self.history = state["eta"], state["lam"], state["history"]


class _Replay:
    def __init__(self, size: int, obs_dim: int):
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.obs2 = np.zeros((size, obs_dim), np.float32)
        self.act = np.zeros(size, np.int64)
        self.rew = np.zeros(size, np.float32)
        self.cost = np.zeros(size, np.float32)
        self.term = np.zeros(size, np.float32)
        self.size, self.n, self.i = size, 0, 0

    def add(self, o, a, r, c, o2, term):
        i = self.i
        self.obs[i], self.act[i], self.rew[i], self.cost[i], self.obs2[i], self.term[i] = o, a, r, c, o2, float(term)
        self.i = (i + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def sample(self, k: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.n, size=k)
        return {"obs": torch.from_numpy(self.obs[idx]), "obs2": torch.from_numpy(self.obs2[idx]),
                "act": torch.from_numpy(self.act[idx]), "rew": torch.from_numpy(self.rew[idx]),
                "cost": torch.from_numpy(self.cost[idx]), "term": torch.from_numpy(self.term[idx])}
