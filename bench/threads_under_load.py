"""Slow-down under background CPU load: torch's default thread count against the project's rule.

A fixed workload (`SplitPipeline` on the shipped tiny model through the shipped seed codec and a Rayleigh
channel, several prompts and steps) runs in a fresh process with a given thread count, first on the
otherwise idle machine, then beside ``B`` busy processes (pure-Python spin loops, one core each). The
fair-share bound is the slow-down a perfectly parallel job would see from losing CPU share alone: with
``T`` threads on ``C`` cores beside ``B`` busy single-thread processes the scheduler gives the job
``C T / (T + B)`` cores when ``T + B > C``, against ``min(T, C)`` idle, so the bound is
``min(T, C) (T + B) / (C T)`` (1 when ``T + B <= C``). OpenMP threads that wait for a descheduled sibling
at every barrier make the default far worse than that bound; the rule (`splitldm.eval.threads`) leaves a
core free and stays within it.

    python bench/threads_under_load.py [--quick] [--busy 1 2] [--repeats 3]

The last line printed is one JSON object: per thread setting and busy count, the median wall seconds,
the slow-down against the idle run of the same setting, the fair-share bound and whether it is met
(10 % tolerance for timing noise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKLOAD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
import splitldm as sl
pipe = sl.load_pipeline("tiny")
codec = sl.SeedCodec.from_pretrained("seed-codec")
split = sl.SplitPipeline(pipe, split_step=int(sys.argv[3]) // 2,
                         link=sl.Link([codec, sl.RayleighBlockFading(snr_db=5.0, csi="mmse")]))
prompts = ["a small red circle at the center on a black background"] * int(sys.argv[2])
split(prompts[:1], num_inference_steps=int(sys.argv[3]), generator=torch.Generator().manual_seed(0))  # warm-up
start = time.perf_counter()
split(prompts, num_inference_steps=int(sys.argv[3]), generator=torch.Generator().manual_seed(0),
      link_generator=torch.Generator().manual_seed(1), output_type="np")
print(time.perf_counter() - start)
"""


def _run(threads: int, prompts: int, steps: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(threads), str(prompts), str(steps)],
                         capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def fair_share_bound(threads: int, cores: int, busy: int) -> float:
    """Slow-down from CPU share alone (see the module docstring)."""
    if threads + busy <= cores:
        return 1.0
    return min(threads, cores) * (threads + busy) / (cores * threads)


def main(argv=None) -> dict:
    from splitldm.eval.threads import available_cpus, default_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts, one busy count, one repeat")
    ap.add_argument("--busy", type=int, nargs="+", default=[1, 2], help="background busy processes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.prompts < 1 or args.steps < 2 or any(b < 0 for b in args.busy):
        raise SystemExit("--repeats, --prompts >= 1, --steps >= 2, --busy >= 0 expected")
    if args.quick:
        args.busy, args.repeats, args.prompts = [1], 1, 8
    cores = available_cpus()
    settings = {"default": cores, "rule": default_threads()}  # torch's default is one thread per core
    result: dict = {"cores": cores, "threads": settings, "prompts": args.prompts, "steps": args.steps,
                    "repeats": args.repeats}
    for name, threads in settings.items():
        idle = statistics.median(_run(threads, args.prompts, args.steps) for _ in range(args.repeats))
        row = {"idle_s": round(idle, 3)}
        for b in args.busy:
            procs = _busy(b)
            try:
                time.sleep(0.5)
                loaded = statistics.median(_run(threads, args.prompts, args.steps) for _ in range(args.repeats))
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            bound = fair_share_bound(threads, cores, b)
            slow = loaded / idle
            row[f"busy{b}"] = {"wall_s": round(loaded, 3), "slowdown": round(slow, 3),
                               "fair_share_bound": round(bound, 3), "within_bound": slow <= 1.1 * bound}
        result[name] = row
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
