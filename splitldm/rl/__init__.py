"""Reinforcement learning for mobile edge generation, arranged by role.

* `splitldm.rl.envs`: the gymnasium environments (MEGRates, SeedPower, ChainPlacement, ModelCaching,
  ResourceAllocation) and their one registry (`make_env`); importing registers every ``splitldm/`` id.
* `splitldm.rl.agents`: the controllers, one file each, saved / loaded with ``save_pretrained`` /
  ``from_pretrained`` (`splitldm.rl.agents.auto.AutoPolicy` loads any of them).
* `splitldm.rl.oracles`: reference policies (optima and classical heuristics).
* `splitldm.rl.evaluate`: the one evaluation loop, its summaries, suites and plots.
* `splitldm.rl.train`: config-driven training (``splitldm rl train``).
"""

from splitldm.rl.envs import make_env, register_envs
from splitldm.rl.envs.meg import MEGRates, SeedPower

__all__ = ["MEGRates", "SeedPower", "make_env", "register_envs"]
