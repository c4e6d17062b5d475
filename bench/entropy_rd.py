"""Rate-distortion of a learned entropy model against another on held-out latents (real bitstreams).

    python bench/entropy_rd.py --baseline runs/entropy/export_2329            # the shipped model vs an older one
    python bench/entropy_rd.py --baseline runs/entropy/export_2329 --quick    # 64 latents per kind

For each `EntropyModel` (``--model``, default the shipped ``entropy-model``, and ``--baseline``) and each
kind of latent in the held-out cache of the codec recipe (``--latents``: VAE latents of held-out images,
kind -1, and the tiny pipeline's latents after steps 4 / 6 / 8), every rate level is really encoded
(`splitldm.link.learned_separation.operational_rd`: level header + range-coded bitstream) and decoded:
mean bits per latent and latent PSNR ``10 log10(sigma^2 / MSE)`` (dB, ``sigma^2`` the per-value
variance of that kind). Each model's achievable R-D curve is the upper concave hull of its levels'
(bits, PSNR) points (time-sharing between levels; a level with more bits and no better PSNR is off
it). ``bits_at_baseline_psnr``: at each baseline level's PSNR inside the model's range, the model's
bits on its curve (linear interpolation); ``bits_saved``: the baseline's curve minus the model's at
that PSNR (positive: the model needs fewer bits for the same distortion; 0 for a model against itself). The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from splitldm.eval.provenance import provenance
from splitldm.link.entropy_model import EntropyModel
from splitldm.link.learned_separation import operational_rd
from splitldm.zoo import checkpoints_dir

ROOT = Path(__file__).resolve().parent.parent
KINDS = {-1: "vae", 4: "step4", 6: "step6", 8: "step8"}


def rd_curve(model: EntropyModel, lat: torch.Tensor) -> dict:
    """Per level: mean real bits per latent, mean rate-estimate bits, latent PSNR (dB)."""
    rd = operational_rd(model, lat)
    var = float(lat.var(dim=0, unbiased=False).mean())
    psnr = [round(10 * math.log10(var / float(m)), 3) for m in rd.mse.mean(0)[1:]]
    return {"bits": [round(float(b), 2) for b in rd.bits.double().mean(0)],
            "rate_estimate_bits": [round(float(b), 2) for b in rd.est_bits.mean(0)], "psnr": psnr}


def upper_hull(bits, psnr) -> tuple[np.ndarray, np.ndarray]:
    """The achievable R-D curve: the upper concave hull of the (bits, PSNR) points (time-sharing
    between levels), increasing in both."""
    pts = sorted(zip(bits, psnr))
    hull: list[tuple[float, float]] = []
    for p in pts:
        if hull and p[1] <= hull[-1][1]:
            continue  # more bits, no better: dominated
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):  # hull[-1] under the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return np.array([h[0] for h in hull]), np.array([h[1] for h in hull])


def bits_at(curve: dict, psnr: float) -> float | None:
    """Bits the curve needs for ``psnr`` (dB) by linear interpolation on its hull; None outside it."""
    b, p = upper_hull(curve["bits"], curve["psnr"])
    if psnr < p[0] or psnr > p[-1]:
        return None
    return float(np.interp(psnr, p, b))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 latents per kind (default 256)")
    ap.add_argument("--model", default=str(checkpoints_dir() / "entropy-model"))
    ap.add_argument("--baseline", required=True, help="EntropyModel folder to compare against")
    ap.add_argument("--latents", default=None,
                    help="held-out cache (default: runs/codec-cache/latents-test-*.safetensors)")
    ap.add_argument("--num", type=int, default=None, help="latents per kind (default 64 quick, 256 full)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SPLITLDM_THREADS", "1")))
    t0 = time.time()
    path = args.latents or next(iter(sorted(glob.glob(str(ROOT / "runs/codec-cache/latents-test-*.safetensors")))), None)
    if path is None or not os.path.isfile(path):
        raise SystemExit("--latents: no held-out cache (run the codec or entropy recipe once to build it)")
    from safetensors.torch import load_file

    data = load_file(path)
    num = args.num or (64 if args.quick else 256)
    models = {"model": EntropyModel.from_pretrained(args.model), "baseline": EntropyModel.from_pretrained(args.baseline)}
    out: dict = {"bench": "entropy_rd", "model": os.path.relpath(args.model, ROOT),
                 "baseline": os.path.relpath(args.baseline, ROOT), "latents_file": os.path.relpath(path, ROOT),
                 "num_per_kind": num, "kinds": {}}
    for kind in sorted(data["kind"].unique().tolist()):
        lat = data["latents"][data["kind"] == kind][:num]
        name = KINDS.get(kind, f"kind{kind}")
        curves = {k: rd_curve(m, lat) for k, m in models.items()}
        at = [bits_at(curves["model"], p) for p in curves["baseline"]["psnr"]]
        base = [bits_at(curves["baseline"], p) for p in curves["baseline"]["psnr"]]  # on the baseline's own hull
        saved = [None if a is None or b is None else round(b - a, 2) for a, b in zip(at, base)]
        got = [s for s in saved if s is not None]
        out["kinds"][name] = {**curves, "bits_at_baseline_psnr": [None if a is None else round(a, 2) for a in at],
                              "bits_saved": saved,
                              "mean_bits_saved": round(float(np.mean(got)), 2) if got else None,
                              "best_psnr": {k: max(c["psnr"]) for k, c in curves.items()}}
        print(f"[{name}] model {curves['model']['bits']} bits / {curves['model']['psnr']} dB; baseline "
              f"{curves['baseline']['bits']} bits / {curves['baseline']['psnr']} dB; saved at equal PSNR {saved}",
              flush=True)
    out["provenance"] = provenance(vars(args), {}, None,
                                   ["entropy-model"] if Path(args.model).resolve()
                                   == (checkpoints_dir() / "entropy-model").resolve() else [])
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
