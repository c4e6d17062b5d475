"""Split vs unsplit generation: wall time ratio and image difference, same pipeline, same run.

Runs ``pipe(...)`` and ``SplitPipeline(pipe, split_step=k, link=Link([SerializeBytes()]))`` (ES ->
bytes -> UE in one process) alternately, several repeats, and reports the median wall-time and
process-CPU-time ratios (one thread: the CPU time is robust to other jobs on a shared machine) and
the max abs image difference. Target: ratio <= 1.02, difference 0.

    python bench/split_overhead.py [--quick] [--model tiny] [--steps 25] [--repeats 7]

The last line printed is one JSON object with the figures.
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


def _pipeline(name: str):
    try:
        return load_pipeline(name), name
    except FileNotFoundError:
        return load_pipeline("tiny-random"), "tiny-random"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced run (under a minute)")
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
    pipe, model = _pipeline(args.model)
    k = args.steps // 2 if args.split_step is None else args.split_step
    split = SplitPipeline(pipe, split_step=k, split_stage=args.split_stage, link=Link([SerializeBytes()]))
    prompts = ["a small red circle at the top left on a blue background"] * args.batch
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=7.5, output_type="np")

    def unsplit():
        return pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs).images

    def splitted():
        return split(prompts, generator=torch.Generator().manual_seed(0), **kwargs).images

    unsplit(), splitted()  # warm-up (first calls allocate and compute the model fingerprint)
    # Wall time and process CPU time; with one thread the CPU time barely sees other jobs on the machine.
    ratios, cpu_ratios, t_ref, t_split, max_diff = [], [], [], [], 0.0
    for _ in range(args.repeats):
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
    payload_bits = split.edge(prompts, generator=torch.Generator().manual_seed(0),
                              num_inference_steps=args.steps).num_bits()
    result = {
        "bench": "split_overhead", "model": model, "steps": args.steps, "split_step": k,
        "split_stage": args.split_stage, "batch": args.batch, "repeats": args.repeats, "threads": args.threads,
        "median_unsplit_s": round(statistics.median(t_ref), 4), "median_split_s": round(statistics.median(t_split), 4),
        "median_ratio": round(statistics.median(ratios), 4),
        "median_cpu_time_ratio": round(statistics.median(cpu_ratios), 4), "max_abs_image_diff": max_diff,
        "payload_bits": payload_bits,
    }
    print(f"unsplit {result['median_unsplit_s']} s, split {result['median_split_s']} s, "
          f"wall ratio {result['median_ratio']}, CPU-time ratio {result['median_cpu_time_ratio']}, max |diff| {max_diff}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
