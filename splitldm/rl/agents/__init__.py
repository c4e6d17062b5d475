"""Controllers, one file each (CleanRL style): CVPO, PPO, PPO-Lagrangian, D3QL, DDQN, D3PG, T2DRL.

Every controller saves and loads one way (`common.PolicyMixin`): ``agent.save_pretrained(folder)`` /
``Class.from_pretrained(folder_or_name)``; `auto.AutoPolicy.from_pretrained` loads any of them.
"""
