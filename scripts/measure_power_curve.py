"""Measure the shipped seed codec over M blocks of different SNR and store the `PowerCurve` table.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/measure_power_curve.py \
        --output splitldm/checkpoints/power-curve/seed-codec-8.json

Runs ``seed-codec`` on held-out VAE latents of the ``tiny`` pipeline (the shapes test split, what a
generate-then-send split transmits and what the codec was trained on) with its ``k`` symbols spread
evenly over ``--blocks`` blocks, for block-SNR draws spread over what `SeedPower` and its oracles visit
(Rayleigh gains ``Exp(1)`` times power splits: equal, water-filling, Dirichlet, channel inversion with
the weakest blocks dropped, gain-proportional, each jittered; mean SNR 5 dB for 70 % of draws, else
U[-5, 15] dB). Fits the surrogate on ``--fit`` draws and reports its error on ``--val`` held-out draws
(and that of the additive model on the uniform curve). Every draw has fresh channel noise (with
``--common-noise`` one realisation is shared by all); ``measurement_noise`` is the first ``--repeat``
held-out draws re-measured with other noise, and ``log_mse`` the errors in log MSE: the noise sigma,
the surrogate's rms error on held-out draws and, with the noise subtracted, against the expected MSE. Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch


def draw_block_snrs(rng: np.random.Generator, n: int, num_blocks: int) -> np.ndarray:
    """``(n, M)`` block SNRs (dB) = mean + 10 log10(p_m g_m) for a mixture of power splits."""
    from splitldm.rl.oracles.meg import water_filling_power

    out = np.zeros((n, num_blocks))
    for i in range(n):
        mean = 5.0 if rng.random() < 0.7 else rng.uniform(-5, 15)
        g = rng.exponential(1.0, num_blocks)
        kind = rng.integers(5)
        if kind == 0:
            p = np.ones(num_blocks)
        elif kind == 1:
            p = water_filling_power(g, mean)
        elif kind == 2:
            p = rng.dirichlet(np.full(num_blocks, rng.choice([0.2, 0.5, 1.0, 3.0, 10.0])))
        elif kind == 3:
            p = g ** -rng.uniform(0, 1.5)
            drop = rng.integers(0, 4)
            if drop:
                p[np.argsort(g)[:drop]] = 0.0
        else:
            p = g ** rng.uniform(0, 2)
        if kind in (1, 3, 4):
            p = p * np.exp(rng.normal(0, 0.3, num_blocks))
        p = num_blocks * p / p.sum()
        with np.errstate(divide="ignore"):
            out[i] = mean + 10 * np.log10(p * g)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="splitldm/checkpoints/power-curve/seed-codec-8.json")
    ap.add_argument("--codec", default="seed-codec")
    ap.add_argument("--pipeline", default="tiny")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--latents", type=int, default=128, help="held-out latents per draw (the same for every draw)")
    ap.add_argument("--fit", type=int, default=1200, help="draws the surrogate is fitted on")
    ap.add_argument("--val", type=int, default=200, help="held-out draws it is validated on")
    ap.add_argument("--repeat", type=int, default=200, help="held-out draws re-measured with other noise")
    ap.add_argument("--common-noise", action="store_true", help="one noise realisation for every draw")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--fit-steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()

    from splitldm.eval.data import render_batch
    from splitldm.link.codec import SeedCodec
    from splitldm.pipeline.models import load_pipeline
    from splitldm.recipes.codec import vae_latents
    from splitldm.rl.envs.power_curve import (SNR_CLIP_DB, PowerCurve, fit_power_curve, measure_block_mse,
                                              relative_errors)

    pipe = load_pipeline(args.pipeline)
    images, _, _ = render_batch(range(args.latents), split="test", seed=args.seed)
    lat = vae_latents(pipe, images).float()
    codec = SeedCodec.from_pretrained(args.codec).eval()
    k = codec.num_symbols(lat.shape[1:])
    gen = torch.Generator().manual_seed(args.seed)

    grid = np.arange(SNR_CLIP_DB[0], SNR_CLIP_DB[1] + 1e-9, 2.5)
    cn = args.common_noise
    uniform = measure_block_mse(codec, lat, np.repeat(grid[:, None], args.blocks, 1), gen, common_noise=cn)
    rng = np.random.default_rng(args.seed)
    s_fit = draw_block_snrs(rng, args.fit, args.blocks)
    s_val = draw_block_snrs(np.random.default_rng(args.seed + 1), args.val, args.blocks)
    m_fit = measure_block_mse(codec, lat, s_fit, gen, common_noise=cn)
    print(f"fit draws measured ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    m_val = measure_block_mse(codec, lat, s_val, gen, common_noise=cn)
    rep = min(args.repeat, args.val)
    m_rep = measure_block_mse(codec, lat, s_val[:rep], torch.Generator().manual_seed(args.seed + 12345),
                              common_noise=cn)  # other noise
    layers = fit_power_curve(s_fit, m_fit, hidden=args.hidden, steps=args.fit_steps, seed=args.seed)

    curve = PowerCurve(args.blocks, np.concatenate([s_fit, s_val]).clip(*SNR_CLIP_DB), np.concatenate([m_fit, m_val]),
                       layers, {"snr_db": grid.tolist(), "mse": uniform.tolist()})
    fit_err = relative_errors(curve.mse_of(s_fit), m_fit)
    val_err = relative_errors(curve.mse_of(s_val), m_val)
    add_err = relative_errors(curve.additive_mse(s_val), m_val)
    noise = relative_errors(m_rep, m_val[:rep])
    # in log MSE: the measurement's own noise sigma (two measurements differ by sqrt(2) sigma), the
    # surrogate's rms error against held-out measurements, and, subtracting the noise, against the
    # expected MSE (what the surrogate estimates when every draw has fresh noise)
    sigma = float(np.sqrt(np.mean((np.log(m_rep) - np.log(m_val[:rep])) ** 2) / 2))
    rms_val = float(np.sqrt(np.mean((curve.log_mse(s_val) - np.log(m_val)) ** 2)))
    rms_add = float(np.sqrt(np.mean((np.log(curve.additive_mse(s_val)) - np.log(m_val)) ** 2)))
    log_err = {"measurement_noise_sigma": sigma, "surrogate_held_out_rms": rms_val,
               "surrogate_vs_expected_rms": float(np.sqrt(max(0.0, rms_val ** 2 - sigma ** 2))),
               "additive_held_out_rms": rms_add}
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/measure_power_curve.py " + shlex.join(argv or sys.argv[1:])
    curve.meta = {
        "source": f"measured: {args.codec} on {args.pipeline} held-out VAE latents",
        "command": command.strip(), "codec": args.codec, "pipeline": args.pipeline,
        "latents": f"{args.latents} VAE latents of render_batch(range({args.latents}), split='test', seed={args.seed})",
        "symbols_per_latent": k, "symbols_per_block": k // args.blocks,
        "mse": "latent MSE per real value / the latents' per-value variance",
        "draws": f"{args.fit} fit (seed {args.seed}) + {args.val} held-out (seed {args.seed + 1}), in that order",
        "validation": {"surrogate_fit": fit_err, "surrogate_held_out": val_err, "additive_held_out": add_err,
                       "measurement_noise": noise, "measurement_noise_draws": rep, "log_mse": log_err},
        "common_noise": cn,
        "seconds": round(time.time() - t0, 1),
    }
    path = curve.save(args.output)
    print(json.dumps({"output": str(path), "seconds": curve.meta["seconds"], **curve.meta["validation"]}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
