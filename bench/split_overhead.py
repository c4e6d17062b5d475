"""Split vs unsplit generation: wall time ratio and image difference, same pipeline, same run.

Runs ``pipe(...)`` and ``SplitPipeline(pipe, split_step=k, link=Link([SerializeBytes()]))`` (ES ->
bytes -> UE in one process) alternately, several repeats, and reports the median wall-time and
process-CPU-time ratios (one thread: the CPU time is robust to other jobs on a shared machine) and
the max abs image difference. Target: images identical (difference 0); ratio <= 1.02 where the
denoiser dominates.

    python bench/split_overhead.py [--quick] [--model tiny] [--steps 25] [--repeats 7]
    python bench/split_overhead.py --family all [--quick]

``--family sd`` (the default) times one SD pipeline (``--model``). ``--family all`` times every
family's tiny seeded random pipeline (SD, SDXL, SD3, PixArt, Flux; 64 px, where fixed per-call costs
weigh most) and one configuration where the denoiser dominates (the SD-1.5 architecture at 256 px with
random weights, a few steps). The last line printed is one JSON object with the figures (for
``--family all``: one entry per case under ``"families"``, each with the keys of the single-SD run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from splitldm import Link, SplitPipeline, load_pipeline
from splitldm.link.stack import SerializeBytes
from splitldm.pipeline.models import build_pipeline

#: ``--family all`` cases: name -> (pipeline name, image side px, extra call arguments).
FAMILY_CASES = {
    "sd": ("tiny-random", 64, {}),
    "sdxl": ("sdxl-tiny-random", 64, {}),
    "sd3": ("sd3-tiny-random", 64, {}),
    "pixart": ("pixart-tiny-random", 64, {"use_resolution_binning": False, "clean_caption": False}),
    "flux": ("flux-tiny-random", 64, {}),
    # The denoiser dominates: SD-1.5's UNet (0.2 TFLOP per pass at 256 px) against a few ms of overhead.
    "sd15-256px": ("sd15-random", 256, {}),
}


def _pipeline(name: str):
    try:
        return load_pipeline(name), name
    except FileNotFoundError:
        return load_pipeline("tiny-random"), "tiny-random"


def measure(pipe, model: str, steps: int, split_step: int | None, split_stage: int | None, repeats: int,
            batch: int, threads: int, size: int | None = None, guidance_scale: float = 7.5,
            extra: dict | None = None) -> dict:
    """Median split/unsplit wall and CPU-time ratios and the max abs image difference (one dict)."""
    k = steps // 2 if split_step is None else split_step
    split = SplitPipeline(pipe, split_step=k, split_stage=split_stage, link=Link([SerializeBytes()]))
    prompts = ["a small red circle at the top left on a blue background"] * batch
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np", **(extra or {}))
    if size is not None:
        kwargs.update(height=size, width=size)

    def unsplit():
        return pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs).images

    def splitted():
        return split(prompts, generator=torch.Generator().manual_seed(0), **kwargs).images

    unsplit(), splitted()  # warm-up (first calls allocate and compute the model fingerprint)
    # Wall time and process CPU time; with one thread the CPU time barely sees other jobs on the machine.
    ratios, cpu_ratios, t_ref, t_split, max_diff = [], [], [], [], 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ref = unsplit()
        t1, c1 = time.perf_counter(), time.process_time()
        out = splitted()
        t2, c2 = time.perf_counter(), time.process_time()
        t_ref.append(t1 - t0)
        t_split.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
        cpu_ratios.append((c2 - c1) / (c1 - c0))
        max_diff = max(max_diff, float(np.abs(out - ref).max()))
    edge_kwargs = {k_: v for k_, v in kwargs.items() if k_ != "output_type"}
    payload_bits = split.edge(prompts, generator=torch.Generator().manual_seed(0), **edge_kwargs).num_bits()
    return {
        "bench": "split_overhead", "model": model, "steps": steps, "split_step": k,
        "split_stage": split_stage, "batch": batch, "repeats": repeats, "threads": threads,
        "median_unsplit_s": round(statistics.median(t_ref), 4), "median_split_s": round(statistics.median(t_split), 4),
        "median_ratio": round(statistics.median(ratios), 4),
        "median_cpu_time_ratio": round(statistics.median(cpu_ratios), 4), "max_abs_image_diff": max_diff,
        "payload_bits": payload_bits,
    }


def _line(name: str, r: dict) -> str:
    return (f"{name:<11} unsplit {r['median_unsplit_s']:.4f} s, split {r['median_split_s']:.4f} s, wall ratio "
            f"{r['median_ratio']}, CPU-time ratio {r['median_cpu_time_ratio']}, max |diff| {r['max_abs_image_diff']}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced run (a few minutes with --family all)")
    ap.add_argument("--family", default="sd", choices=["sd", "all"],
                    help="sd: one SD pipeline (--model); all: every family's tiny pipeline + SD-1.5 at 256 px")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--split-step", type=int, default=None, help="default: half the steps")
    ap.add_argument("--split-stage", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = min(args.steps, 10), min(args.repeats, 5)
    torch.set_num_threads(args.threads)
    if args.family == "sd":
        pipe, model = _pipeline(args.model)
        result = measure(pipe, model, args.steps, args.split_step, args.split_stage, args.repeats, args.batch,
                         args.threads)
        print(_line(model, result))
        print(json.dumps(result))
        return result

    families = {}
    for name, (model, size, extra) in FAMILY_CASES.items():
        big = name == "sd15-256px"
        steps = (2 if args.quick else 4) if big else args.steps
        repeats = (2 if args.quick else 3) if big else args.repeats
        batch = 1 if big else args.batch
        pipe = build_pipeline(model)
        families[name] = measure(pipe, model, steps, args.split_step, None, repeats, batch, args.threads,
                                 size=size, extra=extra)
        print(_line(name, families[name]), flush=True)
        del pipe
    result = {
        "bench": "split_overhead", "family": "all", "quick": args.quick, "threads": args.threads,
        "max_abs_image_diff": max(r["max_abs_image_diff"] for r in families.values()),
        "denoiser_dominated_ratio": families["sd15-256px"]["median_ratio"],
        "denoiser_dominated_cpu_time_ratio": families["sd15-256px"]["median_cpu_time_ratio"],
        "families": families,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
