"""``splitldm rl train --config configs/rl/<x>.yaml`` and ``splitldm rl eval --policy <dir>``:
train a MEG controller (CVPO, PPO-Lagrangian, PPO), a placement agent (D3QL, configs/rl/d3ql.yaml) or
the caching + allocation pair (T2DRL = DDQN + D3PG, configs/rl/caching.yaml) and measure it against
the oracles and baselines on held-out draws. Training writes policy.safetensors, policy.json, curve.png, eval.json."""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers) -> None:
    """Add the ``rl`` subcommand (``train`` / ``eval``) to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("rl", help="train / evaluate MEG controllers (CVPO, PPO-Lagrangian, PPO, D3QL, T2DRL)",
                              description=__doc__)
    sub = p.add_subparsers(dest="rl_command", required=True)
    t = sub.add_parser("train", help="train a controller from a run config")
    t.add_argument("--config", required=True, help="YAML run config (configs/rl/cvpo.yaml)")
    t.add_argument("--output", default=None, help="output folder (overrides the config)")
    t.add_argument("--total-steps", type=int, default=None, help="environment steps (overrides the config)")
    t.add_argument("--threads", type=int, default=int(os.environ.get("SPLITLDM_THREADS", "1")))
    t.set_defaults(func=run_train)
    e = sub.add_parser("eval", help="evaluate a saved controller against oracles and baselines")
    e.add_argument("--policy", required=True, help="folder written by 'rl train'")
    e.add_argument("--episodes", type=int, default=20)
    e.add_argument("--seed", type=int, default=100_000, help="first held-out episode seed")
    e.add_argument("--threads", type=int, default=int(os.environ.get("SPLITLDM_THREADS", "1")))
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from splitldm.rl.train import load_run_config, train

    torch.set_num_threads(max(1, args.threads))
    cfg = load_run_config(args.config)
    if args.output:
        cfg["output"] = args.output
    if args.total_steps:
        cfg["hparams"]["total_steps"] = args.total_steps
    _, summary = train(cfg)
    print(json.dumps(summary))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch
    from pathlib import Path

    from splitldm.rl.train import evaluate_agent, load_agent

    torch.set_num_threads(max(1, args.threads))
    agent = load_agent(args.policy)
    run = json.loads((Path(args.policy) / "run.json").read_text())
    print(json.dumps(evaluate_agent(agent, run["env"], args.episodes, args.seed)))
    return 0
