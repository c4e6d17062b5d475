"""Controllers, one file each (CleanRL style): CVPO, PPO, PPO-Lagrangian, D3QL, DDQN, D3PG, T2DRL."""
