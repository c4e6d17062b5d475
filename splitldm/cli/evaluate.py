"""``splitldm evaluate --config configs/evaluate.yaml``: SNR x channel x rho sweep of the seed codec and
the baselines (see `splitldm.eval.evaluate`). Writes ``results.json`` and ``psnr_vs_snr.png``."""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("evaluate", help="sweep SNR x channel x rho: seed codec vs baselines vs OPTA",
                              description=__doc__)
    p.add_argument("--config", required=True, help="YAML file of EvalConfig fields (configs/evaluate.yaml)")
    p.add_argument("--output", default=None, help="output folder (overrides the config)")
    p.add_argument("--pipeline", default=None, help="pipeline name or folder (overrides the config)")
    p.add_argument("--codecs", nargs="+", default=None, help="SeedCodec folders (override the config)")
    p.add_argument("--snr-db", nargs="+", type=float, default=None, help="SNR points in dB (override)")
    p.add_argument("--num-prompts", type=int, default=None, help="held-out prompts (override)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SPLITLDM_THREADS", "1")),
                   help="torch CPU threads (default $SPLITLDM_THREADS or 1)")
    p.add_argument("--quiet", action="store_true", help="print only the final JSON summary line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from splitldm.eval.evaluate import EvalConfig, sweep

    torch.set_num_threads(max(1, args.threads))
    cfg = EvalConfig.from_yaml(args.config, output=args.output, pipeline=args.pipeline, codecs=args.codecs,
                               snr_db=args.snr_db, num_prompts=args.num_prompts)
    results = sweep(cfg, log=None if args.quiet else print)
    print(json.dumps({"output": cfg.output, "rows": len(results["rows"]), "timing_s": results["timing_s"],
                      "fid_extractor": results["reference"]["fid_extractor"]}))
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m splitldm.cli.evaluate --config ...``) until the lead wires the CLI."""
    parser = argparse.ArgumentParser(prog="splitldm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
