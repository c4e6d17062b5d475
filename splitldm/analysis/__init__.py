"""Closed-form references and cost models: information-theoretic limits (OPTA, capacities, LMMSE) and
compute / radio / energy costs of a split."""
