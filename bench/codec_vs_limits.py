"""Seed codec vs the best digital baseline vs OPTA, on held-out latents of the embedded tiny model.

    python bench/codec_vs_limits.py --quick          # < 1 min on one CPU core
    python bench/codec_vs_limits.py                  # more images, more channel realisations

Latents (what crosses the link): VAE latents of held-out ``test`` images and the latents after step
``--split-step`` of ``--steps`` for held-out prompts. For AWGN and Rayleigh block fading (one fade per
latent, MMSE equalisation) and each SNR it reports the latent PSNR (``10 log10(sigma^2 / MSE)``) of

* the codec (``checkpoints/seed-codec`` by default, at its own rho),
* the best digital scheme (`best_digital_config`: KLT of the latent covariance + greedy bit allocation +
  uniform quantisers, 5G LDPC sized to the same channel-use budget + QAM, chosen per SNR by expected
  distortion from measured BLER) simulated end to end. Its covariance is cross-fitted (``--digital-cov
  crossfit``, default): each half of the latents is sent with the KLT and bit allocation of the other
  half, so the scheme never sees the statistics of what it sends (``insample`` uses all of them),
* OPTA by reverse water-filling on the measured covariance of the same latents (a reference for a
  Gaussian source with that covariance; real latents are not Gaussian),
* the learned separation baselines (`splitldm.link.learned_separation`, the headline comparison): the
  learned entropy model (``checkpoints/entropy-model``: factorized prior, 10 rate levels, a real
  range-coded bitstream; per latent the best level that fits, behind a level header) over (a) an ideal
  capacity-achieving code of the same ``k`` channel uses (``separation_ideal_psnr``: ``floor(k C)``
  bits, AWGN / Rayleigh ergodic capacity; for Rayleigh also ``separation_ideal_block_csit_psnr``: one
  fade per latent, ``floor(k log2(1 + |h|^2 SNR))`` bits, CSI at both ends as the codec has) and (b)
  the 5G LDPC + QAM chain sized to the same budget, operating point chosen per SNR by expected
  distortion as the digital baseline does, cross-fitted the same way (design on one half's measured
  rate-distortion, send the other half), simulated end to end (``separation_ldpc_psnr``);
  ``separation_ideal_rate_estimate_psnr``: (a) with the model's rate estimate as the bits (an ideal
  entropy coder without the range coder's 17-20-bit termination per latent). Gaps:
  ``gap_to_separation_*_db`` = baseline PSNR minus codec PSNR (negative: the codec is better).

Checks: codec minus digital at each SNR <= 10 dB; graceful degradation = latent PSNR drop from the
bottom of the codec's training SNR range to 5 dB below it (target < 3 dB); gap to OPTA per SNR.
The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from splitldm.link.digital import DigitalLink, best_digital_config  # noqa: E402
from splitldm.link.codec import SeedCodec  # noqa: E402
from splitldm.link.entropy_model import EntropyModel  # noqa: E402
from splitldm.link.learned_separation import (LearnedSeparationLink, best_learned_digital_config,  # noqa: E402
                                              ideal_separation, operational_rd)
from splitldm.eval.data import prompts_for, render_batch  # noqa: E402
from splitldm.link.channels import make_channel  # noqa: E402
from splitldm.analysis.limits import latent_covariance, reverse_water_filling  # noqa: E402
from splitldm.link.stack import Link  # noqa: E402
from splitldm.zoo import checkpoints_dir  # noqa: E402
from splitldm.pipeline.models import load_pipeline  # noqa: E402
from splitldm.link.payload import Payload  # noqa: E402


def held_out_latents(pipe, num: int, split_step: int, steps: int, guidance: float, seed: int,
                     proxy: bool = False) -> dict[str, torch.Tensor]:
    """``{"vae": (N, C, h, w), "step<k>": (N, C, h, w)}`` from held-out images and prompts.

    ``proxy``: the step-k set is forward-noised held-out VAE latents (``noised_step<k>``) instead of
    the pipeline's own trajectory (for a pipeline whose UNet is not trained yet).
    """
    from splitldm.recipes.codec import noised_latents, trajectory_latents, vae_latents

    images, _, _ = render_batch(range(num), split="test", seed=seed)
    out = {"vae": vae_latents(pipe, images)}
    g = torch.Generator().manual_seed(seed + 7)
    if proxy:
        out[f"noised_step{split_step}"] = noised_latents(pipe.scheduler, out["vae"], steps, [split_step], g)[split_step]
    else:
        traj = trajectory_latents(pipe, prompts_for(num, "test", seed), steps, [split_step], guidance, g)
        out[f"step{split_step}"] = traj[split_step]
    return out


def run_link(stages, latents: torch.Tensor, snr_db: float, seed: int) -> float:
    """Mean squared error per real value after ``Link(stages)`` at ``snr_db``."""
    payload = Payload(tensors={"latents": latents}, primary=("latents",))
    received = Link(stages)(payload, generator=torch.Generator().manual_seed(seed), context={"snr_db": float(snr_db)})
    return float((received.tensors["latents"].float() - latents).pow(2).mean())


def psnr_db(mse: float, var: float) -> float:
    return round(10 * math.log10(var / mse), 3) if mse > 0 else float("inf")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 latents per set, 1 realisation (< 1 min)")
    ap.add_argument("--pipeline", default="tiny")
    ap.add_argument("--codec", default=str(checkpoints_dir() / "seed-codec"))
    ap.add_argument("--snr-db", type=float, nargs="+", default=[-5.0, 0.0, 5.0, 10.0, 15.0, 20.0])
    ap.add_argument("--split-step", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--num", type=int, default=None, help="latents per set (default 64 quick, 256 full)")
    ap.add_argument("--repeats", type=int, default=None, help="channel realisations (default 1 quick, 4 full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-path", default=None, help="diffusers AutoencoderKL folder replacing the pipeline's VAE")
    ap.add_argument("--latents", default=None,
                    help="a safetensors file with 'latents' (N,C,h,w) and 'kind' (N,) (e.g. the codec recipe's "
                         "held-out cache runs/codec-cache/latents-test-*.safetensors): bench on these, one set per kind")
    ap.add_argument("--entropy-model", default=str(checkpoints_dir() / "entropy-model"),
                    help="EntropyModel folder of the learned separation baselines ('none' to skip them)")
    ap.add_argument("--digital-cov", choices=("crossfit", "insample"), default="crossfit",
                    help="covariance for the digital baseline's KLT: the other half of the latents, or all of them")
    ap.add_argument("--proxy-trajectory", action="store_true",
                    help="use forward-noised VAE latents for the split-step set (UNet not trained)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SPLITLDM_THREADS", "1")))
    num = args.num or (64 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 4)
    t0 = time.time()

    pipe = None if args.latents else load_pipeline(args.pipeline)
    if args.vae_path and pipe is not None:
        from diffusers import AutoencoderKL

        pipe.vae = AutoencoderKL.from_pretrained(args.vae_path, use_safetensors=True).eval()
    codec = SeedCodec.from_pretrained(args.codec)
    entropy = None if args.entropy_model == "none" else EntropyModel.from_pretrained(args.entropy_model)
    rho, lo_train = float(codec.config.rho), codec.training_snr_range_db[0]
    if args.latents:
        from safetensors.torch import load_file

        data = load_file(args.latents)
        names = {-1: "vae"}
        sets = {}
        for kind in data["kind"].unique().tolist():
            name = names.get(kind, f"noised_step{kind - 100}" if kind >= 100 else f"step{kind}")
            sets[name] = data["latents"][data["kind"] == kind][:num]
    else:
        sets = held_out_latents(pipe, num, args.split_step, args.steps, args.guidance, args.seed,
                                args.proxy_trajectory)
    snrs = sorted(set(args.snr_db) | {lo_train, lo_train - 5.0})

    figures: dict = {"rho": rho, "pipeline": args.pipeline, "vae_path": args.vae_path,
                     "latents_file": os.path.relpath(args.latents, ROOT) if args.latents else None, "codec": os.path.relpath(args.codec, ROOT),
                     "train_snr_range_db": list(codec.training_snr_range_db), "num_latents": num,
                     "repeats": repeats, "digital_cov": args.digital_cov, "sets": {},
                     "entropy_model": os.path.relpath(args.entropy_model, ROOT) if entropy is not None else None}
    digital_note = None
    for name, lat in sets.items():
        n_values = lat[0].numel()
        k = codec.num_symbols(lat.shape[1:])
        var = float(lat.var(dim=0, unbiased=False).mean())
        cov = latent_covariance(lat, mode="full")
        if args.digital_cov == "insample":
            folds = [(cov, lat)]
        else:
            half = lat.shape[0] // 2
            a, b = lat[:half], lat[half:]
            folds = [(latent_covariance(b, mode="full"), a), (latent_covariance(a, mode="full"), b)]
        per_set = {"latent_shape": list(lat.shape[1:]), "channel_uses": k, "variance": round(var, 5), "channels": {}}
        if entropy is not None:
            rd = operational_rd(entropy, lat)
            half = lat.shape[0] // 2
            # cross-fitted like the digital baseline: the code is chosen on one half's measured R-D, sends the other
            sep_folds = [(rd.subset(slice(half, None)), lat[:half]), (rd.subset(slice(None, half)), lat[half:])]
            per_set["entropy_model_rd"] = {"bits_per_latent": [round(float(b), 1) for b in rd.bits.double().mean(0)],
                                           "psnr": [psnr_db(float(m), var) for m in rd.mse.mean(0)[1:]]}
        for channel in ("awgn", "rayleigh"):
            rows = {}
            for snr in snrs:
                mse_c = sum(run_link([codec, make_channel(channel)], lat, snr, args.seed + r) for r in range(repeats)) / repeats
                row = {"codec_psnr": psnr_db(mse_c, var)}
                wf = reverse_water_filling(cov.eigenvalues, rho=rho, snr_db=snr, channel=channel)
                row["opta_psnr"] = psnr_db(wf.mse, cov.variance)
                row["gap_to_opta_db"] = round(row["opta_psnr"] - row["codec_psnr"], 3)
                try:
                    mse_d, dcfgs = 0.0, []
                    for design, target in folds:  # the scheme is designed on `design`, sends `target`
                        dcfg = best_digital_config(snr, k, n_values, covariance=design,
                                                   channel="awgn" if channel == "awgn" else "rayleigh-block")
                        dcfgs.append(dcfg)
                        link = DigitalLink(config=dcfg, covariance=design)
                        mse_d += sum(run_link([link, make_channel(channel)], target, snr, args.seed + r)
                                     for r in range(repeats)) / repeats * target.shape[0] / lat.shape[0]
                except ValueError as exc:
                    dcfgs, digital_note = [], f"digital baseline unavailable: {exc}"
                if dcfgs:
                    row["digital_psnr"] = psnr_db(mse_d, var)
                    # (QAM bits per symbol, code rate, coefficients sent, largest bits per coefficient) per fold
                    row["digital_config"] = [[c.bits_per_symbol, round(c.code_rate, 3), c.num_components or 0,
                                              c.bits_per_value] for c in dcfgs]
                    row["codec_minus_digital_db"] = round(row["codec_psnr"] - row["digital_psnr"], 3)
                if entropy is not None:
                    ideal = ideal_separation(rd, k, snr, channel, generator=torch.Generator().manual_seed(args.seed),
                                             repeats=repeats)
                    row["separation_ideal_psnr"] = psnr_db(ideal["mse"], var)
                    row["gap_to_separation_ideal_db"] = round(row["separation_ideal_psnr"] - row["codec_psnr"], 3)
                    # the same with an ideal entropy coder (the model's rate estimate, no range-coder flush)
                    row["separation_ideal_rate_estimate_psnr"] = psnr_db(ideal["mse_rate_estimate"], var)
                    if "mse_block_csit" in ideal:
                        row["separation_ideal_block_csit_psnr"] = psnr_db(ideal["mse_block_csit"], var)
                        row["gap_to_separation_ideal_block_csit_db"] = round(
                            row["separation_ideal_block_csit_psnr"] - row["codec_psnr"], 3)
                    mse_s, scfgs = 0.0, []
                    for design, target in sep_folds:
                        scfg, sinfo = best_learned_digital_config(snr, k, design, channel)
                        scfgs.append(None if scfg is None else [scfg.bits_per_symbol, round(scfg.code_rate, 3),
                                                                round(sinfo["bler"], 4)])
                        if scfg is None:  # nothing sent: the mean
                            m0 = float((entropy.norm_mean[None, :, None, None] - target).pow(2).mean())
                            mse_s += m0 * target.shape[0] / lat.shape[0]
                            continue
                        link = LearnedSeparationLink(entropy, scfg, num_codewords=sinfo["num_codewords"])
                        mse_s += sum(run_link([link, make_channel(channel)], target, snr, args.seed + r)
                                     for r in range(repeats)) / repeats * target.shape[0] / lat.shape[0]
                    row["separation_ldpc_psnr"] = psnr_db(mse_s, var)
                    # (QAM bits per symbol, code rate, predicted BLER) per fold; None: nothing sent
                    row["separation_ldpc_config"] = scfgs
                    row["gap_to_separation_ldpc_db"] = round(row["separation_ldpc_psnr"] - row["codec_psnr"], 3)
                rows[f"{snr:g}"] = row
            drop = rows[f"{lo_train:g}"]["codec_psnr"] - rows[f"{lo_train - 5:g}"]["codec_psnr"]
            low = [r for s, r in rows.items() if float(s) <= 10 and "codec_minus_digital_db" in r]
            per_set["channels"][channel] = {
                "snr": rows,
                "graceful_drop_db": round(drop, 3),
                "graceful_ok": bool(drop < 3.0),
                "codec_beats_digital_at_snr_le_10": (all(r["codec_minus_digital_db"] > 0 for r in low) if low else None),
            }
            print(f"[{name}] {channel}: " + ", ".join(
                f"{s} dB: codec {r['codec_psnr']:.2f} / digital {r.get('digital_psnr', float('nan')):.2f} / "
                f"OPTA {r['opta_psnr']:.2f}" + (f" / sep-ideal {r['separation_ideal_psnr']:.2f} / sep-LDPC "
                                                f"{r['separation_ldpc_psnr']:.2f}" if "separation_ldpc_psnr" in r else "")
                for s, r in rows.items()), flush=True)
        figures["sets"][name] = per_set
    if digital_note:
        figures["note"] = digital_note
    figures["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
