"""`splitldm demo`: central vs split generation on the shipped checkpoints, across SNR and merge ratio.

For a set of held-out prompts it generates

* **central**: the teacher runs all ``steps`` steps on the ES; the image is downloaded (the reference);
* **split**: the ES runs ``split_step`` teacher steps; the latent crosses the link
  ``TokenMerge(ratio) -> SeedCodec -> Rayleigh block fading (MMSE) -> decode -> unmerge``; the UE
  finishes with the distilled student in ``student_steps`` steps (or the teacher, if no student is
  shipped) and decodes;
* **reference rows**: ``ideal`` (the same split through an ideal link: the student's own cost, no
  channel), ``analog`` (`AnalogLink`, uncoded, 1/2 complex use per latent value, same channel),
  ``digital`` (`DigitalLink` with `best_digital_config` at the codec's channel-use budget, same
  channel) and ``download`` (generate-then-download: the ES runs the whole teacher generation and
  sends the 8-bit image with an ideal capacity-achieving code; the image arrives exactly, so the row
  reports channel uses and latency, not a PSNR).

Statistics: the ES part runs once per prompt; at every (scheme, SNR) point the link and the UE run
``draws`` times with independent channel realisations (draw ``d`` uses link seed ``seed + 1 + d`` at
every point: common random numbers, the same fades at every SNR). Each figure is the mean over
prompts x draws with a 95 % confidence interval (`splitldm.eval.stats.nested_interval`). The
**headline** interval is ``over="draws"`` (the prompts are the fixed workload, the channel is random:
what answers "do these two SNR points differ"); ``over="prompts"`` (which adds the spread between
prompts) is stored next to it. The default of 16 draws keeps each headline PSNR interval under
0.3 dB (measured: see the evaluation guide).

It writes to ``out``: ``grid.png`` (rows: schemes at draw 0, columns: prompts), ``psnr_vs_snr.png``
(means with their headline intervals as error bars, the ideal-link row as a line) and
``report.json`` (PSNR / SSIM against the central image with intervals and the per-prompt means,
classifier-FID of draw 0's images against held-out real images, prompt adherence over all draws, bits
and channel uses per image vs downloading the image, simulated latency, whether each curve is
monotone within its intervals, the provenance block of `splitldm.eval.provenance`).
What was missing (a checkpoint not shipped) is stated in the report, never silently replaced.
The models are the zoo's (`splitldm.zoo`): ``tiny``, ``tiny-lcm``, ``seed-codec``, ``classifier``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from splitldm.eval.evaluate import check_draws, monotone_within, summarize
from splitldm.eval.plotting import new_figure, save_figure
from splitldm.link.analog import AnalogLink
from splitldm.link.channels import RayleighBlockFading
from splitldm.link.merge import TokenMerge
from splitldm.link.stack import Link, LinkStage
from splitldm.pipeline.models import load_pipeline
from splitldm.pipeline.split import SplitPipeline

__all__ = ["DemoConfig", "run_demo", "format_table", "DEFAULT_DRAWS", "check_draws"]

logger = logging.getLogger(__name__)

IMAGE_BITS_PER_VALUE = 8
#: Channel draws per prompt and point: the headline 95 % interval of every PSNR point stays < 0.3 dB.
DEFAULT_DRAWS = 16


@dataclass
class DemoConfig:
    """Settings of the demo.

    ``teacher``, ``student``, ``codec`` and ``classifier`` are zoo names (`splitldm.zoo`) or folders.
    ``draws``: independent channel realisations per prompt and point (>= 2: the interval over draws
    needs two). ``level``: confidence level of the intervals. ``references``: also run the analog and
    digital links at every SNR (the ideal-link and download rows are always there).
    ``air_side_info_bits``: the digital side information a served image carries besides the merge index
    map (`splitldm.serve.wire.SIDE_INFO_BITS`: the 16-bit air header and its CRC-16; a test keeps the two
    equal): with the index map it is counted in each row's total channel uses at the channel's capacity.
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
    draws: int = DEFAULT_DRAWS
    level: float = 0.95
    references: bool = True
    air_side_info_bits: int = 32
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


