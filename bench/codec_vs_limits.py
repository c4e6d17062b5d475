"""Seed codec vs the best digital baseline vs OPTA, on held-out latents of the embedded tiny model.

    python bench/codec_vs_limits.py --quick          # 16 latents per set, 2 realisations, 3 SNRs (+2)
    python bench/codec_vs_limits.py                  # 256 latents per set, 4 realisations, 6 SNRs (+2)

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

Statistics: every simulated scheme runs ``--repeats`` independent channel realisations (draw ``r``
seeded ``--seed + r``) of every latent; each PSNR figure ``<scheme>_psnr`` comes with ``<scheme>_psnr_ci95``
and each gap ``gap_*_db`` with ``gap_*_db_ci95``: 95 % intervals over the channel realisations with the
latents fixed (``bench/_intervals.py``: nested t-interval of the per-latent MSE mapped to dB; delta
method for gaps; the JSON's ``"interval"`` says so). Deterministic figures (the ideal code over AWGN,
the ergodic Rayleigh reference, OPTA) have zero-width intervals. ``--plot`` draws PSNR vs SNR with
error bars, OPTA as a dashed reference. The JSON carries ``"provenance"``
(`splitldm.eval.provenance`). The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from _intervals import METHOD_NOTE, gap_db, psnr_of_mse  # noqa: E402  (bench/_intervals.py)

from splitldm.link.digital import DigitalLink, best_digital_config  # noqa: E402
from splitldm.link.codec import SeedCodec  # noqa: E402
from splitldm.link.entropy_model import EntropyModel  # noqa: E402
from splitldm.link.learned_separation import (LearnedSeparationLink, best_learned_digital_config,  # noqa: E402
                                              encode_levels, ideal_separation, operational_rd)
from splitldm.eval.data import prompts_for, render_batch  # noqa: E402
from splitldm.link.channels import make_channel  # noqa: E402
from splitldm.analysis.limits import capacity, latent_covariance, reverse_water_filling  # noqa: E402
from splitldm.eval.provenance import provenance  # noqa: E402
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


def run_link(stages, latents: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    """(N,) float64: each latent's mean squared error per real value after ``Link(stages)`` at ``snr_db``."""
    payload = Payload(tensors={"latents": latents}, primary=("latents",))
    received = Link(stages)(payload, generator=torch.Generator().manual_seed(seed), context={"snr_db": float(snr_db)})
    return (received.tensors["latents"].float() - latents).pow(2).flatten(1).mean(1).double()


def draws(stages_for, latents: torch.Tensor, snr_db: float, seed: int, repeats: int) -> torch.Tensor:
    """(N, repeats) per-latent MSE: ``run_link(stages_for(), ...)`` under draw ``r`` (seed ``seed + r``)."""
    return torch.stack([run_link(stages_for(), latents, snr_db, seed + r) for r in range(repeats)], 1)


def psnr_db(mse: float, var: float) -> float:
    return round(10 * math.log10(var / mse), 3) if mse > 0 else float("inf")


def put(row: dict, name: str, table: torch.Tensor, var: float) -> None:
    """``row[name] = PSNR of the mean of table (N, D)``, ``row[name + "_ci95"]`` its interval."""
    f = psnr_of_mse(table.numpy(), var)
    row[name], row[name + "_ci95"] = f["mean"], f["ci95"]


def put_gap(row: dict, name: str, base: torch.Tensor, codec: torch.Tensor, var: float) -> None:
    f = gap_db(base.numpy(), codec.numpy(), var)
    row[name], row[name + "_ci95"] = f["mean"], f["ci95"]


