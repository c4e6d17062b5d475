"""``splitldm rl train --config configs/rl/<x>.yaml`` and ``splitldm rl eval --policy <dir>``:
train a MEG controller (CVPO, PPO-Lagrangian, PPO), a placement agent (D3QL, configs/rl/d3ql.yaml) or
the caching + allocation pair (T2DRL = DDQN + D3PG, configs/rl/caching.yaml) and measure it against
the oracles and baselines on held-out draws. Training writes the policy (config.json, model.safetensors,
training_state.json; T2DRL: config.json + ddqn/ + d3pg/), run.json, curve.png and eval.json; progress
lines go to stderr, the summary (one JSON object) to stdout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def register(subparsers) -> None:
    """Add the ``rl`` subcommand (``train`` / ``eval``) to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("rl", help="train / evaluate MEG controllers (CVPO, PPO-Lagrangian, PPO, D3QL, T2DRL)",
                              description=__doc__)
    sub = p.add_subparsers(dest="rl_command", required=True)
    t = sub.add_parser("train", help="train a controller from a run config")
    t.add_argument("--config", required=True, help="YAML run config (configs/rl/cvpo.yaml)")
    t.add_argument("--output", default=None, help="output folder (overrides the config)")
    t.add_argument("--total-steps", type=int, default=None, help="environment steps (overrides the config)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $SPLITLDM_THREADS, else 1)")
    t.set_defaults(func=run_train)
    e = sub.add_parser("eval", help="evaluate a saved controller against oracles and baselines")
    e.add_argument("--policy", required=True, help="folder written by 'rl train' (config.json + run.json)")
    e.add_argument("--episodes", type=int, default=20)
    e.add_argument("--seed", type=int, default=100_000, help="first held-out episode seed")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $SPLITLDM_THREADS, else 1)")
    e.set_defaults(func=run_eval)


def _threads(args: argparse.Namespace) -> int:
    """``--threads``, else ``$SPLITLDM_THREADS``, else 1: an int >= 1 (anything else is a one-line error)."""
    from splitldm.checks import check_int

    if args.threads is not None:
        return check_int(args.threads, "--threads", 1)
    env = os.environ.get("SPLITLDM_THREADS", "1")
    try:
        return check_int(int(env), "$SPLITLDM_THREADS", 1)
    except ValueError:
        raise ValueError(f"$SPLITLDM_THREADS: expected an int >= 1, got {env!r}") from None


def _progress_to_stderr() -> None:
    """Show the controllers' progress lines (INFO records of ``splitldm.rl``) on stderr, once."""
    lg = logging.getLogger("splitldm.rl")
    if not any(getattr(h, "_splitldm_cli", False) for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._splitldm_cli = True
        lg.addHandler(h)
    lg.setLevel(logging.INFO)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from splitldm.checks import check_int, check_output_path
    from splitldm.rl.train import load_run_config, train

    torch.set_num_threads(_threads(args))
    cfg = load_run_config(args.config)
    if args.output:
        cfg["output"] = args.output
    if args.total_steps is not None:
        cfg["hparams"]["total_steps"] = check_int(args.total_steps, "--total-steps", 1)
    check_output_path(cfg["output"], "--output" if args.output else "output", folder=True)  # before training
    _progress_to_stderr()
    _, summary = train(cfg)
    print(json.dumps(summary))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch
    from pathlib import Path

    from splitldm.checks import check_int, check_seed, read_config
    from splitldm.rl.agents.auto import AutoPolicy
    from splitldm.rl.evaluate import evaluate_agent

    check_seed(args.seed, "--seed")
    check_int(args.episodes, "--episodes", 1)
    torch.set_num_threads(_threads(args))
    run_file = Path(args.policy) / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"--policy: {args.policy} has no run.json (expected a folder written by 'rl train')")
    run = read_config(args.policy, "run.json", arg="--policy")  # strict JSON, no symlink out of the folder
    if not isinstance(run.get("env"), dict):
        raise ValueError(f"--policy: {run_file} has no 'env' object (expected a folder written by 'rl train')")
    agent = AutoPolicy.from_pretrained(args.policy)
    print(json.dumps(evaluate_agent(agent, run["env"], args.episodes, args.seed)))
    return 0
