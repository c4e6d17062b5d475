"""D3QL: double + dueling deep Q-learning with action masking, one file (LEARN-GDM's placement agent).

* Dueling head: ``Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)`` on a shared trunk.
* Double target: the online net picks ``a* = argmax_{a allowed in s'} Q(s', a)``, the target net
  values it: ``y = r + gamma (1 - done) Q_targ(s', a*)``; Huber loss; the target net is a copy
  synced every ``target_every`` steps (hard update).
* Action masking: the environment's ``info["action_mask"]`` (int8 per action) restricts both the
  behaviour policy (epsilon-greedy among allowed actions) and the max in the target; masked actions
  are never chosen.
* Uniform replay buffer; epsilon decays linearly from ``eps_start`` to ``eps_end`` over
  ``eps_fraction`` of training.
* Optional per-action head (``per_action_features=True``): when the last ``n_actions`` observation
  entries are one feature per action (`ChainPlacement`'s one-step lookahead), the advantage is one
  small MLP shared by all actions, ``A(s, a) = g(h(s), e_a, f_a)`` (``h``: the trunk, ``e_a``: a learned
  embedding of action ``a``, ``f_a``: its feature), instead of a separate output unit per action. The
  same weights then rank every action by its feature, which a flat head has to learn 49 times over.
* Optional ``n_step`` returns: the stored target is ``r_t + ... + gamma^(n-1) r_(t+n-1) +
  gamma^n Q(s_(t+n), a*)`` (truncated at the episode end), as in Rainbow.

Train: ``agent = D3QL.train_on(ChainPlacement(num_users=[2, 5, 10, 20]), D3QLConfig())``; act:
``agent.act(obs, mask)``. `splitldm.rl.agents.ddqn.DDQN` is this agent without the dueling head.
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

from splitldm.rl.agents.common import PolicyMixin, check_obs, mlp

__all__ = ["D3QL", "D3QLConfig", "QNet", "MaskedReplay"]

logger = logging.getLogger(__name__)


@dataclass
class D3QLConfig:
    total_steps: int = 30_000        # environment steps
    hidden: int = 128                # two hidden layers of this width
    lr: float = 5e-4
    gamma: float = 0.9               # discount across the requests of one frame
    batch_size: int = 64
    buffer_size: int = 50_000
    learning_starts: int = 1_000     # uniform random (allowed) actions before this
    train_every: int = 1             # env steps per gradient step
    target_every: int = 500          # env steps between hard target syncs
    eps_start: float = 1.0
    eps_end: float = 0.02
    eps_fraction: float = 0.5        # share of total_steps over which epsilon decays
    grad_clip: float = 10.0
    dueling: bool = True
    double: bool = True
    per_action_features: bool = False  # last n_actions obs entries: one feature per action (see above)
    action_embed: int = 16           # size of the learned action embedding of the per-action head
    n_step: int = 1                  # n-step returns (1 = plain one-step target)
    lr_end: float | None = None      # linear learning-rate decay to this value (None: constant lr)
    seed: int = 0


class QNet(torch.nn.Module):
    """``Q(s, .)`` (B, A) from observations (B, obs_dim); dueling or plain head; the advantage either
    one output unit per action or (``per_action``) one MLP shared by all actions over
    ``[trunk(s), embedding(a), obs[-A + a]]``."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 128, dueling: bool = True,
                 per_action: bool = False, embed: int = 16):
        super().__init__()
        self.dueling, self.per_action, self.n_actions = bool(dueling), bool(per_action), n_actions
        if self.per_action and obs_dim <= n_actions:
            raise ValueError(f"per_action_features: obs_dim {obs_dim} must exceed n_actions {n_actions} "
                             "(the last n_actions entries are the per-action features)")
        self.trunk = torch.nn.Sequential(mlp([obs_dim, hidden, hidden]), torch.nn.Tanh())
        if self.per_action:
            # g(h, e_a, f_a) = w2 . relu(W_h h + W_a [e_a, f_a] + b) + b2, computed for all actions at once
            half = max(8, hidden // 4)
            self.embed = torch.nn.Parameter(0.1 * torch.randn(n_actions, embed))
            self.adv_h = torch.nn.Linear(hidden, half)
            self.adv_a = torch.nn.Linear(embed + 1, half, bias=False)
            self.adv_out = torch.nn.Linear(half, 1)
        else:
            self.adv = torch.nn.Linear(hidden, n_actions)
        self.value = torch.nn.Linear(hidden, 1) if self.dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.trunk(obs)
        if self.per_action:
            f = obs[:, -self.n_actions:, None]                                     # (B, A, 1)
            e = self.embed.expand(obs.shape[0], -1, -1)                            # (B, A, E)
            z = torch.relu(self.adv_h(h)[:, None, :] + self.adv_a(torch.cat([e, f], -1)))
            a = self.adv_out(z)[..., 0]                                            # (B, A)
        else:
            a = self.adv(h)
        if not self.dueling:
            return a
        return self.value(h) + a - a.mean(-1, keepdim=True)


def _masked(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return q.masked_fill(mask <= 0, -1e9)


class MaskedReplay:
    """Uniform replay of (obs, action, reward, next obs, done, next action mask, bootstrap discount).

    ``disc`` is what multiplies the bootstrapped value: ``gamma^n (1 - done)`` for an ``n``-step
    return (None: not stored, the learner uses ``gamma (1 - done)``)."""

    def __init__(self, size: int, obs_dim: int, n_actions: int):
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.obs2 = np.zeros((size, obs_dim), np.float32)
        self.act = np.zeros(size, np.int64)
        self.rew = np.zeros(size, np.float32)
        self.done = np.zeros(size, np.float32)
        self.mask2 = np.zeros((size, n_actions), np.int8)
        self.disc = np.zeros(size, np.float32)
        self.has_disc = False
        self.size, self.n, self.i = size, 0, 0

    def add(self, o, a, r, o2, done, mask2, disc: float | None = None) -> None:
        i = self.i
        self.obs[i], self.act[i], self.rew[i], self.obs2[i], self.done[i], self.mask2[i] = o, a, r, o2, float(done), mask2
        if disc is not None:
            self.disc[i], self.has_disc = disc, True
        self.i = (i + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def sample(self, k: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.n, size=k)
        return {"obs": torch.from_numpy(self.obs[idx]), "obs2": torch.from_numpy(self.obs2[idx]),
                "act": torch.from_numpy(self.act[idx]), "rew": torch.from_numpy(self.rew[idx]),
                "done": torch.from_numpy(self.done[idx]), "mask2": torch.from_numpy(self.mask2[idx]),
                **({"disc": torch.from_numpy(self.disc[idx])} if self.has_disc else {})}


def _check_mask(mask, n: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != (n,):
        raise ValueError(f"mask: expected shape ({n},), got {m.shape}")
    if not m.any():
        raise ValueError("mask: no action is allowed")
    return m


class D3QL(PolicyMixin):
    """Double (+ dueling) DQN with action masks: `act`, `train_on`, `save_pretrained`, `from_pretrained`,
    `history`."""

    algorithm = "d3ql"
    config_cls = D3QLConfig

    def __init__(self, obs_dim: int, n_actions: int, config: D3QLConfig | None = None):
        if not isinstance(obs_dim, int) or obs_dim < 1 or not isinstance(n_actions, int) or n_actions < 2:
            raise ValueError(f"obs_dim, n_actions: expected ints >= 1 and >= 2, got {obs_dim!r}, {n_actions!r}")
        self.cfg = config or self.config_cls()
        for name in ("gamma", "eps_start", "eps_end"):
            v = getattr(self.cfg, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {v!r}")
        if not isinstance(self.cfg.n_step, int) or self.cfg.n_step < 1:
            raise ValueError(f"n_step: expected an int >= 1, got {self.cfg.n_step!r}")
        torch.manual_seed(self.cfg.seed)
        self.obs_dim, self.n_actions = obs_dim, n_actions
        self.q = QNet(obs_dim, n_actions, self.cfg.hidden, self.cfg.dueling, self.cfg.per_action_features,
                      self.cfg.action_embed)
        self.q_targ = copy.deepcopy(self.q)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=self.cfg.lr)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.updates = 0
        self.history: dict[str, list[float]] = {k: [] for k in ("step", "episode", "episode_reward",
                                                                 "episode_length", "loss", "epsilon")}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def q_values(self, obs) -> torch.Tensor:
        return self.q(check_obs(obs, self.obs_dim))

    @torch.no_grad()
    def act(self, obs, mask=None, epsilon: float = 0.0) -> int:
        """Greedy allowed action (``mask``: (A,) 0/1; None = all allowed); random allowed one w.p. ``epsilon``."""
        m = np.ones(self.n_actions, np.int8) if mask is None else _check_mask(mask, self.n_actions)
        if epsilon > 0 and self.rng.random() < epsilon:
            return int(self.rng.choice(np.flatnonzero(m)))
        q = _masked(self.q_values(obs)[0], torch.as_tensor(m))
        return int(q.argmax())

    def policy(self):
        """``policy(obs, env) -> action`` for the evaluation loops (reads the env's current mask)."""
        return lambda obs, env: self.act(obs, getattr(env, "unwrapped", env).action_mask())

    # ------------------------------------------------------------------ learning
    def sync_target(self) -> None:
        self.q_targ.load_state_dict(self.q.state_dict())

    def update(self, b: dict[str, torch.Tensor]) -> float:
        cfg = self.cfg
        with torch.no_grad():
            q2_targ = self.q_targ(b["obs2"])
            q2_sel = self.q(b["obs2"]) if cfg.double else q2_targ
            a2 = _masked(q2_sel, b["mask2"]).argmax(-1, keepdim=True)
            disc = b["disc"] if "disc" in b else cfg.gamma * (1.0 - b["done"])  # gamma^n, 0 after the end
            y = b["rew"] + disc * q2_targ.gather(1, a2)[:, 0]
        q = self.q(b["obs"]).gather(1, b["act"][:, None])[:, 0]
        loss = F.smooth_l1_loss(q, y)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.q.parameters(), cfg.grad_clip)
        self.opt.step()
        self.updates += 1
        return float(loss.detach())

    def epsilon_at(self, step: int) -> float:
        cfg = self.cfg
        frac = min(1.0, step / max(1.0, cfg.eps_fraction * cfg.total_steps))
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    @classmethod
    def train_on(cls, env, config: D3QLConfig | None = None, log=None):
        """Train on ``env`` (Discrete actions; ``info["action_mask"]`` optional) for ``config.total_steps``."""
        log = log or logger.info  # progress lines (None: this module's logger, INFO)
        from gymnasium import spaces

        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError(f"env: {cls.__name__} needs a Discrete action space")
        cfg = config or cls.config_cls()
        agent = cls(int(env.observation_space.shape[0]), int(env.action_space.n), cfg)
        n = agent.n_actions
        buf = MaskedReplay(cfg.buffer_size, agent.obs_dim, n)
        pending: list[tuple] = []  # (obs, action, reward) not yet stored (n-step returns)

        def store(upto: int, obs2, term: bool, mask2) -> None:
            """Store the oldest ``upto`` pending transitions with their (<= n)-step returns to ``obs2``."""
            for _ in range(upto):
                ret = sum(cfg.gamma ** i * p[2] for i, p in enumerate(pending))
                o, a0 = pending[0][0], pending[0][1]
                disc = cfg.gamma ** len(pending) * (1.0 - float(term))
                buf.add(o, a0, ret, obs2, term, mask2, disc if cfg.n_step > 1 else None)
                pending.pop(0)

        obs, info = env.reset(seed=cfg.seed)
        mask = np.asarray(info.get("action_mask", np.ones(n, np.int8)))
        ep_r, ep_len, episode, losses, t0 = 0.0, 0, 0, [], time.time()
        for step in range(cfg.total_steps):
            eps = 1.0 if step < cfg.learning_starts else agent.epsilon_at(step)
            a = agent.act(obs, mask, epsilon=eps)
            obs2, r, term, trunc, info = env.step(a)
            mask2 = np.asarray(info.get("action_mask", np.ones(n, np.int8)))
            pending.append((obs, a, r))
            if term or trunc:
                store(len(pending), obs2, term, mask2)
            elif len(pending) >= cfg.n_step:
                store(1, obs2, False, mask2)
            ep_r, ep_len = ep_r + r, ep_len + 1
            obs, mask = obs2, mask2
            if term or trunc:
                episode += 1
                h = agent.history
                h["step"].append(step + 1)
                h["episode"].append(episode)
                h["episode_reward"].append(ep_r)
                h["episode_length"].append(ep_len)
                h["loss"].append(float(np.mean(losses)) if losses else float("nan"))
                h["epsilon"].append(eps)
                if log and episode % 200 == 0:
                    log(f"{cls.algorithm} step {step + 1}: episode {episode} reward {ep_r:.2f} eps {eps:.2f} "
                        f"loss {h['loss'][-1]:.4f} ({time.time() - t0:.0f} s)")
                ep_r, ep_len, losses = 0.0, 0, []
                obs, info = env.reset(seed=cfg.seed + episode)
                mask = np.asarray(info.get("action_mask", np.ones(n, np.int8)))
            if step + 1 >= cfg.learning_starts and (step + 1) % cfg.train_every == 0 and buf.n > 0:
                if cfg.lr_end is not None:
                    frac = (step + 1 - cfg.learning_starts) / max(1, cfg.total_steps - cfg.learning_starts)
                    for g in agent.opt.param_groups:
                        g["lr"] = cfg.lr + frac * (cfg.lr_end - cfg.lr)
                losses.append(agent.update(buf.sample(cfg.batch_size, agent.rng)))
            if (step + 1) % cfg.target_every == 0:
                agent.sync_target()
        return agent

    # ------------------------------------------------------------------ io
    def _init_config(self) -> dict[str, Any]:
        return {"obs_dim": self.obs_dim, "n_actions": self.n_actions, "config": asdict(self.cfg)}

    @classmethod
    def _from_init_config(cls, config):
        return cls(config["obs_dim"], config["n_actions"], cls.config_cls(**config["config"]))

    def _weights(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q, "q_targ": self.q_targ}

    def _training_state(self) -> dict[str, Any]:
        return {"updates": self.updates, "history": self.history}

    def _load_weights_and_state(self, weights, state) -> None:
        self.q.load_state_dict(weights["q"])
        self.q_targ.load_state_dict(weights["q_targ"])
        self.updates, self.history = int(state["updates"]), state["history"]
