"""What is bit-exact and what is bounded (docs/guides/determinism.md), each statement tested.

* Same seeds, same thread count, same device: a `SplitPipeline` through a lossy link (token merging,
  the shipped seed codec, Rayleigh block fading) gives the same bits twice in one process and in a
  fresh process; the demo's figures are the same bytes (a reduced demo config).
* 1 vs 2 torch threads (each in its own process): the sent and received latents and the final images
  agree within `THREAD_BOUND` (measured: at most 9.2e-6, images in [0, 1]; latents with std ~1).

The same file is the script the subprocesses run: ``python tests/test_determinism.py THREADS OUT [--demo]``.
(Recipe resumes: tests/test_resume.py.)
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

#: Largest absolute difference allowed between 1 and 2 torch threads (latents, images in [0, 1]).
THREAD_BOUND = 1e-4

PROMPTS = ["a red circle on a blue background", "a small green square"]
DEMO = dict(num_prompts=2, grid_prompts=2, steps=3, split_step=1, student_steps=2, snr_db=(5.0,),
            merge_ratios=(0.0, 0.5), draws=2)


def generate() -> dict[str, torch.Tensor]:
    """One split generation through a lossy link, fixed seeds: the sent and received payload tensors
    (complex symbols as (..., 2) real) and the images (B, 3, 64, 64) in [0, 1]."""
    from splitldm import Link, SeedCodec, SplitPipeline, TokenMerge, load_pipeline
    from splitldm.link.channels import RayleighBlockFading

    link = Link([TokenMerge(0.5), SeedCodec.from_pretrained("seed-codec"), RayleighBlockFading(snr_db=5.0, csi="mmse")])
    split = SplitPipeline(load_pipeline("tiny"), split_step=2, link=link)
    out = split(PROMPTS, num_inference_steps=4, guidance_scale=3.0, output_type="pt",
                generator=torch.Generator().manual_seed(0), link_generator=torch.Generator().manual_seed(1))
    tensors = {"images": out.images}
    tensors.update({f"sent.{k}": v for k, v in out.sent.tensors.items()})
    tensors.update({f"received.{k}": v for k, v in out.received.tensors.items()})
    return {k: (torch.view_as_real(v) if v.is_complex() else v).detach().cpu().clone().contiguous()
            for k, v in tensors.items()}


def demo(out: Path) -> dict:
    """The reduced demo; returns the figures' SHA-256 and the report without its wall-clock times."""
    from splitldm.eval.demo import DemoConfig, run_demo

    report = run_demo(out, DemoConfig(**DEMO))
    report.pop("seconds")
    report.pop("es_wall_s")
    report["provenance"].pop("argv")  # the command line differs between pytest and the subprocess
    report["provenance"].pop("env_threads")  # and so may OMP_NUM_THREADS (the subprocess sets it; threads is compared)
    for entry in report["split"] + report["references"]:
        entry.pop("wall_s", None)
    digests = {name: hashlib.sha256((Path(out) / name).read_bytes()).hexdigest()
               for name in ("grid.png", "psnr_vs_snr.png")}
    return {"figures": digests, "report": json.loads(json.dumps(report, default=str))}


def _with_threads(n: int, fn, *args):
    from splitldm.eval.threads import set_threads

    before = torch.get_num_threads()
    set_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def _spawn(threads: int, out: Path, with_demo: bool) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("SPLITLDM_THREADS", None)
    cmd = [sys.executable, __file__, str(threads), str(out), *(["--demo"] if with_demo else [])]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from safetensors.torch import load_file

    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    summary = out / "demo.json"
    return load_file(str(out / "tensors.safetensors")), (json.loads(summary.read_text()) if summary.exists() else None)


def test_bit_exact_with_the_same_seeds_and_bounded_across_thread_counts(tmp_path):
    # the two fresh processes (1 and 2 threads) run while this one computes its own results
    procs = {n: _spawn(n, tmp_path / f"threads{n}", with_demo=n == 1) for n in (1, 2)}
    try:
        first, second = _with_threads(1, generate), _with_threads(1, generate)
        demo_a, demo_b = _with_threads(1, demo, tmp_path / "demo_a"), _with_threads(1, demo, tmp_path / "demo_b")
    finally:
        results = {n: _finish(p, tmp_path / f"threads{n}") for n, p in procs.items()}

    # same process, same thread count: every tensor, bit for bit (the channel's generator states too)
    assert first.keys() == second.keys() and {"images", "sent.latents", "received.latents"} <= first.keys()
    for k in first:
        assert torch.equal(first[k], second[k]), k
    # a fresh process, same thread count: the same bits again
    fresh, fresh_demo = results[1]
    assert fresh.keys() == first.keys()
    for k in first:
        assert torch.equal(fresh[k], first[k]), k
    # the demo: same figures (bytes) and the same numbers, twice here and once in a fresh process
    assert demo_a == demo_b == fresh_demo
    assert demo_a["report"]["threads"] == 1

    # 2 threads: within the stated bound (floating-point sums split differently); integers identical
    two, _ = results[2]
    assert two.keys() == first.keys()
    for k in first:
        if first[k].is_floating_point():
            diff = float((two[k].double() - first[k].double()).abs().max())
            assert diff <= THREAD_BOUND, (k, diff)
        else:
            assert torch.equal(two[k], first[k]), k


if __name__ == "__main__":  # the subprocess: python tests/test_determinism.py THREADS OUT [--demo]
    from safetensors.torch import save_file

    from splitldm.eval.threads import set_threads

    set_threads(int(sys.argv[1]))
    target = Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    save_file(generate(), str(target / "tensors.safetensors"))
    if "--demo" in sys.argv[3:]:
        (target / "demo.json").write_text(json.dumps(demo(target / "demo")))
