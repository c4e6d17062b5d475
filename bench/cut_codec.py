"""A cut inside the UNet pass (shipped `SeedCodecBank`) against the step split (shipped seed codec).

    python bench/cut_codec.py --quick          # 4 prompts, 2 realisations, 2 SNRs
    python bench/cut_codec.py                  # 32 prompts, 4 realisations, 6 SNRs

The embedded ``tiny`` pipeline, 8 steps, guidance 3, held-out test prompts. Both splits hand over at step
``--split-step``: the step split sends the latents through the seed codec (``seed-codec``, rho 1/8:
32 complex channel uses per image); the cut sends, from inside that step's UNet pass before stage
``split_stage`` of the bank, the latents and the carry (hidden state; two rows per image under
guidance), each through its own codec of the bank (``codec-bank``). For AWGN and Rayleigh block fading
(one fade per image, MMSE equalisation, CSI at both ends) and each SNR it reports the image PSNR
(dB, images in [0, 1]) of each against the unsplit pipeline's own image for the same seed (an ideal
link), and the channel uses per image of each.

Statistics: ``--repeats`` independent channel realisations per image (draw ``r`` seeded ``1000 r + 17``,
the same draw seeds for both splits); each PSNR is the mean over images and draws with ``*_ci95``, the
95 % interval over the draws with the images fixed (`splitldm.eval.stats.nested_interval`,
``over="draws"``), and ``cut_minus_step_db`` is the mean of the paired per-(image, draw) differences
with its interval the same way. The ES part (every step up to the split, the cut's partial UNet pass)
does not depend on the link, so it runs once per split and each draw re-runs only the link and the UE.
``--plot`` draws PSNR vs SNR with error bars. The JSON carries ``"provenance"``
(`splitldm.eval.provenance`). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from _intervals import METHOD_NOTE, interval_dict  # bench/_intervals.py
from splitldm.eval.data import prompts_for
from splitldm.eval.provenance import provenance
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
def _edge(split: SplitPipeline, prompts, steps: int, guidance: float, seed: int):
    return split.edge(prompts, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _finish(split: SplitPipeline, payload, link_seed: int | None):
    if link_seed is not None:
        payload = split.link(payload, generator=torch.Generator().manual_seed(link_seed))
    return split.device(payload, output_type="pt").float().clamp(0, 1)


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) ``10 log10(1 / MSE)`` per image (images (N, 3, H, W) in [0, 1]; MSE floored at 1e-12: 120 dB)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1 / mse)).double()


def plot(figures: dict, path: str) -> None:
    """Image PSNR vs SNR of both splits per channel, error bars = the 95 % intervals over the draws."""
    from splitldm.eval.plotting import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(9, 3.4))
    for j, (kind, rows) in enumerate(figures["channels"].items()):
        ax = axes[0][j]
        snrs = [float(s) for s in rows]
        for key, label in (("step_split_psnr", "step split (seed codec)"), ("cut_psnr", "cut (codec bank)")):
            ys = [r[key] for r in rows.values()]
            err = [[y - r[key + "_ci95"][0] for y, r in zip(ys, rows.values())],
                   [r[key + "_ci95"][1] - y for y, r in zip(ys, rows.values())]]
            ax.errorbar(snrs, ys, yerr=err, marker="o", ms=3, capsize=2, label=label)
        ax.set(title=kind, xlabel="SNR (dB)", ylabel="image PSNR vs ideal link (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 prompts, 2 realisations, SNR 0 / 20 dB")
    ap.add_argument("--pipeline", default="tiny")
    ap.add_argument("--bank", default=str(checkpoints_dir() / "codec-bank"))
    ap.add_argument("--codec", default=str(checkpoints_dir() / "seed-codec"))
    ap.add_argument("--split-step", type=int, default=4)
    ap.add_argument("--split-stage", type=int, default=8,
                    help="UNetChain stage the cut is before (the shipped bank: 8, 'output')")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--snr-db", type=float, nargs="+", default=None)
    ap.add_argument("--num", type=int, default=None, help="prompts (default 4 quick, 32 full)")
    ap.add_argument("--repeats", type=int, default=None, help="channel realisations (default 2 quick, 4 full)")
    ap.add_argument("--plot", default=None, help="PNG of PSNR vs SNR with the 95%% intervals (default: none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SPLITLDM_THREADS", "1")))
    num = args.num or (4 if args.quick else 32)
    repeats = args.repeats or (2 if args.quick else 4)
    if num < 1 or repeats < 1:
        raise SystemExit("--num, --repeats: need >= 1")
    snrs = args.snr_db or ([0.0, 20.0] if args.quick else [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0])
    stage = args.split_stage
    t0 = time.time()

    pipe = load_pipeline(args.pipeline)
    bank, codec = _load_bank(args.bank), _load_codec(args.codec)
    prompts = prompts_for(num, "test", args.seed)
    ideal = SplitPipeline(pipe, split_step=args.split_step, generator_state="none")
    ref = _finish(ideal, _edge(ideal, prompts, args.steps, args.guidance, args.seed), None)
    # the ES part of each split once (it does not depend on the link)
    edges = {label: _edge(SplitPipeline(pipe, split_step=args.split_step, generator_state="none", **kw), prompts,
                          args.steps, args.guidance, args.seed)
             for label, kw in (("step_split", {}), ("cut", {"split_stage": stage}))}
    uses_step = codec.num_symbols((4, 8, 8))
    rows_per_image = {name: (2 if name.startswith("carry.") and args.guidance > 1 else 1) for name in bank.names}
    uses_cut = sum(k * rows_per_image[n] for n, k in bank.num_symbols().items())
    figures: dict = {"pipeline": args.pipeline, "bank": os.path.basename(os.path.normpath(args.bank)),
                     "codec": os.path.basename(os.path.normpath(args.codec)), "split_step": args.split_step,
                     "split_stage": stage, "steps": args.steps, "guidance": args.guidance, "num_prompts": num,
                     "repeats": repeats, "interval": METHOD_NOTE,
                     "channel_uses_per_image": {"step_split": uses_step, "cut": uses_cut},
                     "cut_uses_per_tensor_row": bank.num_symbols(), "channels": {}}
    for kind in ("awgn", "rayleigh"):
        rows = {}
        for snr in snrs:
            row, tables = {}, {}
            for label, split_kwargs, stage_obj in (("step_split", {}, codec), ("cut", {"split_stage": stage}, bank)):
                split = SplitPipeline(pipe, split_step=args.split_step, link=Link([stage_obj, _channel(kind, snr)]),
                                      generator_state="none", **split_kwargs)
                tables[label] = torch.stack([psnr_per_image(_finish(split, edges[label], 1000 * r + 17), ref)
                                             for r in range(repeats)], 1)  # (N, D)
                f = interval_dict(tables[label].numpy())
                row[f"{label}_psnr"], row[f"{label}_psnr_ci95"] = f["mean"], f["ci95"]
            f = interval_dict((tables["cut"] - tables["step_split"]).numpy())  # paired by image and draw
            row["cut_minus_step_db"], row["cut_minus_step_db_ci95"] = f["mean"], f["ci95"]
            rows[f"{snr:g}"] = row
        figures["channels"][kind] = rows
        print(f"{kind}: " + ", ".join(f"{s} dB: step {r['step_split_psnr']:.2f} / cut {r['cut_psnr']:.2f}"
                                      for s, r in rows.items()), flush=True)
    if not all(v is not None and math.isfinite(v) for rows in figures["channels"].values() for r in rows.values()
               for k, v in r.items() if not k.endswith("_ci95")):
        figures["note"] = "non-finite PSNR (identical images)"
    if args.plot:
        plot(figures, args.plot)
        figures["plot"] = args.plot
    default = {"bank": "codec-bank", "codec": "seed-codec"}
    models = [args.pipeline] + [n for key, n in default.items()
                                if os.path.realpath(getattr(args, key)) == os.path.realpath(checkpoints_dir() / n)]
    from splitldm.zoo import MODELS

    figures["provenance"] = provenance({**vars(args), "num": num, "repeats": repeats, "snr_db": snrs, "level": 0.95},
                                       {"sampling": args.seed, **{f"channel_draw[{r}]": 1000 * r + 17
                                                                  for r in range(repeats)}},
                                       None, [m for m in models if m in MODELS])
    figures["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
