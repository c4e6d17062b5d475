"""``splitldm quality-table``: measure a checkpoint's quality table for the RL environments.

Runs the real split pipeline (all steps on the ES, the latent through TokenMerge and, for analog
channels, an uncoded MMSE link) over steps x merge ratio x SNR x channel and writes a JSON
`splitldm.eval.quality.QualityTable` (latent MSE and image PSNR against the 12-step ideal-link output)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys

from splitldm.cli.demo import THREADS_HELP


def register(subparsers) -> None:
    """Add the ``quality-table`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("quality-table", help="measure quality vs (steps, merge ratio, SNR, channel)",
                              description=__doc__)
    p.add_argument("--pipeline", default="tiny", help="pipeline zoo name or folder (default: the shipped 'tiny')")
    p.add_argument("--output", required=True, help="JSON file to write (e.g. runs/quality/tiny.json)")
    p.add_argument("--steps", nargs="+", type=int, default=[4, 5, 6, 7, 8, 9, 10, 11, 12])
    p.add_argument("--merge-ratios", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75])
    p.add_argument("--snr-db", nargs="+", type=float, default=[0.0])
    p.add_argument("--channels", nargs="+", default=["none"], help="none / awgn / rayleigh")
    p.add_argument("--reference-steps", type=int, default=12)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--prompts", nargs="+", default=None, help="prompts (default: 4 from the tokenizer's words)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--draws", type=int, default=1,
                   help="channel draws per (prompt, seed) of each noisy cell (>= 2: 95%% intervals over draws)")
    p.add_argument("--interval", choices=["auto", "draws", "prompts"], default="auto",
                   help="per-cell interval: over channel draws (prompts fixed) or over prompt-seed pairs")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)


DEFAULT_PROMPTS = ["a red circle", "a blue square on a green background", "a yellow triangle", "a small white star"]


def run(args: argparse.Namespace) -> int:
    from splitldm.checks import check_output_path, check_seed
    from splitldm.eval.quality import build_quality_table, pipeline_quality_fn
    from splitldm.eval.threads import set_threads
    from splitldm.pipeline.models import load_pipeline
    from splitldm.zoo import is_zoo_name

    for seed in args.seeds:
        check_seed(seed, "--seeds")
    if args.draws < 1:
        raise ValueError(f"--draws: expected an int >= 1 (channel draws per prompt), got {args.draws}")
    if args.interval == "draws" and args.draws < 2:
        raise ValueError("--interval: 'draws' needs --draws >= 2")
    check_output_path(args.output, "--output")  # before the work: a blocked or unwritable --output fails now
    set_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("splitldm").setLevel(logging.INFO)
    pipe = load_pipeline(args.pipeline)
    fn = pipeline_quality_fn(pipe, reference_steps=args.reference_steps, guidance_scale=args.guidance_scale)
    table = build_quality_table(
        fn, args.steps, args.merge_ratios, args.snr_db, args.channels, args.prompts or DEFAULT_PROMPTS, args.seeds,
        meta={"pipeline": str(args.pipeline), "reference_steps": args.reference_steps,
              "guidance_scale": args.guidance_scale, "source": f"measured: {args.pipeline}",
              "command": "splitldm " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))},
        progress=True if args.progress else None, draws=args.draws, interval=args.interval,
        models=[args.pipeline] if is_zoo_name(args.pipeline) else [])
    path = table.save(args.output)
    print(json.dumps({"output": str(path), "cells": int(table.metrics["latent_mse"].size),
                      "seconds": table.meta["seconds"]}))
    return 0
