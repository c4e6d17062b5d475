"""Token merging benchmark: our UNet patch vs ``tomesd``, and the TokenMerge link stage.

    python bench/merging.py --quick     # ~1 min: 48x48 latent, 3 repeats
    python bench/merging.py             # 64x64 latent, 7 repeats

Part 1 (speed): a mid-size SD-architecture UNet (random weights; block_out_channels (128, 256, 256),
cross-attention at the two highest resolutions) is run unpatched, with `splitldm.tome.apply_patch`
and with ``tomesd.apply_patch``, same settings for both (max_downsample=1, sx=sy=2, use_rand=False,
self-attention only), one CPU thread. Timings are interleaved per repeat (base, ours, tomesd for
each ratio) in process CPU seconds (the machine is shared: wall time would measure the neighbours)
and the median is reported (and best-of-N, less sensitive to neighbours); speed-up = median(base) / median(patched); error =
||out - base|| / ||base||. tomesd 0.1.3 runs on diffusers 0.42 unmodified (no workaround needed).

Part 2 (link): `TokenMerge` on VAE latents of the embedded shapes test images (float16, as sent):
bits per image and decoded-image PSNR (dB, vs the image, and vs the decode of the clean latent) per
ratio, for the stock decoder and, when ``checkpoints/merge-decoder`` exists, the merge-aware one.
TokenMerge is deterministic and no channel is involved, so the randomness is the images': each PSNR
has ``*_ci95``, the 95 % Student-t interval over the images (`splitldm.eval.stats.t_interval`).

The JSON carries ``"provenance"`` (`splitldm.eval.provenance`). The last line printed is one JSON object
with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from splitldm.eval.stats import t_interval
from splitldm.link.merge import TokenMerge
from splitldm.tome import apply_patch, remove_patch
from splitldm.zoo import checkpoints_dir


def build_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(128, 256, 256), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=256, attention_head_dim=8, norm_num_groups=32)
    return unet.eval()


def bench_speed(latent: int, ratios, repeats: int, batch: int = 1) -> dict:
    import tomesd

    unet = build_unet()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, latent, latent, generator=g)
    t = torch.full((batch,), 500)
    ctx = torch.randn(batch, 16, 256, generator=g)

    @torch.no_grad()
    def run():
        return unet(x, t, ctx).sample

    def timed():
        # CPU time of this (single-threaded) process: on a shared machine wall time mostly measures
        # the neighbours; CPU time is what the UNet itself costs.
        t0 = time.process_time()
        out = run()
        return time.process_time() - t0, out

    settings = dict(max_downsample=1, sx=2, sy=2, use_rand=False)
    methods = {
        "ours": (lambda r: apply_patch(unet, r, **settings), lambda: remove_patch(unet)),
        "tomesd": (lambda r: tomesd.apply_patch(unet, r, **settings), lambda: tomesd.remove_patch(unet)),
    }
    run()  # warm-up
    times: dict = {"base": []}
    outs: dict = {}
    base_out = None
    for rep in range(repeats):
        dt, base_out = timed()
        times["base"].append(dt)
        for r in ratios:
            for name, (apply, remove) in methods.items():
                apply(r)
                dt, out = timed()
                remove()
                times.setdefault((name, r), []).append(dt)
                outs[(name, r)] = out
    base = statistics.median(times["base"])
    base_min = min(times["base"])
    rows = []
    for r in ratios:
        row = {"ratio": r}
        for name in methods:
            med = statistics.median(times[(name, r)])
            err = ((outs[(name, r)] - base_out).norm() / base_out.norm()).item()
            best = min(times[(name, r)])
            row[name] = {"seconds": round(med, 4), "speedup": round(base / med, 3),
                         "speedup_best": round(base_min / best, 3), "rel_error": float(f"{err:.6g}")}
        row["ours_vs_tomesd_output_diff"] = float(f"{((outs[('ours', r)] - outs[('tomesd', r)]).norm() / base_out.norm()).item():.3g}")
        rows.append(row)
    return {"latent": latent, "batch": batch, "repeats": repeats, "base_seconds": round(base, 4),
            "settings": settings, "rows": rows}


@torch.no_grad()
def bench_link(ratios, num_images: int) -> dict:
    from splitldm.eval.data import render_batch
    from splitldm.pipeline.models import load_pipeline
    from splitldm.link.payload import Payload

    try:
        pipe, source = load_pipeline("tiny"), "tiny"
    except FileNotFoundError:
        pipe, source = load_pipeline("tiny-random"), "tiny-random"
    vae = pipe.vae.eval()
    decoders = {"stock": vae}
    ft_dir = checkpoints_dir() / "merge-decoder"
    if (ft_dir / "decoder.safetensors").exists():
        from splitldm.pipeline.merge_decoder import MergeAwareDecoder

        decoders["merge-aware"] = MergeAwareDecoder.from_pretrained(ft_dir).apply_to(vae)
    images, _, _ = render_batch(range(num_images), split="test")
    sf = vae.config.scaling_factor
    latents = vae.encode(images * 2 - 1).latent_dist.mean * sf

    def decode(dec, z):
        return ((dec.decode(z / sf).sample.clamp(-1, 1) + 1) / 2).float()

    clean = {k: decode(d, latents) for k, d in decoders.items()}

    def psnr(a, b):
        """Mean over images of 10 log10(1 / MSE) (dB) and its 95 % t-interval over the images."""
        iv = t_interval((10 * torch.log10(1 / (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10))).tolist())
        return iv.mean, [round(iv.low, 3), round(iv.high, 3)]

    rows = []
    for r in ratios:
        p = Payload({"latents": latents.half()}, primary=("latents",))
        stage = TokenMerge(r)
        sent = stage.send(p, {}, None)
        got = stage.receive(sent, {}, None).tensors["latents"].float()
        row = {"ratio": r, "bits_per_image": sent.tensor_bits() / num_images,
               "side_info_bits_per_image": sent.meta.get("token_merge", {}).get("latents", {}).get("side_info_bits", 0) / num_images,
               "payload_bits": sent.num_bits()}
        cos = TokenMerge(r, similarity="cosine")
        got_cos = cos.receive(cos.send(p, {}, None), {}, None).tensors["latents"].float()
        for name, dec in decoders.items():
            img = decode(dec, got)
            m, ci = psnr(img, images)
            row[f"psnr_{name}_db"], row[f"psnr_{name}_db_ci95"] = round(m, 3), ci
            if r > 0 or name != "stock":
                m, ci = psnr(img, clean["stock"])
                row[f"psnr_{name}_vs_clean_db"], row[f"psnr_{name}_vs_clean_db_ci95"] = round(m, 3), ci
            else:
                row[f"psnr_{name}_vs_clean_db"] = None
        m, ci = psnr(decode(vae, got_cos), images)
        row["psnr_stock_cosine_db"], row["psnr_stock_cosine_db_ci95"] = round(m, 3), ci
        rows.append(row)
    return {"pipeline": source, "num_images": num_images, "latent_shape": list(latents.shape[1:]),
            "dtype": "float16", "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="48x48 latent, 3 repeats, 16 images (about a minute)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--latent", type=int, default=None)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    latent = args.latent or (48 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 7)
    result = {"bench": "merging", "threads": args.threads, "torch": torch.__version__}
    t0 = time.perf_counter()
    if not args.skip_speed:
        speed = bench_speed(latent, args.ratios, repeats)
        result["speed"] = speed
        print(f"UNet speed (latent {latent}x{latent}, base {speed['base_seconds']} s, median of {repeats}):")
        for row in speed["rows"]:
            o, t = row["ours"], row["tomesd"]
            print(f"  ratio {row['ratio']}: ours {o['speedup']}x (best-of {o['speedup_best']}x) err {o['rel_error']:.4g} | "
                  f"tomesd {t['speedup']}x (best-of {t['speedup_best']}x) err {t['rel_error']:.4g} | "
                  f"output diff {row['ours_vs_tomesd_output_diff']}")
    link = bench_link([0.0] + list(args.ratios), 16 if args.quick else 64)
    result["link"] = link
    print(f"TokenMerge on {link['pipeline']} latents {link['latent_shape']} (float16):")
    for row in link["rows"]:
        extras = " ".join(f"{k}={v}" for k, v in row.items() if k.startswith("psnr") and not k.endswith("_ci95"))
        print(f"  ratio {row['ratio']}: {row['bits_per_image']:.0f} bits/image "
              f"(side info {row['side_info_bits_per_image']:.0f}) {extras}")
    result["interval"] = ("link PSNRs: 95% Student-t interval over the images (splitldm.eval.stats.t_interval; "
                          "TokenMerge is deterministic, no channel); speed: median and best of the repeats")
    from splitldm.eval.provenance import provenance
    from splitldm.zoo import MODELS

    models = [m for m in (link["pipeline"], "merge-decoder") if m in MODELS
              and (m != "merge-decoder" or "psnr_merge-aware_db" in link["rows"][0])]
    result["provenance"] = provenance({**vars(args), "latent": latent, "repeats": repeats}, {"unet_init": 0, "inputs": 0},
                                      None, models)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
