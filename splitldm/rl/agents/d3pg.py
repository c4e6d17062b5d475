"""D3PG: DDPG whose actor is a small conditional diffusion model over the action (T2DRL), one file.

Actor: ``x_K ~ N(0, I)`` in R^(2U) (a logit per user for compute and for bandwidth) is denoised in
``denoise_steps`` DDPM steps by ``eps_theta(x_k, k, s)`` (an MLP conditioned on the state and the
step), with a VP schedule ``beta_k`` linear in [``beta_min``, ``beta_max``]:

    x0_hat  = clip((x_k - sqrt(1 - abar_k) eps_theta(x_k, k, s)) / sqrt(abar_k), -clip, clip)
    x_{k-1} = beta_k sqrt(abar_{k-1}) / (1 - abar_k) x0_hat + (1 - abar_{k-1}) sqrt(alpha_k) / (1 - abar_k) x_k + sigma_k z

(the DDPM posterior with the predicted ``x_0`` clipped, as in Diffusion-QL; ``z = 0`` at the last
step, ``sigma_k^2 = beta_k (1 - abar_{k-1}) / (1 - abar_k)``). With ``predict_x0=True`` (default)
the network predicts ``x_0`` itself (Diffusion-QL's ``predict_epsilon=False``) and its last layer
starts at zero, so the untrained actor outputs ``x_0 = 0``, i.e. **equal shares**, and training
moves the allocation away from equal shares only where the critic says it pays (a residual on the
equal allocation). With ``predict_x0=False`` it predicts the noise as above. The allocation is
``softmax`` of each half of ``x_0``: two points of the simplex (compute shares, bandwidth shares), so
every action is valid by construction. As in the paper the actor is trained through the whole
reverse chain to maximise the critic: ``loss = -Q_1(s, pi(s))``.

Critics: twin ``Q_1, Q_2(s, a)`` regressed on ``r + gamma (1 - done) min_i Q_i'(s', pi'(s'))`` (target
networks by Polyak averaging, rate ``tau``), actor updated every ``policy_delay`` critic steps. The
default ``gamma = 0``: a slot's allocation does not change the next slot's requests, so the immediate
reward is the whole return (set it > 0 for environments where it does). Exploration: the reverse
chain's own noise plus Gaussian noise of std ``expl_noise`` on the logits.

Train: ``agent = D3PG.train_on(ResourceAllocation(...), D3PGConfig())``; act: ``agent.act(obs)`` ->
(2U,) shares (each half sums to 1).
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

from splitldm.rl.agents.common import PolicyMixin, check_obs

__all__ = ["D3PG", "D3PGConfig", "DiffusionActor", "UserCritic"]

logger = logging.getLogger(__name__)


@dataclass
class D3PGConfig:
    total_steps: int = 20_000        # environment steps (slots)
    hidden: int = 128
    denoise_steps: int = 5           # reverse diffusion steps of the actor
    beta_min: float = 0.1
    beta_max: float = 0.9
    clip: float = 3.0                # |logit| bound of the predicted x_0 at every reverse step
    predict_x0: bool = True          # the denoiser predicts x_0 (zero-initialised: equal shares at start)
    critic: str = "mlp"              # "mlp": Q(s, a) one MLP; "users": per-user sum (needs active_stride)
    active_stride: int = 0           # > 0: obs holds U blocks of this many features, the last one the
                                     # user's "active" flag; inactive users get no share (0 = off)
    lr_actor: float = 3e-4
    lr_critic: float = 1e-3
    gamma: float = 0.0               # see the module docstring
    tau: float = 0.005
    batch_size: int = 128
    buffer_size: int = 100_000
    learning_starts: int = 1_000     # random actions (Dirichlet) before this
    policy_delay: int = 2
    expl_noise: float = 0.3          # std of the Gaussian on the logits while training
    grad_clip: float = 5.0
    seed: int = 0


def _relu_mlp(sizes: list[int], act=torch.nn.Mish) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return torch.nn.Sequential(*layers)


class DiffusionActor(torch.nn.Module):
    """State-conditioned DDPM over the (2, U) allocation logits; ``forward(obs) -> (B, 2U)`` shares."""

    def __init__(self, obs_dim: int, n_users: int, hidden: int = 128, steps: int = 5,
                 beta_min: float = 0.1, beta_max: float = 0.9, clip: float = 3.0, predict_x0: bool = False):
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        if not 0 < beta_min <= beta_max < 1:
            raise ValueError(f"beta_min, beta_max: expected 0 < min <= max < 1, got {beta_min}, {beta_max}")
        self.U, self.K = n_users, steps
        self.act_dim = 2 * n_users
        self.eps = _relu_mlp([self.act_dim + obs_dim + 1, hidden, hidden, self.act_dim])
        self.predict_x0 = bool(predict_x0)
        if self.predict_x0:  # x_0 = 0 (equal shares) until trained
            torch.nn.init.zeros_(self.eps[-1].weight)
            torch.nn.init.zeros_(self.eps[-1].bias)
        beta = torch.linspace(beta_min, beta_max, steps) if steps > 1 else torch.tensor([beta_min])
        alpha = 1 - beta
        abar = torch.cumprod(alpha, 0)
        abar_prev = torch.cat([torch.ones(1), abar[:-1]])
        self.register_buffer("beta", beta)
        self.register_buffer("alpha", alpha)
        self.register_buffer("abar", abar)
        self.register_buffer("sigma", (beta * (1 - abar_prev) / (1 - abar)).sqrt())
        self.register_buffer("coef_x0", beta * abar_prev.sqrt() / (1 - abar))
        self.register_buffer("coef_xt", (1 - abar_prev) * alpha.sqrt() / (1 - abar))
        self.clip = float(clip)

    def logits(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               stochastic: bool = True) -> torch.Tensor:
        """x_0 (B, 2U) after the reverse chain; ``stochastic=False`` starts at x_K = 0 with no noise."""
        B = obs.shape[0]
        x = torch.randn(B, self.act_dim, generator=generator) if stochastic else torch.zeros(B, self.act_dim)
        for k in reversed(range(self.K)):
            t = torch.full((B, 1), (k + 1) / self.K)
            out = self.eps(torch.cat([x, obs, t], -1))
            # predicted x_0, clipped to the logit range (keeps the chain stable), then the posterior mean
            x0 = out if self.predict_x0 else (x - (1 - self.abar[k]).sqrt() * out) / self.abar[k].sqrt()
            x0 = x0.clamp(-self.clip, self.clip)
            x = self.coef_x0[k] * x0 + self.coef_xt[k] * x
            if k > 0 and stochastic:
                x = x + self.sigma[k] * torch.randn(x.shape, generator=generator)
        return x

    @staticmethod
    def shares(logits: torch.Tensor, n_users: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2U) logits -> (B, 2U): softmax over users for compute, then for bandwidth;
        ``active`` (B, U) bool: only active users share (rows with none active fall back to all)."""
        if active is not None:
            active = active | ~active.any(-1, keepdim=True)
            logits = logits.masked_fill(~active.repeat(1, 2), -1e9)
        return torch.cat([F.softmax(logits[:, :n_users], -1), F.softmax(logits[:, n_users:], -1)], -1)

    def forward(self, obs: torch.Tensor, generator: torch.Generator | None = None,
                stochastic: bool = True, active: torch.Tensor | None = None) -> torch.Tensor:
        return self.shares(self.logits(obs, generator, stochastic), self.U, active)


