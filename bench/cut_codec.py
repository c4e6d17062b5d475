"""A cut inside the UNet pass (shipped `SeedCodecBank`) against the step split (shipped seed codec).

    python bench/cut_codec.py --quick          # 8 prompts, 1 realisation, 3 SNRs (a few minutes on one core)
    python bench/cut_codec.py                  # 32 prompts, 2 realisations, 6 SNRs

The embedded ``tiny`` pipeline, 8 steps, guidance 3, held-out test prompts. Both splits hand over at step
``--split-step``: the step split sends the latents through the seed codec (``seed-codec``, rho 1/8:
32 complex channel uses per image); the cut sends, from inside that step's UNet pass before stage
``split_stage`` of the bank, the latents and the carry (hidden state; two rows per image under
guidance), each through its own codec of the bank (``codec-bank``). For AWGN and Rayleigh block fading
(one fade per image, MMSE equalisation, CSI at both ends) and each SNR it reports the image PSNR
(dB, images in [0, 1]) of each against the unsplit pipeline's own image for the same seed (an ideal
link), and the channel uses per image of each. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from splitldm.eval.data import prompts_for
from splitldm.link.channels import AWGN, RayleighBlockFading
from splitldm.link.codec import SeedCodec
from splitldm.link.codec_bank import SeedCodecBank
from splitldm.link.stack import Link
from splitldm.pipeline.models import load_pipeline
from splitldm.pipeline.split import SplitPipeline
from splitldm.zoo import checkpoints_dir


def _load_bank(path: str) -> SeedCodecBank:
    loader = getattr(SeedCodecBank, "from_pretrained", None) or SeedCodecBank.load
    return loader(path)


def _load_codec(path: str) -> SeedCodec:
    loader = getattr(SeedCodec, "from_pretrained", None) or SeedCodec.load
    return loader(path)


def _channel(kind: str, snr_db: float):
    if kind == "awgn":
        return AWGN(snr_db=snr_db)
    return RayleighBlockFading(snr_db=snr_db, csi="mmse")


@torch.no_grad()
def _images(split: SplitPipeline, prompts, steps: int, guidance: float, seed: int, link_seed: int | None):
    payload = split.edge(prompts, num_inference_steps=steps, guidance_scale=guidance,
                         generator=torch.Generator().manual_seed(seed))
    if link_seed is not None:
        payload = split.link(payload, generator=torch.Generator().manual_seed(link_seed))
    return split.device(payload, output_type="pt").float().clamp(0, 1)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of ``10 log10(1 / MSE)`` (images (N, 3, H, W) in [0, 1])."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return round(float((10 * torch.log10(1 / mse)).mean()), 3)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 prompts, 1 realisation, SNR 0 / 10 / 20 dB")
    ap.add_argument("--pipeline", default="tiny")
    ap.add_argument("--bank", default=str(checkpoints_dir() / "codec-bank"))
    ap.add_argument("--codec", default=str(checkpoints_dir() / "seed-codec"))
    ap.add_argument("--split-step", type=int, default=4)
    ap.add_argument("--split-stage", type=int, default=8,
                    help="UNetChain stage the cut is before (the shipped bank: 8, 'output')")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--snr-db", type=float, nargs="+", default=None)
    ap.add_argument("--num", type=int, default=None, help="prompts (default 8 quick, 32 full)")
    ap.add_argument("--repeats", type=int, default=None, help="channel realisations (default 1 quick, 2 full)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SPLITLDM_THREADS", "1")))
    num = args.num or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 2)
    snrs = args.snr_db or ([0.0, 10.0, 20.0] if args.quick else [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0])
    stage = args.split_stage
    t0 = time.time()

    pipe = load_pipeline(args.pipeline)
    bank, codec = _load_bank(args.bank), _load_codec(args.codec)
    prompts = prompts_for(num, "test", args.seed)
    ref = _images(SplitPipeline(pipe, split_step=args.split_step, generator_state="none"), prompts, args.steps,
                     args.guidance, args.seed, None)
    uses_step = codec.num_symbols((4, 8, 8))
    rows_per_image = {name: (2 if name.startswith("carry.") and args.guidance > 1 else 1) for name in bank.names}
    uses_cut = sum(k * rows_per_image[n] for n, k in bank.num_symbols().items())
    figures: dict = {"pipeline": args.pipeline, "bank": os.path.basename(os.path.normpath(args.bank)),
                     "codec": os.path.basename(os.path.normpath(args.codec)), "split_step": args.split_step,
                     "split_stage": stage, "steps": args.steps, "guidance": args.guidance, "num_prompts": num,
                     "repeats": repeats, "channel_uses_per_image": {"step_split": uses_step, "cut": uses_cut},
                     "cut_uses_per_tensor_row": bank.num_symbols(), "channels": {}}
    for kind in ("awgn", "rayleigh"):
        rows = {}
        for snr in snrs:
            row = {}
            for label, split_kwargs, stage_obj in (("step_split", {}, codec), ("cut", {"split_stage": stage}, bank)):
                vals = []
                for r in range(repeats):
                    split = SplitPipeline(pipe, split_step=args.split_step, link=Link([stage_obj, _channel(kind, snr)]),
                                          generator_state="none", **split_kwargs)
                    img = _images(split, prompts, args.steps, args.guidance, args.seed, 1000 * r + 17)
                    vals.append(psnr_db(img, ref))
                row[f"{label}_psnr"] = round(sum(vals) / len(vals), 3)
            row["cut_minus_step_db"] = round(row["cut_psnr"] - row["step_split_psnr"], 3)
            rows[f"{snr:g}"] = row
        figures["channels"][kind] = rows
        print(f"{kind}: " + ", ".join(f"{s} dB: step {r['step_split_psnr']:.2f} / cut {r['cut_psnr']:.2f}"
                                      for s, r in rows.items()), flush=True)
    figures["seconds"] = round(time.time() - t0, 1)
    if not all(math.isfinite(v) for rows in figures["channels"].values() for r in rows.values() for v in r.values()):
        figures["note"] = "non-finite PSNR (identical images)"
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
