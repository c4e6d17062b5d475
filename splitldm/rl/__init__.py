"""Reinforcement learning for mobile edge generation: environments, controllers, oracles.

Importing this package registers "splitldm/MEGRates-v0", "splitldm/MEGRatesFlat-v0" and
"splitldm/SeedPower-v0" with gymnasium.
"""

from splitldm.rl.envs.meg import MEGRates, SeedPower, register_envs

__all__ = ["MEGRates", "SeedPower", "register_envs"]
