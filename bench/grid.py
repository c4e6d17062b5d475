"""Save a grid PNG of generations for held-out prompts (one row of real images, one of samples).

    python bench/grid.py --model tiny --steps 25 --guidance 4 --out runs/samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from splitldm.eval.data import render_batch
from splitldm.eval.threads import set_threads
from splitldm.pipeline.models import load_pipeline


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="grid.png")
    args = ap.parse_args(argv)
    set_threads(fallback=1)  # $SPLITLDM_THREADS, else $OMP_NUM_THREADS, else 1
    import torchvision

    real, prompts, _ = render_batch(range(args.num), "test", seed=args.seed)
    pipe = load_pipeline(args.model)
    with torch.no_grad():
        fake = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt",
                    generator=torch.Generator().manual_seed(args.seed)).images.clamp(0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(torch.cat([real, fake]), args.out, nrow=args.num, padding=2)
    for i, p in enumerate(prompts):
        print(f"{i:2d}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
