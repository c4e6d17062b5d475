"""Gymnasium environments of mobile edge generation, one module each: `meg` (MEGRates, SeedPower),
`placement` (ChainPlacement), `caching` (ModelCaching, ResourceAllocation). Importing this package
registers them under ``splitldm/`` (`registry.register_envs`, the one place registrations happen);
`make_env` builds one from a run config's ``env`` block."""

from splitldm.rl.envs.registry import ENV_IDS, make_env, register_envs

register_envs()

__all__ = ["ENV_IDS", "make_env", "register_envs"]