def plot(figures: dict, path: str) -> None:
    """PSNR vs SNR per set and channel, error bars = the 95 % intervals; OPTA dashed (a reference)."""
    from splitldm.eval.plotting import new_figure, save_figure

    sets = list(figures["sets"])
    fig, axes = new_figure(len(sets), 2, figsize=(10, 3.6 * len(sets)))
    curves = (("codec_psnr", "seed codec", "C0"), ("separation_ideal_psnr", "separation, ideal code", "C1"),
              ("separation_ideal_block_csit_psnr", "separation, ideal code per fade (CSI)", "C4"),
              ("separation_ldpc_psnr", "separation, 5G LDPC + QAM", "C2"), ("digital_psnr", "KLT + 5G LDPC + QAM", "C3"))
    for i, name in enumerate(sets):
        for j, channel in enumerate(("awgn", "rayleigh")):
            ax = axes[i][j]
            rows = figures["sets"][name]["channels"][channel]["snr"]
            snrs = [float(s) for s in rows]
            for key, label, color in curves:
                pts = [(x, r[key], r.get(key + "_ci95")) for x, r in zip(snrs, rows.values()) if key in r]
                if not pts:
                    continue
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                err = np.array([[y - (c[0] if c and c[0] is not None else y),
                                 (c[1] if c and c[1] is not None else y) - y] for _, y, c in pts]).T
                ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, label=label, color=color)
            ax.plot(snrs, [r["opta_psnr"] for r in rows.values()], "k--", lw=1, label="OPTA (Gaussian reference)")
            ax.set(title=f"{name}, {channel}", xlabel="SNR (dB)", ylabel="latent PSNR (dB)")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 latents per set, 2 realisations, SNR 0 / 10 / 20 dB")
    ap.add_argument("--pipeline", default="tiny")
    ap.add_argument("--codec", default=str(checkpoints_dir() / "seed-codec"))
    ap.add_argument("--snr-db", type=float, nargs="+", default=None,
                    help="SNRs (default -5 0 5 10 15 20; quick 0 10 20); the training range's bottom and 5 dB "
                         "below it are always added")
    ap.add_argument("--split-step", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--num", type=int, default=None, help="latents per set (default 16 quick, 256 full)")
    ap.add_argument("--repeats", type=int, default=None, help="channel realisations (default 2 quick, 4 full)")
    ap.add_argument("--plot", default=None, help="PNG of PSNR vs SNR with the 95%% intervals (default: none)")
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
    num = args.num or (16 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 4)
    if num < 2 or repeats < 1:
        raise SystemExit("--num: need >= 2 latents (the cross-fitted halves); --repeats: need >= 1")
    snr_list = args.snr_db or ([0.0, 10.0, 20.0] if args.quick else [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0])
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
    snrs = sorted(set(snr_list) | {lo_train, lo_train - 5.0})

    figures: dict = {"rho": rho, "pipeline": args.pipeline, "vae_path": args.vae_path,
                     "latents_file": os.path.relpath(args.latents, ROOT) if args.latents else None, "codec": os.path.relpath(args.codec, ROOT),
                     "train_snr_range_db": list(codec.training_snr_range_db), "num_latents": num,
                     "repeats": repeats, "digital_cov": args.digital_cov, "interval": METHOD_NOTE, "sets": {},
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
            enc = encode_levels(entropy, lat)  # every level range-coded once, shared by every SNR and fold
            rd = operational_rd(entropy, lat, encoded=enc)
            half = lat.shape[0] // 2
            # cross-fitted like the digital baseline: the code is chosen on one half's measured R-D, sends the other
            sep_folds = [(rd.subset(slice(half, None)), lat[:half], enc.subset(slice(None, half))),
                         (rd.subset(slice(None, half)), lat[half:], enc.subset(slice(half, None)))]
            per_set["entropy_model_rd"] = {"bits_per_latent": [round(float(b), 1) for b in rd.bits.double().mean(0)],
                                           "rate_estimate_bits": [round(float(b), 1) for b in rd.est_bits.mean(0)],
                                           "psnr": [psnr_db(float(m), var) for m in rd.mse.mean(0)[1:]]}
        for channel in ("awgn", "rayleigh"):
            rows = {}
            for snr in snrs:
                row: dict = {}
                mse_c = draws(lambda: [codec, make_channel(channel)], lat, snr, args.seed, repeats)
                put(row, "codec_psnr", mse_c, var)
                wf = reverse_water_filling(cov.eigenvalues, rho=rho, snr_db=snr, channel=channel)
                row["opta_psnr"] = psnr_db(wf.mse, cov.variance)
                row["gap_to_opta_db"] = round(row["opta_psnr"] - row["codec_psnr"], 3)
                try:
                    parts, dcfgs = [], []
                    for design, target in folds:  # the scheme is designed on `design`, sends `target`
                        dcfg = best_digital_config(snr, k, n_values, covariance=design,
                                                   channel="awgn" if channel == "awgn" else "rayleigh-block")
                        dcfgs.append(dcfg)
                        link = DigitalLink(config=dcfg, covariance=design)
                        parts.append(draws(lambda: [link, make_channel(channel)], target, snr, args.seed, repeats))
                except ValueError as exc:
                    dcfgs, digital_note = [], f"digital baseline unavailable: {exc}"
                if dcfgs:
                    mse_d = torch.cat(parts)  # (N, D) in the latents' order (fold a sends the first half)
                    put(row, "digital_psnr", mse_d, var)
                    # (QAM bits per symbol, code rate, coefficients sent, largest bits per coefficient) per fold
                    row["digital_config"] = [[c.bits_per_symbol, round(c.code_rate, 3), c.num_components or 0,
                                              c.bits_per_value] for c in dcfgs]
                    row["codec_minus_digital_db"] = round(row["codec_psnr"] - row["digital_psnr"], 3)
                    put_gap(row, "digital_minus_codec_db", mse_d, mse_c, var)
                if entropy is not None:
                    ideal = ideal_separation(rd, k, snr, channel, generator=torch.Generator().manual_seed(args.seed),
                                             repeats=repeats)
                    # deterministic: the budget is floor(k C); every latent's MSE is the same in each draw
                    budget = math.floor(k * float(capacity(float(snr), channel)) + 1e-9)
                    mse_i = rd.best_fit(budget)[1][:, None].expand(-1, repeats)
                    assert abs(float(mse_i.mean()) - ideal["mse"]) <= 1e-12 * max(1.0, ideal["mse"])
                    put(row, "separation_ideal_psnr", mse_i, var)
                    put_gap(row, "gap_to_separation_ideal_db", mse_i, mse_c, var)
                    # the same with an ideal entropy coder (the model's rate estimate, no range-coder flush)
                    row["separation_ideal_rate_estimate_psnr"] = psnr_db(ideal["mse_rate_estimate"], var)
                    if "mse_block_csit" in ideal:
                        mse_b = ideal["mse_block_csit_draws"].T  # (N, D): one fade per latent and draw
                        put(row, "separation_ideal_block_csit_psnr", mse_b, var)
                        put_gap(row, "gap_to_separation_ideal_block_csit_db", mse_b, mse_c, var)
                    parts, scfgs = [], []
                    for design, target, tenc in sep_folds:
                        scfg, sinfo = best_learned_digital_config(snr, k, design, channel)
                        scfgs.append(None if scfg is None else [scfg.bits_per_symbol, round(scfg.code_rate, 3),
                                                                round(sinfo["bler"], 4)])
                        if scfg is None:  # nothing sent: the mean
                            m0 = (entropy.norm_mean[None, :, None, None] - target).pow(2).flatten(1).mean(1).double()
                            parts.append(m0[:, None].expand(-1, repeats))
                            continue
                        link = LearnedSeparationLink(entropy, scfg, num_codewords=sinfo["num_codewords"], encoded=tenc)
                        parts.append(draws(lambda: [link, make_channel(channel)], target, snr, args.seed, repeats))
                    mse_s = torch.cat(parts)
                    put(row, "separation_ldpc_psnr", mse_s, var)
                    # (QAM bits per symbol, code rate, predicted BLER) per fold; None: nothing sent
                    row["separation_ldpc_config"] = scfgs
                    put_gap(row, "gap_to_separation_ldpc_db", mse_s, mse_c, var)
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
    if args.plot:
        plot(figures, args.plot)
        figures["plot"] = args.plot
    zoo_names = [n for n, path in (("seed-codec", args.codec), ("entropy-model", args.entropy_model),
                                   (args.pipeline, None))
                 if (path is None and not args.latents) or (path is not None and Path(path).resolve()
                                                            == (checkpoints_dir() / n).resolve())]
    from splitldm.zoo import MODELS

    figures["provenance"] = provenance(
        {**vars(args), "num": num, "repeats": repeats, "snr_db": snrs, "level": 0.95},
        {"data": args.seed, **{f"channel_draw[{r}]": args.seed + r for r in range(repeats)}}, None,
        [n for n in zoo_names if n in MODELS])
    figures["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
