"""``splitldm evaluate --config configs/evaluate.yaml``: SNR x channel x rho sweep of the seed codec and
the baselines (see `splitldm.eval.evaluate`). Writes ``results.json`` and ``psnr_vs_snr.png``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from splitldm.cli.demo import THREADS_HELP


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("evaluate", help="sweep SNR x channel x rho: seed codec vs baselines vs OPTA",
                              description=__doc__)
    p.add_argument("--config", required=True, help="YAML file of EvalConfig fields (configs/evaluate.yaml)")
    p.add_argument("--output", default=None, help="output folder (overrides the config)")
    p.add_argument("--pipeline", default=None, help="pipeline zoo name or folder (overrides the config)")
    p.add_argument("--codecs", nargs="+", default=None, help="SeedCodec zoo names or folders (override the config)")
    p.add_argument("--snr-db", nargs="+", type=float, default=None, help="SNR points in dB (override)")
    p.add_argument("--num-prompts", type=int, default=None, help="held-out prompts (override)")
    p.add_argument("--draws", type=int, default=None,
                   help="channel draws per prompt and point (override; >= 2 for the intervals over draws)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--quiet", action="store_true", help="print only the final JSON summary line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitldm.checks import check_output_path
    from splitldm.eval.evaluate import EvalConfig, sweep
    from splitldm.eval.threads import set_threads

    set_threads(args.threads)
    if not args.progress:  # the application's choice: no diffusers loading bars either
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("splitldm").setLevel(logging.WARNING if args.quiet else logging.INFO)
    cfg = EvalConfig.from_yaml(args.config, output=args.output, pipeline=args.pipeline, codecs=args.codecs,
                               snr_db=args.snr_db, num_prompts=args.num_prompts, draws=args.draws)
    check_output_path(cfg.output, "--output" if args.output else "output", folder=True)  # before the sweep
    results = sweep(cfg, progress=args.progress and not args.quiet)
    print(json.dumps({"output": cfg.output, "rows": len(results["rows"]), "timing_s": results["timing_s"],
                      "fid_extractor": results["reference"]["fid_extractor"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m splitldm.cli.evaluate --config ...`` (same as ``splitldm evaluate``)."""
    parser = argparse.ArgumentParser(prog="splitldm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - the `splitldm` command's one-line errors (exit 2)
        from splitldm.cli.main import _is_user_error, error_line

        if not _is_user_error(exc):
            raise
        print(error_line(args, exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