class UserCritic(torch.nn.Module):
    """Per-user critic for rewards that are a sum over users (DeepSets / value decomposition):
    ``Q(s, a) = sum_u active_u psi(h_u, (1/U) sum_v active_v h_v)``, ``h_u = phi(s_u, c_u, b_u, n c_u, n b_u)``
    where ``s_u`` is user ``u``'s block of ``stride`` observation features (the last one its active
    flag), ``c_u, b_u`` its two shares and ``n`` the number of active users (so ``n c_u`` is the share
    relative to an equal one). The same weights serve every user slot; the pooled term lets a user's
    value depend on the others (shares are normalised across users)."""

    def __init__(self, stride: int, n_users: int, hidden: int = 128):
        super().__init__()
        self.k, self.U = int(stride), int(n_users)
        self.phi = _relu_mlp([self.k + 4, hidden, hidden], torch.nn.ReLU)   # ReLU: cheap on (B x U) rows
        self.psi = _relu_mlp([2 * hidden, hidden, 1], torch.nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, obs_dim + 2U), the observation then the action (as the MLP critic takes it) -> (B, 1)."""
        B = x.shape[0]
        s = x[:, : self.k * self.U].view(B, self.U, self.k)
        a = x[:, self.k * self.U:]
        c, b = a[:, : self.U, None], a[:, self.U:, None]
        act = (s[:, :, -1:] > 0.5).float()
        n = act.sum(1, keepdim=True).clamp(min=1.0)
        h = F.relu(self.phi(torch.cat([s, c, b, n * c, n * b], -1)))            # (B, U, H)
        pool = (act * h).sum(1, keepdim=True).expand(-1, self.U, -1) / self.U
        return (act * self.psi(torch.cat([h, pool], -1))).sum(1)               # (B, 1)


class D3PG(PolicyMixin):
    """Diffusion actor + twin critics; `act`, `train_on`, `save_pretrained`, `from_pretrained`, `history`."""

    algorithm = "d3pg"

    def __init__(self, obs_dim: int, act_dim: int, config: D3PGConfig | None = None):
        if not isinstance(obs_dim, int) or obs_dim < 1 or not isinstance(act_dim, int) or act_dim < 2 or act_dim % 2:
            raise ValueError(f"obs_dim, act_dim: expected an int >= 1 and an even int >= 2, got {obs_dim!r}, {act_dim!r}")
        self.cfg = config or D3PGConfig()
        c = self.cfg
        if not 0 <= c.gamma <= 1 or not 0 < c.tau <= 1:
            raise ValueError(f"gamma, tau: expected gamma in [0, 1] and tau in (0, 1], got {c.gamma}, {c.tau}")
        torch.manual_seed(c.seed)
        self.obs_dim, self.act_dim, self.U = obs_dim, act_dim, act_dim // 2
        self.actor = DiffusionActor(obs_dim, self.U, c.hidden, c.denoise_steps, c.beta_min, c.beta_max, c.clip,
                                    c.predict_x0)
        if c.critic == "users":
            if c.active_stride <= 0 or c.active_stride * self.U != obs_dim:
                raise ValueError(f"critic: 'users' needs active_stride x {self.U} users == obs_dim {obs_dim}, "
                                 f"got active_stride={c.active_stride}")
            self.q1, self.q2 = UserCritic(c.active_stride, self.U, c.hidden), UserCritic(c.active_stride, self.U, c.hidden)
        elif c.critic == "mlp":
            self.q1 = _relu_mlp([obs_dim + act_dim, c.hidden, c.hidden, 1])
            self.q2 = _relu_mlp([obs_dim + act_dim, c.hidden, c.hidden, 1])
        else:
            raise ValueError(f"critic: expected 'mlp' or 'users', got {c.critic!r}")
        self.actor_targ, self.q1_targ, self.q2_targ = (copy.deepcopy(m) for m in (self.actor, self.q1, self.q2))
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=c.lr_actor)
        self.opt_critic = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=c.lr_critic)
        self.gen = torch.Generator().manual_seed(c.seed)
        self.rng = np.random.default_rng(c.seed)
        self.updates = 0
        self.history: dict[str, list[float]] = {k: [] for k in ("step", "episode", "episode_reward", "q_loss", "actor_q")}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs, explore: bool = False) -> np.ndarray:
        """(2U,) float32 shares: compute then bandwidth, each summing to 1 (the reverse chain is sampled
        with the agent's seeded generator). ``explore``: add the training noise on the logits."""
        x = check_obs(obs, self.obs_dim)
        logits = self.actor.logits(x, self.gen)  # the reverse chain is sampled, as in training
        if explore and self.cfg.expl_noise > 0:
            logits = logits + self.cfg.expl_noise * torch.randn(logits.shape, generator=self.gen)
        return DiffusionActor.shares(logits, self.U, self._active(x))[0].numpy().astype(np.float32)

    def _active(self, obs: torch.Tensor) -> torch.Tensor | None:
        k = self.cfg.active_stride
        if k <= 0:
            return None
        if k * self.U != self.obs_dim:
            raise ValueError(f"active_stride: {k} x {self.U} users != obs_dim {self.obs_dim}")
        return obs.view(obs.shape[0], self.U, k)[:, :, -1] > 0.5

    def policy(self):
        """``policy(obs, env) -> action`` for the evaluation loops / `ModelCaching(allocator=...)`."""
        return lambda obs, env: self.act(obs)

    # ------------------------------------------------------------------ learning
    def _q(self, net, obs, a):
        return net(torch.cat([obs, a], -1))[:, 0]

    def update(self, b: dict[str, torch.Tensor]) -> float:
        c = self.cfg
        with torch.no_grad():
            y = b["rew"]
            if c.gamma > 0:
                a2 = self.actor_targ(b["obs2"], self.gen, active=self._active(b["obs2"]))
                y = y + c.gamma * (1 - b["done"]) * torch.min(self._q(self.q1_targ, b["obs2"], a2),
                                                              self._q(self.q2_targ, b["obs2"], a2))
        loss = F.mse_loss(self._q(self.q1, b["obs"], b["act"]), y) + F.mse_loss(self._q(self.q2, b["obs"], b["act"]), y)
        self.opt_critic.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.q1.parameters(), *self.q2.parameters()], c.grad_clip)
        self.opt_critic.step()
        self.updates += 1
        if self.updates % c.policy_delay == 0:
            q_pi = self._q(self.q1, b["obs"], self.actor(b["obs"], self.gen, active=self._active(b["obs"])))
            a_loss = -q_pi.mean()
            self.opt_actor.zero_grad()
            a_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
            self.opt_actor.step()
            self.history["actor_q"].append(float(q_pi.mean().detach()))
            with torch.no_grad():
                for net, targ in ((self.actor, self.actor_targ), (self.q1, self.q1_targ), (self.q2, self.q2_targ)):
                    for p, pt in zip(net.parameters(), targ.parameters()):
                        pt.mul_(1 - c.tau).add_(c.tau * p)
        return float(loss.detach())

    @classmethod
    def train_on(cls, env, config: D3PGConfig | None = None, log=None) -> "D3PG":
        """Train on ``env`` (a Box action of shares, e.g. `ResourceAllocation`) for ``config.total_steps``."""
        log = log or logger.info  # progress lines (None: this module's logger, INFO)
        from gymnasium import spaces

        if not isinstance(env.action_space, spaces.Box) or len(env.action_space.shape) != 1:
            raise TypeError("env: D3PG needs a 1-d Box action space of shares (e.g. ResourceAllocation)")
        cfg = config or D3PGConfig()
        agent = cls(int(env.observation_space.shape[0]), int(env.action_space.shape[0]), cfg)
        n, d = cfg.buffer_size, agent.obs_dim
        buf = {"obs": np.zeros((n, d), np.float32), "obs2": np.zeros((n, d), np.float32),
               "act": np.zeros((n, agent.act_dim), np.float32), "rew": np.zeros(n, np.float32),
               "done": np.zeros(n, np.float32)}
        size, ptr = 0, 0
        obs, _ = env.reset(seed=cfg.seed)
        ep_r, episode, losses, t0 = 0.0, 0, [], time.time()
        for step in range(cfg.total_steps):
            if step < cfg.learning_starts:
                a = np.concatenate([agent.rng.dirichlet(np.ones(agent.U)), agent.rng.dirichlet(np.ones(agent.U))])
                a = a.astype(np.float32)
            else:
                a = agent.act(obs, explore=True)
            obs2, r, term, trunc, _ = env.step(a)
            for k, v in (("obs", obs), ("obs2", obs2), ("act", a), ("rew", r), ("done", float(term))):
                buf[k][ptr] = v
            ptr, size = (ptr + 1) % n, min(size + 1, n)
            ep_r += r
            obs = obs2
            if term or trunc:
                episode += 1
                h = agent.history
                h["step"].append(step + 1)
                h["episode"].append(episode)
                h["episode_reward"].append(ep_r)
                h["q_loss"].append(float(np.mean(losses)) if losses else float("nan"))
                if log and episode % 10 == 0:
                    log(f"d3pg step {step + 1}: episode {episode} reward {ep_r:.2f} q-loss {h['q_loss'][-1]:.4f} "
                        f"({time.time() - t0:.0f} s)")
                ep_r, losses = 0.0, []
                obs, _ = env.reset(seed=cfg.seed + episode)
            if step + 1 >= cfg.learning_starts:
                idx = agent.rng.integers(0, size, size=cfg.batch_size)
                losses.append(agent.update({k: torch.from_numpy(v[idx]) for k, v in buf.items()}))
        return agent

    # ------------------------------------------------------------------ io
    def _init_config(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "config": asdict(self.cfg)}

    @classmethod
    def _from_init_config(cls, config) -> "D3PG":
        cfg = {"predict_x0": False, **config["config"]}  # policies saved before the option predicted the noise
        return cls(config["obs_dim"], config["act_dim"], D3PGConfig(**cfg))

    def _weights(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "q1": self.q1, "q2": self.q2}

    def _training_state(self) -> dict[str, Any]:
        return {"updates": self.updates, "history": self.history}

    def _load_weights_and_state(self, weights, state) -> None:
        for name in ("actor", "q1", "q2"):
            getattr(self, name).load_state_dict(weights[name])
            getattr(self, name + "_targ").load_state_dict(weights[name])
        self.updates, self.history = int(state["updates"]), state["history"]