def _plot(report: dict[str, Any], path: Path) -> None:
    """PSNR vs SNR: one curve per split merge ratio and reference link, headline intervals as error bars;
    the ideal link (no channel) as a horizontal line."""
    fig, axes = new_figure(figsize=(5.6, 3.8))
    ax = axes[0][0]
    curves: dict[str, list[dict]] = {}
    for e in report["split"]:
        curves.setdefault(f"codec, merge ratio {e['merge_ratio']:g}", []).append(e)
    for e in report["references"]:
        if e["scheme"] in ("analog", "digital") and e.get("psnr_db") is not None:
            curves.setdefault(f"{e['scheme']} (r = 0)", []).append(e)
    for label, entries in curves.items():
        entries = sorted(entries, key=lambda e: e["snr_db"])
        xs = [e["snr_db"] for e in entries]
        ys = [e["psnr_db"] for e in entries]
        err = [[e["psnr_db"] - e["psnr_ci"]["low"] for e in entries], [e["psnr_ci"]["high"] - e["psnr_db"] for e in entries]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ideal = next((e for e in report["references"] if e["scheme"] == "ideal"), None)
    if ideal is not None:
        # a line only: its interval over prompts (the spread between prompts, +-2 dB here) is not comparable
        # with the curves' intervals over draws, and is in report.json
        ax.axhline(ideal["psnr_db"], color="k", lw=1, label="ideal link + UE model (no channel)")
    ax.set_xlabel("SNR (dB), Rayleigh block fading, MMSE")
    ax.set_ylabel(f"PSNR vs central image (dB), {report['level']:.0%} CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


def format_table(report: dict[str, Any]) -> str:
    """The demo's result table (Markdown): one row per scheme and point, ``mean +- half-width`` of the
    headline interval (over channel draws, prompts fixed) and, in its own column, the PSNR interval
    over prompts. The ideal link has no channel, so its only interval is the one over prompts."""
    pct = f"{report['level']:.0%}"
    lines = [f"| scheme | SNR (dB) | PSNR (dB), +- {pct} CI over draws | PSNR +- over prompts | SSIM | adherence "
             "| channel uses / image (symbols + side info at capacity) | SD-1.5 latency split / download (s) |",
             "|---|---|---|---|---|---|---|---|"]

    def pm(e, key, digits):
        if e.get(key) is None:
            return "-"
        ci = e[(key.replace("_db", "")) + "_ci"]
        return f"{e[key]:.{digits}f}" + ("" if ci["half_width"] == 0 else f" +- {ci['half_width']:.{digits}f}")

    def prompts_pm(e):
        ci = e.get("psnr_ci_prompts")
        return "-" if ci is None else f"+- {ci['half_width']:.2f}"

    def adh(e):
        return "-" if e.get("adherence") is None else f"{100 * e['adherence']:.1f}%"

    def uses(e):  # symbols + side information at capacity = total
        if "total_channel_uses_per_image" not in e:
            return f"{e['channel_uses_per_image']:.0f}"
        return (f"{e['channel_uses_per_image']:.0f} + {e['total_channel_uses_per_image'] - e['channel_uses_per_image']:.1f}"
                f" = {e['total_channel_uses_per_image']:.1f}")

    def lat(e):
        s = e.get("simulated_latency_s")
        return "-" if s is None else (f"{s['sd15_split']:.2f} / {s['sd15_download']:.2f}" if "sd15_split" in s
                                      else f"- / {s['sd15_download']:.2f}")

    c = report["central"]
    lines.append(f"| central (teacher, {report['steps']} steps) | - | ref | - | ref | {adh(c)} | - | - |")
    refs = report["references"]
    for e in refs:
        if e["scheme"] == "ideal":
            lines.append(f"| ideal link + {report['device_model']} (no channel) | - | {pm(e, 'psnr_db', 2)} | "
                         f"{prompts_pm(e)} | {pm(e, 'ssim', 3)} | {adh(e)} | 0 | - |")
    for e in report["split"]:
        lines.append(f"| codec r = {e['merge_ratio']:g} | {e['snr_db']:g} | {pm(e, 'psnr_db', 2)} | {prompts_pm(e)} | "
                     f"{pm(e, 'ssim', 3)} | {adh(e)} | {uses(e)} | {lat(e)} |")
    for scheme in ("analog", "digital"):
        for e in refs:
            if e["scheme"] == scheme:
                lines.append(f"| {scheme} r = 0 | {e['snr_db']:g} | {pm(e, 'psnr_db', 2)} | {prompts_pm(e)} | "
                             f"{pm(e, 'ssim', 3)} | {adh(e)} | {uses(e)} | - |")
    for e in refs:
        if e["scheme"] == "download":
            lines.append(f"| generate-then-download | {e['snr_db']:g} | exact | - | exact | {adh(c)} | "
                         f"{e['channel_uses_per_image']:,.0f} | {lat(e)} |")
    return "\n".join(lines)


def _check_config(cfg: DemoConfig) -> None:
    if isinstance(cfg.num_prompts, bool) or not isinstance(cfg.num_prompts, int) or cfg.num_prompts < 1:
        raise ValueError(f"num_prompts: must be an int >= 1, got {cfg.num_prompts!r}")
    if not 0 <= cfg.split_step <= cfg.steps:
        raise ValueError(f"split_step: must be in [0, steps={cfg.steps}], got {cfg.split_step}")
    if isinstance(cfg.air_side_info_bits, bool) or not isinstance(cfg.air_side_info_bits, int) \
            or cfg.air_side_info_bits < 0:
        raise ValueError(f"air_side_info_bits: must be an int >= 0, got {cfg.air_side_info_bits!r}")
    for snr in cfg.snr_db:
        if not math.isfinite(snr):
            raise ValueError(f"snr_db: must be finite, got {snr}")
    check_draws(cfg.draws, "draws", minimum=2)
    if isinstance(cfg.level, bool) or not isinstance(cfg.level, (int, float)) or not 0 < cfg.level < 1:
        raise ValueError(f"level: expected a confidence level in (0, 1), got {cfg.level!r}")


def run_demo(out: str | Path = "out/demo", config: DemoConfig | None = None,
             log: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the demo and write ``grid.png``, ``psnr_vs_snr.png`` and ``report.json`` into ``out``.

    Progress lines and the final table go to this module's `logging` logger (INFO); ``log``, if given,
    receives them too (e.g. ``print``). ``progress`` shows a tqdm bar over the points (on stderr). The
    thread count is torch's current one (set it once at the entry point:
    `splitldm.eval.threads.set_threads`). Returns the report (the content of ``report.json``).

    Raises:
        ValueError: a bad `DemoConfig` field (named), e.g. ``draws`` not an int >= 2.
    """
    from tqdm.auto import tqdm

    from splitldm.analysis import costs
    from splitldm.analysis.limits import capacity, latent_covariance
    from splitldm.eval.data import prompts_for, render_batch
    from splitldm.eval.metrics import (MIN_FID_IMAGES, ClassifierFeatures, fid, load_classifier, prompt_adherence,
                                       psnr, ssim)
    from splitldm.eval.provenance import provenance
    from splitldm.link.digital import DigitalLink, best_digital_config

    cfg = config or DemoConfig()
    _check_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = list(cfg.notes)
    start = time.perf_counter()

    def log_line(message: str) -> None:
        logger.info(message)
        if log is not None:
            log(message)

    log_line("[demo] loading shipped checkpoints")
    models = []
    try:
        teacher = load_pipeline(cfg.teacher)
        models.append(cfg.teacher)
    except FileNotFoundError as exc:
        notes.append(f"teacher not shipped ({exc}); using the tiny architecture with RANDOM weights")
        teacher = load_pipeline("tiny-random")
    student = _load_optional("student", lambda: load_pipeline(cfg.student), notes)
    codec = _codec(cfg.codec, notes)
    classifier = _load_optional("attribute classifier", lambda: load_classifier(cfg.classifier), notes)
    from splitldm import zoo

    models += [name for name, obj in ((cfg.student, student), (cfg.codec, codec), (cfg.classifier, classifier))
               if obj is not None and zoo.is_zoo_name(name)]

    prompts = prompts_for(cfg.num_prompts, split="test", seed=cfg.seed)
    gen = lambda: torch.Generator().manual_seed(cfg.seed)  # noqa: E731
    kwargs = dict(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale)

    log_line(f"[demo] central generation: {len(prompts)} prompts x {cfg.steps} teacher steps")
    central = teacher(prompts, generator=gen(), output_type="np", **kwargs).images
    reference = _to_tensor(central)
    real_images = render_batch(range(max(64, len(prompts))), split="test", seed=cfg.seed)[0]
    extractor = ClassifierFeatures(classifier) if classifier is not None else None
    if extractor is not None and len(prompts) < MIN_FID_IMAGES:
        notes.append(f"FID skipped: {len(prompts)} prompt(s); FID needs at least {MIN_FID_IMAGES} images")

    def quality(draws: list[np.ndarray]) -> dict[str, Any]:
        """Figures of ``draws`` (D arrays (G, H, W, 3)): PSNR / SSIM [G, D] tables -> means and intervals;
        FID of draw 0 (G images, comparable with the central row); adherence over all draws."""
        xs = [_to_tensor(images) for images in draws]
        p = np.stack([psnr(x, reference).clamp(max=100).numpy() for x in xs], axis=1).astype(float)
        s = np.stack([ssim(x, reference).numpy() for x in xs], axis=1).astype(float)
        q: dict[str, Any] = {}
        for key, table in (("psnr", p), ("ssim", s)):
            st = summarize(table, cfg.level, deterministic=len(xs) == 1)
            q[f"{key}_db" if key == "psnr" else key] = st["mean"]
            q[f"{key}_ci"], q[f"{key}_ci_prompts"] = st["ci"], st["ci_prompts"]
            q[f"{key}_per_prompt"] = st["per_prompt"]
        if extractor is not None:
            q["fid"] = fid(real_images, xs[0], extractor) if len(xs[0]) >= MIN_FID_IMAGES else None  # see notes
            q["adherence"] = float(np.mean([prompt_adherence(x, prompts, classifier) for x in xs]))
        return q

    image_bits = int(np.prod(central.shape[1:])) * IMAGE_BITS_PER_VALUE
    tiny_flops, sd15_flops = costs.model_flops("tiny"), costs.model_flops("sd15")
    ue_steps = cfg.student_steps if student is not None else cfg.steps - cfg.split_step
    rho = codec.config.rho if codec is not None else 0.5
    c_quality = {"psnr_db": None, "ssim": None}
    if extractor is not None:
        c_quality["fid"] = fid(real_images, reference, extractor) if len(prompts) >= MIN_FID_IMAGES else None
        c_quality["adherence"] = prompt_adherence(reference, prompts, classifier)
    report: dict[str, Any] = {
        "prompts": prompts, "steps": cfg.steps, "split_step": cfg.split_step,
        "device_model": cfg.student if student is not None else cfg.teacher, "device_steps": ue_steps,
        "draws": cfg.draws, "level": cfg.level,
        "headline_interval": ("nested-draws: prompts fixed, channel random (psnr_ci, ssim_ci); "
                              "nested-prompts adds the spread between prompts (psnr_ci_prompts, ssim_ci_prompts)"),
        "central": {**c_quality, "bits_per_image": image_bits,
                    "note": "the reference: teacher, all steps, ideal link; FID/adherence vs real images"},
        "split": [], "references": [], "notes": notes, "threads": torch.get_num_threads(),
    }

    # ES once per prompt: the payload does not depend on the link, the SNR or the draw
    split = SplitPipeline(teacher, split_step=cfg.split_step, device_pipe=student,
                          device_steps=cfg.student_steps if student is not None else None, generator_state="seed")
    t0 = time.perf_counter()
    sent = split.edge(prompts, generator=gen(), **kwargs)
    es_s = time.perf_counter() - t0
    n = len(prompts)

    def run_point(stages: list[LinkStage], draws: int) -> tuple[list[np.ndarray], dict[str, Any], float]:
        images, summary = [], None
        t = time.perf_counter()
        for d in range(draws):
            link, g = Link(list(stages)), torch.Generator().manual_seed(cfg.seed + 1 + d)
            on_air, context = link.send_half(sent, generator=g)  # the two halves equal one link call, bit for bit
            received = link.receive_half(on_air, context, generator=g)
            summary = Link.summary(received)
            summary["index_map_bits"] = sum(rec["side_info_bits"] for rec in on_air.meta.get("token_merge", {}).values())
            images.append(split.device(received, output_type="np"))
        return images, summary, time.perf_counter() - t

    def air_uses(entry: dict[str, Any], summary: dict[str, Any], snr: float) -> dict[str, Any]:
        """Per image: the served side information (air header + CRC-16 + merge index map) and the total
        channel uses with it sent at the Rayleigh ergodic capacity (as the download row's bits are)."""
        side = cfg.air_side_info_bits + summary.get("index_map_bits", 0) / n
        return {"side_info_bits_per_image": side,
                "total_channel_uses_per_image": entry["channel_uses_per_image"] + side / float(capacity(snr, "rayleigh"))}

    rows, labels = [central[:cfg.grid_prompts]], [f"central\n{cfg.steps} steps"]
    # the ideal link: no channel, deterministic; what the student alone costs against central
    ideal_images, _, ideal_s = run_point([], 1)
    ideal = {"scheme": "ideal", "snr_db": None, **quality(ideal_images), "channel_uses_per_image": 0,
             "wall_s": ideal_s, "note": "same split through an ideal link: the UE model's own cost (no channel)"}
    report["references"].append(ideal)
    rows.append(ideal_images[0][:cfg.grid_prompts])
    labels.append("ideal link\n+ student")
    log_line(f"[demo] ideal link + {report['device_model']}: PSNR {ideal['psnr_db']:.2f} dB"
             + ("" if ideal["psnr_ci_prompts"] is None
                else f" (+- {ideal['psnr_ci_prompts']['half_width']:.2f} over prompts)"))

    cov = None
    if cfg.references and n >= 2:  # the digital reference's KLT: the covariance of the sent latents
        cov = latent_covariance(sent.tensors["latents"].float(), mode="full")
    n_values = int(np.prod(sent.tensors["latents"].shape[1:]))
    budget = max(1, math.floor(rho * n_values + 1e-9))
    points = len(cfg.merge_ratios) * len(cfg.snr_db) + (2 * len(cfg.snr_db) if cfg.references else 0)
    bar = tqdm(total=points, desc="demo", unit="point", disable=not progress)
    for ratio in cfg.merge_ratios:
        for snr in cfg.snr_db:
            bar.update(1)
            stages: list[LinkStage] = [TokenMerge(ratio)] if ratio > 0 else []
            if codec is not None:
                stages.append(codec)
            stages.append(RayleighBlockFading(snr_db=float(snr), csi="mmse"))
            images, summary, elapsed = run_point(stages, cfg.draws)
            bits, uses = summary["bits"] / n, summary["channel_uses"] / n
            sim = costs.split_cost(tiny_flops, cfg.split_step, ue_steps, ratio, float(snr), rho=rho)
            sim_download = costs.download_cost(tiny_flops, cfg.steps, float(snr), image_bits=image_bits)
            sim_sd15 = costs.split_cost(sd15_flops, cfg.split_step, ue_steps, ratio, float(snr), rho=rho)
            sim_sd15_download = costs.download_cost(sd15_flops, cfg.steps, float(snr))
            entry = {
                "merge_ratio": ratio, "snr_db": snr, **quality(images),
                "digital_bits_per_image": bits, "channel_uses_per_image": uses,
                "download_bits_per_image": image_bits,
                "download_channel_uses_ideal": image_bits / float(capacity(snr, "rayleigh")),
                "simulated_latency_s": {"tiny_split": sim.latency_s, "tiny_download": sim_download.latency_s,
                                        "sd15_split": sim_sd15.latency_s, "sd15_download": sim_sd15_download.latency_s},
                "wall_s": elapsed,
            }
            entry.update(air_uses(entry, summary, float(snr)))
            report["split"].append(entry)
            rows.append(images[0][:cfg.grid_prompts])
            labels.append(f"r={ratio:g}\n{snr:g} dB")
            log_line(f"[demo] merge {ratio:g}, SNR {snr:>4g} dB: PSNR {entry['psnr_db']:.2f} "
                     f"+- {entry['psnr_ci']['half_width']:.2f} dB ({cfg.draws} draws), "
                     f"{uses:.0f} channel uses + {bits:.0f} bits per image ({elapsed:.1f} s)")
    if cfg.references:
        for snr in cfg.snr_db:
            candidates = [("analog", lambda: [AnalogLink()])]
            if codec is None or cov is None:  # it runs at the codec's budget, with the latents' covariance
                if snr == cfg.snr_db[0]:
                    notes.append("digital reference skipped: " + ("no seed codec, so no channel-use budget to match"
                                 if codec is None else "one prompt: no latent covariance to measure"))
            else:
                try:
                    dcfg = best_digital_config(float(snr), budget, n_values, covariance=cov, channel="rayleigh-block")
                    candidates.append(("digital", lambda: [DigitalLink(config=dcfg, covariance=cov)]
                                       if dcfg.bits_per_value > 0 else None))
                except ValueError as exc:  # no measured MCS thresholds in this install
                    notes.append(f"digital reference skipped at {snr:g} dB: {exc}")
            for scheme, make in candidates:
                bar.update(1)
                link_stages = make()
                if link_stages is None:  # nothing fits the budget: nothing sent, the UE uses the mean latent
                    from splitldm.link.separation import Separation

                    images, summary, elapsed = run_point([Separation(0)], 1)
                    entry = {"scheme": scheme, "snr_db": snr, **quality(images),
                             "channel_uses_per_image": 0.0, "digital_bits_per_image": 0.0, "wall_s": elapsed,
                             "config": {"bits_per_value": 0}, "note": "no code fits the budget: nothing sent"}
                else:
                    images, summary, elapsed = run_point(
                        [*link_stages, RayleighBlockFading(snr_db=float(snr), csi="mmse")], cfg.draws)
                    entry = {"scheme": scheme, "snr_db": snr, **quality(images),
                             "channel_uses_per_image": summary["channel_uses"] / n,
                             "digital_bits_per_image": summary["bits"] / n, "wall_s": elapsed}
                    entry.update(air_uses(entry, summary, float(snr)))
                    if scheme == "digital":
                        entry["config"] = {"bits_per_value": dcfg.bits_per_value, "code_rate": dcfg.code_rate,
                                           "bits_per_symbol": dcfg.bits_per_symbol}
                report["references"].append(entry)
                log_line(f"[demo] {scheme} (r = 0), SNR {snr:>4g} dB: PSNR {entry['psnr_db']:.2f} "
                         f"+- {entry['psnr_ci']['half_width']:.2f} dB, {entry['channel_uses_per_image']:.0f} "
                         f"channel uses per image ({elapsed:.1f} s)")
    bar.close()
    for snr in cfg.snr_db:
        sim_download = costs.download_cost(tiny_flops, cfg.steps, float(snr), image_bits=image_bits)
        sim_sd15_download = costs.download_cost(sd15_flops, cfg.steps, float(snr))
        report["references"].append({
            "scheme": "download", "snr_db": snr, "psnr_db": None, "ssim": None,
            "bits_per_image": image_bits, "channel_uses_per_image": image_bits / float(capacity(snr, "rayleigh")),
            "simulated_latency_s": {"tiny_download": sim_download.latency_s, "sd15_download": sim_sd15_download.latency_s},
            "note": ("generate-then-download: the ES runs all teacher steps and sends the 8-bit image with an ideal "
                     "capacity-achieving code at the Rayleigh ergodic capacity (outage of one fade per image "
                     "ignored: optimistic); the image arrives exactly (the central image)")})
    report["monotone"] = {}
    curves = {f"codec r={ratio:g}": [e for e in report["split"] if e["merge_ratio"] == ratio]
              for ratio in cfg.merge_ratios}
    curves.update({f"{scheme} r=0": [e for e in report["references"] if e["scheme"] == scheme]
                   for scheme in ("analog", "digital")})
    for label, pts in curves.items():
        pts = sorted(pts, key=lambda e: e["snr_db"])
        if len(pts) > 1:
            report["monotone"][label] = monotone_within(
                [e["psnr_db"] for e in pts], [e["psnr_ci"]["low"] for e in pts], [e["psnr_ci"]["high"] for e in pts])
    report["es_wall_s"] = es_s
    _grid(rows, labels, out / "grid.png")
    _plot(report, out / "psnr_vs_snr.png")
    report["seconds"] = time.perf_counter() - start
    cfg_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    report["provenance"] = provenance(cfg_dict, {"generation": cfg.seed, "prompts": cfg.seed,
                                                 "channel_first_draw": cfg.seed + 1},
                                      extractor.name if extractor is not None else None, models=models)
    table = format_table(report)
    report["table"] = table
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    log_line(f"[demo] PSNR / SSIM vs the central image: mean +- {cfg.level:.0%} CI over {cfg.draws} channel draws "
             f"x {n} prompts (prompts fixed)\n{table}")
    for label, m in report["monotone"].items():
        log_line(f"[demo] {label}: means monotone in SNR: {m['means_monotone']}; "
                 f"no decrease outside the intervals: {m['monotone_within_intervals']}")
    log_line(f"[demo] wrote {out / 'grid.png'}, {out / 'psnr_vs_snr.png'}, {out / 'report.json'} "
             f"in {report['seconds']:.0f} s")
    for note in notes:
        log_line(f"[demo] note: {note}")
    return report
