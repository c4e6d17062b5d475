"""`splitldm demo`: the main job (see `splitldm.eval.demo`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

THREADS_HELP = ("torch CPU threads (default: $SPLITLDM_THREADS, else $OMP_NUM_THREADS, else the CPUs this process "
                "may use minus one, 1 to 8; see splitldm.eval.threads)")


def _run(args: argparse.Namespace) -> int:
    from splitldm.checks import check_output_path, check_seed
    from splitldm.eval.demo import DEFAULT_DRAWS, DemoConfig, check_draws, run_demo
    from splitldm.eval.threads import set_threads

    check_seed(args.seed, "--seed")
    draws = DEFAULT_DRAWS if args.draws is None else check_draws(args.draws, "--draws", minimum=2)
    check_output_path(args.out, "--out", folder=True)  # before the work: a blocked or unwritable --out fails now
    threads = set_threads(args.threads)
    if not args.progress:  # the application's choice: no diffusers loading bars either
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("splitldm").setLevel(logging.WARNING if args.quiet else logging.INFO)
    config = DemoConfig(num_prompts=args.num_prompts, steps=args.steps, split_step=args.split_step,
                        student_steps=args.student_steps, snr_db=tuple(args.snr_db),
                        merge_ratios=tuple(args.merge_ratios), seed=args.seed, draws=draws,
                        references=args.references)
    if args.quick:
        config.num_prompts, config.snr_db = min(config.num_prompts, 8), config.snr_db[::2]
    report = run_demo(args.out, config, progress=args.progress)
    summary = {"out": args.out, "seconds": round(report["seconds"], 1), "threads": threads,
               "central_adherence": report["central"].get("adherence"),
               "draws": report["draws"], "monotone": report["monotone"],
               "ideal_psnr_db": next(e["psnr_db"] for e in report["references"] if e["scheme"] == "ideal"),
               "split": [{**{k: e[k] for k in ("merge_ratio", "snr_db", "psnr_db", "channel_uses_per_image")},
                          "psnr_ci_half_width": e["psnr_ci"]["half_width"]} for e in report["split"]]}
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    """Add the ``demo`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("demo", help="central vs split generation on the shipped checkpoints (the main job)")
    p.add_argument("--out", default="out/demo", help="output folder (grid.png, psnr_vs_snr.png, report.json)")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--steps", type=int, default=25, help="teacher steps of the central generation")
    p.add_argument("--split-step", type=int, default=10, help="teacher steps on the edge server")
    p.add_argument("--student-steps", type=int, default=4, help="distilled-student steps on the device")
    p.add_argument("--snr-db", type=float, nargs="+", default=[0.0, 5.0, 10.0, 20.0])
    p.add_argument("--merge-ratios", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=None,
                   help="channel draws per prompt and point, >= 2 (default: splitldm.eval.demo.DEFAULT_DRAWS, "
                        "enough for a 95%% CI under 0.3 dB at every PSNR point)")
    p.add_argument("--references", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the analog and digital links at every SNR (default: yes)")
    p.add_argument("--quick", action="store_true", help="fewer prompts and SNRs")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--quiet", action="store_true", help="print only the final JSON summary line")
    p.set_defaults(func=_run)
