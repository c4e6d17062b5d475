"""Quality and wall time versus number of sampling steps: teacher (DDIM) and LCM student.

For each configuration, generates one image per held-out prompt (``splitldm.eval.data.prompts_for``,
split ``test``) and reports prompt adherence (attribute classifier), classifier-FID against
held-out real images (never Inception FID), and wall time per image. No channel is involved, so the
randomness is the prompts': ``adherence_ci95`` is the 95 % BCa bootstrap interval of the share over the
per-prompt outcomes (`splitldm.eval.stats.bootstrap_interval`, seeded); classifier-FID is a statistic
of the whole image set and has no interval here (compare it with ``real_vs_real_classifier_fid``, the
floor two real sets of this size reach). The JSON carries ``"provenance"`` (`splitldm.eval.provenance`).
The last line printed is one JSON object with all numbers.

    python bench/steps.py            # full: 256 prompts
    python bench/steps.py --quick    # 16 prompts (a smoke run, under a minute on a free core)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from splitldm.eval.data import prompts_for, render_batch
from splitldm.eval.metrics import ClassifierFeatures, frechet_distance, load_classifier, prompt_adherence
from splitldm.eval.provenance import provenance
from splitldm.eval.stats import bootstrap_interval
from splitldm.eval.threads import set_threads
from splitldm.pipeline.models import load_pipeline


@torch.no_grad()
def generate(pipe, prompts, steps: int, guidance: float, seed: int, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """Images (N, 3, 64, 64) in [0, 1] for ``prompts`` and the wall seconds it took."""
    out, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        g = torch.Generator().manual_seed(seed + i)
        res = pipe(list(prompts[i:i + batch_size]), num_inference_steps=steps, guidance_scale=guidance,
                   generator=g, output_type="pt")
        out.append(res.images.float().clamp(0, 1).cpu())
    return torch.cat(out), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 prompts, fewer step counts")
    ap.add_argument("--num", type=int, default=None, help="prompts per configuration (default 256; quick 16)")
    ap.add_argument("--num-real", type=int, default=None, help="held-out real images for FID (default 1024; quick 64)")
    ap.add_argument("--teacher", default="tiny")
    ap.add_argument("--student", default="tiny-lcm")
    ap.add_argument("--guidance", type=float, default=4.0, help="teacher classifier-free guidance scale")
    ap.add_argument("--student-guidance", type=float, default=4.0, help="student guidance (embedded, w = g - 1)")
    ap.add_argument("--teacher-steps", default="1,2,4,8,25")
    ap.add_argument("--student-steps", default="1,2,4,8")
    ap.add_argument("--holdout-combos", action="store_true", help="prompts from attribute combinations held out of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: $SPLITLDM_THREADS, else $OMP_NUM_THREADS, else 1)")
    ap.add_argument("--device", default="cpu", help="where the pipelines run (e.g. cuda); metrics stay on the CPU")
    args = ap.parse_args(argv)
    args.threads = set_threads(args.threads, fallback=1)
    num = args.num or (16 if args.quick else 256)
    num_real = args.num_real or (64 if args.quick else 1024)
    if num < 2:
        raise SystemExit("--num: need at least 2 prompts (FID needs a covariance)")
    t_steps = [int(s) for s in args.teacher_steps.split(",") if s]
    s_steps = [int(s) for s in args.student_steps.split(",") if s]
    if args.quick:
        t_steps, s_steps = [s for s in t_steps if s in (1, 4, 25)] or t_steps, [s for s in s_steps if s in (1, 4)] or s_steps

    clf = load_classifier()
    feats = ClassifierFeatures(clf)
    real, _, _ = render_batch(range(num_real), "test", seed=args.seed + 1)  # real held-out images, other seeds than the prompts
    real_f = feats(real)
    prompts = prompts_for(num, "test", seed=args.seed, holdout_combos=args.holdout_combos)

    rows = []
    for label, name, steps_list, guidance in (("teacher-ddim", args.teacher, t_steps, args.guidance),
                                              ("student-lcm", args.student, s_steps, args.student_guidance)):
        try:
            pipe = load_pipeline(name).to(args.device)
        except (FileNotFoundError, ValueError) as exc:
            print(f"skip {label}: {exc}", file=sys.stderr)
            continue
        for steps in steps_list:
            imgs, wall = generate(pipe, prompts, steps, guidance, args.seed)
            adh, per = prompt_adherence(imgs, prompts, clf, per_attribute=True)
            hits = [prompt_adherence(imgs[i:i + 1], [p], clf) for i, p in enumerate(prompts)]  # 0/1 per prompt
            iv = bootstrap_interval(hits, seed=args.seed)
            row = {"model": label, "checkpoint": name, "steps": steps, "guidance": guidance,
                   "adherence": round(adh, 4), "adherence_ci95": [round(iv.low, 4), round(iv.high, 4)],
                   "per_attribute": {k: round(v, 4) for k, v in per.items()},
                   "classifier_fid": round(frechet_distance(real_f, feats(imgs)), 4),
                   "wall_s_per_image": round(wall / len(prompts), 5)}
            rows.append(row)
            print(f"{label:13s} steps={steps:3d}  adherence={adh:6.1%} [{iv.low:.1%}, {iv.high:.1%}]  classifier-FID={row['classifier_fid']:8.3f}  "
                  f"{1e3 * row['wall_s_per_image']:7.1f} ms/image", flush=True)
    # real-vs-real floor: the FID two independent real sets reach with this many images
    real2, real2_caps, _ = render_batch(range(num), "test", seed=args.seed + 2)
    floor = frechet_distance(real_f, feats(real2))
    result = {"bench": "steps", "quick": args.quick, "num_prompts": num, "num_real": num_real,
              "holdout_combos": args.holdout_combos, "fid_extractor": feats.name,
              "real_vs_real_classifier_fid": round(floor, 4),
              "real_adherence": round(prompt_adherence(real2, real2_caps, clf), 4),
              "threads": args.threads, "device": args.device,
              "interval": "adherence_ci95: 95% BCa bootstrap over the prompts (splitldm.eval.stats.bootstrap_interval, "
                          "2000 resamples, seed = --seed); classifier-FID: no interval (a set statistic)",
              "rows": rows}
    from splitldm.zoo import MODELS

    result["provenance"] = provenance({**vars(args), "num": num, "num_real": num_real, "teacher_steps": t_steps,
                                       "student_steps": s_steps},
                                      {"sampling": args.seed, "real_images": args.seed + 1, "real_floor": args.seed + 2,
                                       "bootstrap": args.seed}, feats.name,
                                      [m for m in ("classifier", args.teacher, args.student) if m in MODELS])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
