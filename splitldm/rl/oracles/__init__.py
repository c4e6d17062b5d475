"""Reference policies: exhaustive / numerical optima and the classical heuristics the papers compare with."""
