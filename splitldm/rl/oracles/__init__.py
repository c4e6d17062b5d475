"""Reference policies: exhaustive / numerical optima and the classical heuristics the papers compare with,
one module per environment family: `meg` (MEGRates, SeedPower), `placement` (ChainPlacement), `caching`
(ModelCaching, ResourceAllocation). A policy is ``policy(obs, env) -> action``."""
