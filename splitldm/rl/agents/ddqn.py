"""DDQN for model caching (T2DRL's long-timescale agent): double DQN with action masks, one file.

The same learner as `splitldm.rl.agents.d3ql.D3QL` (replay, double target, hard target sync, masked
epsilon-greedy) with a plain Q head instead of the dueling one, and defaults sized for
`splitldm.rl.envs.caching.ModelCaching`, where one step is one frame (so far fewer steps).

Train: ``agent = DDQN.train_on(ModelCaching(allocator=...), DDQNConfig())``; act: ``agent.act(obs, mask)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitldm.rl.agents.d3ql import D3QL, D3QLConfig

__all__ = ["DDQN", "DDQNConfig"]


@dataclass
class DDQNConfig(D3QLConfig):
    total_steps: int = 3_000         # frames
    lr: float = 1e-3
    gamma: float = 0.5               # a cache persists into the next frame (load cost), not much further
    batch_size: int = 64
    buffer_size: int = 20_000
    learning_starts: int = 300
    target_every: int = 100
    eps_fraction: float = 0.6
    dueling: bool = False


class DDQN(D3QL):
    """Double DQN (no dueling head) with action masks."""

    algorithm = "ddqn"
    config_cls = DDQNConfig
