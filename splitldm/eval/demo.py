"""`splitldm demo`: central vs split generation on the shipped checkpoints, across SNR and merge ratio.

For a set of held-out prompts it generates

* **central**: the teacher runs all ``steps`` steps on the ES; the image is downloaded (the reference);
* **split**: the ES runs ``split_step`` teacher steps; the latent crosses the link
  ``TokenMerge(ratio) -> SeedCodec -> Rayleigh block fading (MMSE) -> decode -> unmerge``; the UE
  finishes with the distilled student in ``student_steps`` steps (or the teacher, if no student is
  shipped) and decodes,

and writes to ``out``: ``grid.png`` (rows: schemes, columns: prompts), ``psnr_vs_snr.png`` and
``report.json`` (PSNR / SSIM against the central image, classifier-FID against held-out real images,
prompt adherence, bits and channel uses per image vs downloading the image, simulated latency, and
the torch thread count it ran with: see `splitldm.eval.threads`).
What was missing (a checkpoint not shipped) is stated in the report, never silently replaced.
The models are the zoo's (`splitldm.zoo`): ``tiny``, ``tiny-lcm``, ``seed-codec``, ``classifier``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from splitldm.eval.plotting import new_figure, save_figure
from splitldm.link.channels import RayleighBlockFading
from splitldm.link.merge import TokenMerge
from splitldm.link.stack import Link, LinkStage
from splitldm.pipeline.models import load_pipeline
from splitldm.pipeline.split import SplitPipeline

__all__ = ["DemoConfig", "run_demo"]

logger = logging.getLogger(__name__)

IMAGE_BITS_PER_VALUE = 8


@dataclass
class DemoConfig:
    """Settings of the demo; defaults finish in well under 2 minutes on 2 CPU cores.

    ``teacher``, ``student``, ``codec`` and ``classifier`` are zoo names (`splitldm.zoo`) or folders.
    """

    num_prompts: int = 24
    grid_prompts: int = 6
    steps: int = 25
    split_step: int = 10
    student_steps: int = 4
    guidance_scale: float = 5.0
    snr_db: Sequence[float] = (0.0, 5.0, 10.0, 20.0)
    merge_ratios: Sequence[float] = (0.0, 0.5)
    seed: int = 0
    teacher: str = "tiny"
    student: str = "tiny-lcm"
    codec: str = "seed-codec"
    classifier: str = "classifier"
    notes: list[str] = field(default_factory=list)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) float array in [0, 1] -> (B, 3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


def _load_optional(what: str, loader: Callable[[], Any], notes: list[str]):
    try:
        return loader()
    except FileNotFoundError as exc:
        notes.append(f"{what} not shipped ({exc}); the demo runs without it")
        return None


def _codec(name: str, notes: list[str]) -> LinkStage | None:
    from splitldm.link.codec import SeedCodec

    try:
        return SeedCodec.from_pretrained(name)
    except FileNotFoundError as exc:
        notes.append(f"seed codec not shipped ({exc}): the latent crosses analog (AnalogLink: standardised, uncoded, LMMSE)")
        return None


def _grid(rows: list[np.ndarray], labels: list[str], path: Path) -> None:
    n_rows, n_cols = len(rows), rows[0].shape[0]
    fig, axes = new_figure(n_rows, n_cols, figsize=(1.2 * n_cols + 1.6, 1.2 * n_rows))
    for r, (images, label) in enumerate(zip(rows, labels)):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.imshow(np.clip(images[c], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    save_figure(fig, path, dpi=110)


def _plot(results: list[dict], path: Path) -> None:
    fig, axes = new_figure(figsize=(5, 3.4))
    ax = axes[0][0]
    for ratio in sorted({r["merge_ratio"] for r in results}):
        pts = sorted((r["snr_db"], r["psnr_db"]) for r in results if r["merge_ratio"] == ratio)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"merge ratio {ratio:g}")
    ax.set_xlabel("SNR (dB), Rayleigh block fading, MMSE")
    ax.set_ylabel("PSNR vs central image (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=120)


def run_demo(out: str | Path = "out/demo", config: DemoConfig | None = None,
             log: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the demo and write ``grid.png``, ``psnr_vs_snr.png`` and ``report.json`` into ``out``.

    Progress lines go to this module's `logging` logger (INFO); ``log``, if given, receives them too
    (e.g. ``print``). ``progress`` shows a tqdm bar over the split schemes (on stderr). The thread
    count is torch's current one (set it once at the entry point: `splitldm.eval.threads.set_threads`).
    Returns the report (the content of ``report.json``).
    """
    from tqdm.auto import tqdm

    from splitldm.analysis import costs
    from splitldm.eval.data import prompts_for, render_batch
    from splitldm.eval.metrics import (MIN_FID_IMAGES, ClassifierFeatures, fid, load_classifier, prompt_adherence,
                                       psnr, ssim)

    cfg = config or DemoConfig()
    if cfg.num_prompts < 1:
        raise ValueError(f"num_prompts: must be >= 1, got {cfg.num_prompts}")
    if not 0 <= cfg.split_step <= cfg.steps:
        raise ValueError(f"split_step: must be in [0, steps={cfg.steps}], got {cfg.split_step}")
    for snr in cfg.snr_db:
        if not math.isfinite(snr):
            raise ValueError(f"snr_db: must be finite, got {snr}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = list(cfg.notes)
    start = time.perf_counter()

    def log_line(message: str) -> None:
        logger.info(message)
        if log is not None:
            log(message)

    log_line("[demo] loading shipped checkpoints")
    try:
        teacher = load_pipeline(cfg.teacher)
    except FileNotFoundError as exc:
        notes.append(f"teacher not shipped ({exc}); using the tiny architecture with RANDOM weights")
        teacher = load_pipeline("tiny-random")
    student = _load_optional("student", lambda: load_pipeline(cfg.student), notes)
    codec = _codec(cfg.codec, notes)
    classifier = _load_optional("attribute classifier", lambda: load_classifier(cfg.classifier), notes)

    prompts = prompts_for(cfg.num_prompts, split="test", seed=cfg.seed)
    gen = lambda: torch.Generator().manual_seed(cfg.seed)  # noqa: E731
    kwargs = dict(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, output_type="np")

    log_line(f"[demo] central generation: {len(prompts)} prompts x {cfg.steps} teacher steps")
    central = teacher(prompts, generator=gen(), **kwargs).images
    reference = _to_tensor(central)
    real_images = render_batch(range(max(64, len(prompts))), split="test", seed=cfg.seed)[0]
    extractor = ClassifierFeatures(classifier) if classifier is not None else None
    if extractor is not None and len(prompts) < MIN_FID_IMAGES:
        notes.append(f"FID skipped: {len(prompts)} prompt(s); FID needs at least {MIN_FID_IMAGES} images")

    def quality(images: np.ndarray) -> dict[str, Any]:
        x = _to_tensor(images)
        q: dict[str, Any] = {"psnr_db": float(psnr(x, reference).clamp(max=100).mean()),
                             "ssim": float(ssim(x, reference).mean())}
        if extractor is not None:
            q["fid"] = fid(real_images, x, extractor) if len(x) >= MIN_FID_IMAGES else None  # see notes
            q["adherence"] = prompt_adherence(x, prompts, classifier)
        return q

    image_bits = int(np.prod(central.shape[1:])) * IMAGE_BITS_PER_VALUE
    tiny_flops, sd15_flops = costs.model_flops("tiny"), costs.model_flops("sd15")
    ue_steps = cfg.student_steps if student is not None else cfg.steps - cfg.split_step
    report: dict[str, Any] = {
        "prompts": prompts, "steps": cfg.steps, "split_step": cfg.split_step,
        "device_model": cfg.student if student is not None else cfg.teacher, "device_steps": ue_steps,
        "central": {**quality(central), "bits_per_image": image_bits,
                    "note": "the reference: teacher, all steps, ideal link; FID/adherence vs real images"},
        "split": [], "notes": notes, "threads": torch.get_num_threads(),
    }
    rows, labels = [central[:cfg.grid_prompts]], [f"central\n{cfg.steps} steps"]
    results = []
    bar = tqdm(total=len(cfg.merge_ratios) * len(cfg.snr_db), desc="demo", unit="scheme", disable=not progress)
    for ratio in cfg.merge_ratios:
        for snr in cfg.snr_db:
            bar.update(1)
            stages: list[LinkStage] = [TokenMerge(ratio)] if ratio > 0 else []
            if codec is not None:
                stages.append(codec)
            stages.append(RayleighBlockFading(snr_db=float(snr), csi="mmse"))
            split = SplitPipeline(teacher, split_step=cfg.split_step, link=Link(stages),
                                  device_pipe=student, device_steps=cfg.student_steps if student is not None else None,
                                  generator_state="seed")
            t0 = time.perf_counter()
            result = split(prompts, generator=gen(), link_generator=torch.Generator().manual_seed(cfg.seed + 1),
                           **kwargs)
            elapsed = time.perf_counter() - t0
            n = len(prompts)
            bits, uses = result.link["bits"] / n, result.link["channel_uses"] / n
            # Downloading the image at the same SNR with an ideal capacity-achieving code.
            from splitldm.analysis.limits import capacity

            download_uses = image_bits / float(capacity(snr, "rayleigh"))
            sim = costs.split_cost(tiny_flops, cfg.split_step, ue_steps, ratio, float(snr),
                                   rho=codec.config.rho if codec is not None else 0.5)
            sim_download = costs.download_cost(tiny_flops, cfg.steps, float(snr), image_bits=image_bits)
            sim_sd15 = costs.split_cost(sd15_flops, cfg.split_step, ue_steps, ratio, float(snr),
                                        rho=codec.config.rho if codec is not None else 0.5)
            sim_sd15_download = costs.download_cost(sd15_flops, cfg.steps, float(snr))
            entry = {
                "merge_ratio": ratio, "snr_db": snr, **quality(result.images),
                "digital_bits_per_image": bits, "channel_uses_per_image": uses,
                "download_bits_per_image": image_bits, "download_channel_uses_ideal": download_uses,
                "simulated_latency_s": {"tiny_split": sim.latency_s, "tiny_download": sim_download.latency_s,
                                        "sd15_split": sim_sd15.latency_s, "sd15_download": sim_sd15_download.latency_s},
                "wall_s": elapsed,
            }
            results.append(entry)
            report["split"].append(entry)
            rows.append(result.images[:cfg.grid_prompts])
            labels.append(f"r={ratio:g}\n{snr:g} dB")
            log_line(f"[demo] merge {ratio:g}, SNR {snr:>4g} dB: PSNR {entry['psnr_db']:.2f} dB, "
                f"{uses:.0f} channel uses + {bits:.0f} bits per image ({elapsed:.1f} s)")
    bar.close()
    _grid(rows, labels, out / "grid.png")
    _plot(results, out / "psnr_vs_snr.png")
    report["seconds"] = time.perf_counter() - start
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    log_line(f"[demo] wrote {out / 'grid.png'}, {out / 'psnr_vs_snr.png'}, {out / 'report.json'} "
        f"in {report['seconds']:.0f} s")
    for note in notes:
        log_line(f"[demo] note: {note}")
    return report
