"""Evaluate what a link does to split generation: sweeps over SNR x channel x bandwidth ratio.

For every point the latents a step split really sends (`SplitPipeline.edge`) cross a `Link` made of
one scheme and one channel, the device finishes the generation, and we measure:

* ``latent_mse`` (per real value) and ``latent_psnr = 10 log10(sigma^2 / latent_mse)`` where
  ``sigma^2`` is the average per-value variance of the sent latents (so it is directly comparable
  with the OPTA distortion ``D / sigma^2``);
* ``image_psnr`` / ``image_ssim`` of the final images against the images the same prompts and seeds
  give through an ideal link (the paper's reference);
* ``fid`` against real data images with a pluggable feature extractor (`splitldm.eval.metrics`; the
  extractor's name is stored with every number; nothing is ever downloaded);
* ``channel_uses`` and ``bits`` that crossed (from the payload history).

Statistics: every point averages over ``num_prompts`` held-out prompts and, per prompt, ``draws``
independent channel realisations (draw ``d`` uses seed ``seed + 100 + d`` at every point: common
random numbers). Each metric ``m`` of a row comes with ``m_ci`` (the **headline** 95 % interval,
`splitldm.eval.stats.nested_interval` with ``over="draws"``: prompts fixed, channel random; it shrinks
with draws and answers "do these two points differ for these prompts"), ``m_ci_prompts``
(``over="prompts"``: adds the spread between prompts) and ``m_per_prompt`` (the ``G`` per-prompt
means). ``latent_psnr``'s intervals are those of ``latent_mse`` mapped through `latent_psnr` (so the
mean stays ``10 log10(sigma^2 / mean MSE)``). A deterministic row (no channel: ``ideal``,
``separation``, a digital scheme that sends nothing) has zero-width draw intervals.

Reference rows: ``ideal`` (an ideal link: the split's own cost, images against the unsplit
pipeline's; a same-model step split is exact, so its PSNR is the 100 dB cap), and ``download``
(generate-then-download: the ES generates the whole image and sends the 8-bit image with an ideal
capacity-achieving code at the channel's capacity, Rayleigh: ergodic, outage ignored; the image
arrives exactly, so the row reports channel uses and simulated latency per image, no PSNR).
``results.json`` records the provenance (`splitldm.eval.provenance`: versions, seeds, the full
config, the feature extractor, checkpoint hashes).

Schemes: ``codec`` (a trained `SeedCodec`), ``analog`` (`AnalogLink`, uncoded, rho = 1/2),
``digital`` (`DigitalLink` with `best_digital_config` per SNR and channel at the codec's channel-use
budget), ``separation`` (ideal separation: the digital quantiser at the best rate, at or under the most
bits per value that a capacity-achieving code carries (`best_separation_bits`), delivered without error; Rayleigh uses the ergodic capacity, an
optimistic reference for one fade per image) and ``opta`` (reverse water-filling on the measured
latent covariance: a reference, not a ceiling, for non-Gaussian latents; no images).

Entry points: `sweep` (an `EvalConfig`, writes JSON + PNG; the ``splitldm evaluate`` CLI) and
`evaluate` (one `SplitPipeline` with its own link, over a list of SNRs).
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

from splitldm.eval.stats import Interval, nested_interval
from splitldm.link.analog import AnalogLink
from splitldm.link.digital import DigitalLink, best_digital_config
from splitldm.link.channels import check_snr_db, make_channel
from splitldm.link.separation import Separation as _Separation
from splitldm.link.codec import SeedCodec
from splitldm.analysis.limits import CHANNELS, latent_covariance, reverse_water_filling
from splitldm.analysis.limits import capacity as _capacity
from splitldm.analysis.limits import separation_bits_per_value as _separation_bits_per_value
from splitldm.link.payload import Payload
from splitldm.link.stack import Link, LinkContext, LinkStage
from splitldm.pipeline.split import SplitPipeline

SCHEMES = ("codec", "analog", "digital", "separation", "opta")

__all__ = ["EvalConfig", "SCHEMES", "sweep", "evaluate", "make_channel", "plot_sweep", "latent_psnr",
           "best_separation_bits", "summarize", "check_draws", "monotone_within", "PSNR_CAP_DB"]

#: Identical images have an infinite PSNR; it is capped here (dB) so that means stay finite.
PSNR_CAP_DB = 100.0

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """One reproducible evaluation run (``configs/evaluate.yaml``).

    Attributes:
        pipeline: `splitldm.pipeline.models.load_pipeline` name (zoo name such as ``"tiny"``) or folder.
        codecs: `SeedCodec` zoo names (``"seed-codec"``) or folders; each contributes its own ``rho``.
        rhos: extra bandwidth ratios for the digital / separation / OPTA baselines (complex uses
            per real latent value); the codecs' ratios are always included.
        snr_db: SNR points (dB). channels: ``awgn`` and/or ``rayleigh`` (block fading, one h per image).
        schemes: subset of `SCHEMES`.
        csi: receiver equalisation of both channels (``mmse`` as the codec was trained with).
        num_prompts, split, prompt_seed: held-out prompts (`splitldm.eval.data.prompts_for`).
        split_step, num_inference_steps, guidance_scale: the generation being split.
        draws: independent channel realisations per prompt and point (>= 2 for an interval over
            draws; 1 leaves the rows' ``*_ci`` at None). ``repeats``: its old name, still read
            (give one of the two, or both equal).
        level: confidence level of the intervals (0.95).
        covariance_samples: latents used to measure the covariance for OPTA.
        fid: ``"classifier"`` (offline classifier-FID with the zoo's ``classifier``), ``"none"``,
            or a local Inception-v3 weights file (``.pth``); fid_real: real images it compares with.
        seed: base seed of the generation noise and the channels.
        air_side_info_bits: digital side information per image besides the channel symbols
            (`splitldm.serve.wire.SIDE_INFO_BITS`: the served frame's 16-bit air header + CRC-16);
            each link row's ``total_channel_uses`` adds it at the channel's capacity (Rayleigh: ergodic).
        output: folder for ``results.json`` and ``psnr_vs_snr.png``.
    """

    pipeline: str = "tiny"
    codecs: list[str] = field(default_factory=lambda: ["seed-codec"])
    rhos: list[float] = field(default_factory=list)
    snr_db: list[float] = field(default_factory=lambda: [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    channels: list[str] = field(default_factory=lambda: ["awgn", "rayleigh"])
    schemes: list[str] = field(default_factory=lambda: list(SCHEMES))
    csi: str = "mmse"
    num_prompts: int = 32
    split: str = "test"
    prompt_seed: int = 0
    split_step: int = 4
    num_inference_steps: int = 8
    guidance_scale: float = 3.0
    draws: int | None = None
    repeats: int | None = None
    level: float = 0.95
    covariance_samples: int = 512
    fid: str = "classifier"
    fid_real: int = 256
    seed: int = 0
    air_side_info_bits: int = 32
    output: str = "runs/evaluate"

    def __post_init__(self):
        bad = [s for s in self.schemes if s not in SCHEMES]
        if bad or not self.schemes:
            raise ValueError(f"schemes: expected a non-empty subset of {SCHEMES}, got {self.schemes!r}")
        bad = [c for c in self.channels if c not in CHANNELS]
        if bad or not self.channels:
            raise ValueError(f"channels: expected a non-empty subset of {CHANNELS}, got {self.channels!r}")
        if not self.snr_db or not all(isinstance(s, (int, float)) and math.isfinite(s) for s in self.snr_db):
            raise ValueError(f"snr_db: expected a non-empty list of finite numbers (dB), got {self.snr_db!r}")
        for s in self.snr_db:  # the library's one SNR range rule (splitldm.link.channels.SNR_DB_RANGE)
            check_snr_db(s, "snr_db")
        for name in ("draws", "repeats"):
            if getattr(self, name) is not None:
                check_draws(getattr(self, name), name)
        if self.draws is not None and self.repeats is not None and self.draws != self.repeats:
            raise ValueError(f"draws: {self.draws!r} differs from its old name repeats: {self.repeats!r}; give one")
        value = self.draws if self.draws is not None else self.repeats
        name = "draws" if self.draws is not None or self.repeats is None else "repeats"
        self.draws = self.repeats = check_draws(4 if value is None else value, name)
        if isinstance(self.level, bool) or not isinstance(self.level, (int, float)) or not 0 < self.level < 1:
            raise ValueError(f"level: expected a confidence level in (0, 1), got {self.level!r}")
        for name in ("num_prompts", "covariance_samples", "num_inference_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if isinstance(self.air_side_info_bits, bool) or not isinstance(self.air_side_info_bits, int) \
                or self.air_side_info_bits < 0:
            raise ValueError(f"air_side_info_bits: expected an int >= 0, got {self.air_side_info_bits!r}")
        if not all(isinstance(r, (int, float)) and 0 < r <= 4 for r in self.rhos):
            raise ValueError(f"rhos: expected numbers in (0, 4], got {self.rhos!r}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "EvalConfig":
        """Read a YAML file of `EvalConfig` fields (unknown keys -> ValueError), then apply ``overrides``."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: no such file {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config: {path} must hold a mapping of EvalConfig fields")
        if overrides.get("draws") is not None and overrides.get("repeats") is None:
            data.pop("repeats", None)  # an override of draws replaces the file's old-named value
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


# ------------------------------------------------------------------------------------ helpers
def best_separation_bits(latents: torch.Tensor, max_bits: int) -> int:
    """The ideal separation's operating point: the bits per value in ``[0, max_bits]`` whose quantiser
    (`splitldm.link.separation.Separation`) gives ``latents`` ``(B, *S)`` the least MSE.

    The capacity allows ``max_bits``, but the per-value quantiser over a sample's ``[min, max]`` can be
    worse at 1 bit than sending nothing (the mean), so the encoder, which sees the source, picks the
    best rate at or under the capacity, as the digital baseline picks its operating point.
    """
    if isinstance(max_bits, bool) or not isinstance(max_bits, int) or max_bits < 0:
        raise ValueError(f"max_bits: expected an int >= 0, got {max_bits!r}")
    x = Payload(tensors={"latents": latents.float()}, meta={}, primary=("latents",))

    def mse(b: int) -> float:
        sent = _Separation(b).send(x, LinkContext(), torch.Generator().manual_seed(0))
        return float((sent.tensors["latents"] - x.tensors["latents"]).pow(2).mean())

    return min(range(max_bits + 1), key=lambda b: (mse(b), -b))


def latent_psnr(mse: float, variance: float) -> float:
    """``10 log10(variance / mse)`` in dB (inf for mse = 0)."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(variance / mse)


def check_draws(value: Any, name: str = "draws", minimum: int = 1) -> int:
    """``value`` as a number of channel draws: an int >= ``minimum``; else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum} (channel draws per prompt), got {value!r}")
    return int(value)


def summarize(values, level: float = 0.95, deterministic: bool = False) -> dict[str, Any]:
    """Mean and intervals of a ``[G prompts, D draws]`` table of one metric (units of the values).

    Returns ``{"mean", "ci", "ci_prompts", "per_prompt"}``: ``ci`` is the headline interval over
    channel draws (`nested_interval` ``over="draws"``; zero-width when ``deterministic``, i.e. the
    row has no channel randomness; None when ``D == 1`` otherwise), ``ci_prompts`` the interval over
    prompts (None for one prompt), both as `Interval.to_dict`; ``per_prompt`` the ``G`` row means.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"values: expected a [prompts, draws] table, got shape {x.shape}")
    g, d = x.shape
    m = float(x.mean())
    if d >= 2:
        ci = nested_interval(x, level, over="draws").to_dict()
    elif deterministic:
        ci = Interval(m, m, m, int(x.size), float(level), "nested-draws").to_dict()
    else:
        ci = None
    ci_prompts = nested_interval(x, level, over="prompts").to_dict() if g >= 2 else None
    return {"mean": m, "ci": ci, "ci_prompts": ci_prompts, "per_prompt": [float(v) for v in x.mean(axis=1)]}


def _psnr_interval(ci: dict | None, variance: float) -> dict | None:
    """An interval of the latent MSE mapped through `latent_psnr` (decreasing: the ends swap)."""
    if ci is None:
        return None
    lp = lambda mse: min(PSNR_CAP_DB, latent_psnr(mse, variance))  # noqa: E731
    return Interval(lp(ci["mean"]), lp(ci["high"]), lp(max(ci["low"], 0.0)), ci["n"], ci["level"],
                    ci["method"]).to_dict()


def monotone_within(means: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict[str, Any]:
    """Is a curve (points in increasing SNR) monotone non-decreasing, and within its intervals?

    ``means_monotone``: every mean >= the previous one. ``monotone_within_intervals``: no point's
    interval lies wholly below the previous point's (no decrease the intervals resolve).
    ``decreases``: indices ``i`` where ``means[i] < means[i - 1]``.
    """
    dec = [i for i in range(1, len(means)) if means[i] < means[i - 1]]
    sig = [i for i in dec if highs[i] < lows[i - 1]]
    return {"means_monotone": not dec, "monotone_within_intervals": not sig, "decreases": dec,
            "significant_decreases": sig}


def _images_pt(images) -> torch.Tensor:
    return images.float().clamp(0, 1)


def _feature_extractor(spec: str):
    from splitldm.eval import metrics

    if spec in ("none", "", None):
        return None
    if spec == "classifier":
        try:
            return metrics.ClassifierFeatures("classifier")
        except (FileNotFoundError, ValueError) as exc:  # no shipped classifier: FID is skipped, said so
            return _Unavailable(f"classifier-FID unavailable: {exc}")
    return metrics.InceptionFeatures(spec)


@dataclass
class _Unavailable:
    reason: str


# ------------------------------------------------------------------------------------ core
class _Bench:
    """The fixed part of a sweep: pipeline, prompts, sent payload, ideal-link images, real images."""

    def __init__(self, pipe, prompts: list[str], split_step: int, num_inference_steps: int, guidance_scale: float,
                 seed: int, extractor=None, real_images: torch.Tensor | None = None):
        self.split = SplitPipeline(pipe, split_step=split_step)
        self.gen_kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        self.sent = self.split.edge(prompts, generator=g, **self.gen_kwargs)
        self.reference = _images_pt(self.split.device(self.sent, output_type="pt"))
        self.latents = self.sent.tensors["latents"].float()
        self.extractor = extractor if not isinstance(extractor, _Unavailable) else None
        self.real_images = real_images
        self.fid_reference = None
        from splitldm.eval.metrics import MIN_FID_IMAGES, fid

        if self.extractor is not None and real_images is not None and len(self.reference) < MIN_FID_IMAGES:
            logger.warning("FID skipped: %d image(s); FID needs at least %d", len(self.reference), MIN_FID_IMAGES)
            self.extractor = None
        if self.extractor is not None and real_images is not None:
            self.fid_reference = fid(real_images, self.reference, self.extractor)

    def run(self, stages: Sequence[LinkStage], snr_db: float, generator: torch.Generator,
            images: bool = True) -> dict[str, Any]:
        """Send the payload through ``Link(stages)`` at ``snr_db``; latent and image metrics."""
        link = Link(list(stages))
        received = link(self.sent, generator=generator, context={"snr_db": float(snr_db)})
        lat = received.tensors["latents"].float()
        out = {"latent_se": (lat - self.latents).pow(2).flatten(1).mean(1), "summary": Link.summary(received)}
        if images:
            out["images"] = _images_pt(self.split.device(received, output_type="pt"))
        return out


def _point(bench: _Bench, stages_fn: Callable[[], list[LinkStage]], snr: float, repeats: int, seed: int,
           variance: float, images: bool = True, level: float = 0.95, deterministic: bool = False,
           reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Metrics over ``repeats`` channel draws per prompt (seeds ``seed .. seed + repeats - 1``): means,
    intervals and per-prompt means (see the module docstring). ``reference``: the images the PSNR /
    SSIM are measured against (default ``bench.reference``, the ideal-link images)."""
    from splitldm.eval.metrics import fid, psnr, ssim

    reference = bench.reference if reference is None else reference
    ses, ps, ss, imgs, summary = [], [], [], [], None
    for r in range(repeats):
        res = bench.run(stages_fn(), snr, torch.Generator().manual_seed(seed + r), images)
        ses.append(res["latent_se"])
        summary = res["summary"]
        if images:
            imgs.append(res["images"])
            p = psnr(res["images"], reference)
            ps.append(p.clamp(max=PSNR_CAP_DB))  # identical images give +inf; cap so means stay finite
            ss.append(ssim(res["images"], reference))
    se = summarize(torch.stack(ses, 1).double().numpy(), level, deterministic)  # [G, D]
    mse = se["mean"]
    row = {"latent_mse": mse, "latent_psnr": min(PSNR_CAP_DB, latent_psnr(mse, variance)),
           "latent_mse_ci": se["ci"], "latent_mse_ci_prompts": se["ci_prompts"],
           "latent_psnr_ci": _psnr_interval(se["ci"], variance),
           "latent_psnr_ci_prompts": _psnr_interval(se["ci_prompts"], variance),
           "latent_mse_per_prompt": se["per_prompt"],
           "draws": repeats, "channel_uses": summary["channel_uses"], "bits": summary["bits"]}
    if images:
        for key, tables in (("image_psnr", ps), ("image_ssim", ss)):
            st = summarize(torch.stack(tables, 1).double().numpy(), level, deterministic)
            row[key], row[f"{key}_ci"], row[f"{key}_ci_prompts"] = st["mean"], st["ci"], st["ci_prompts"]
            row[f"{key}_per_prompt"] = st["per_prompt"]
        if bench.extractor is not None and bench.real_images is not None:
            row["fid"] = fid(bench.real_images, torch.cat(imgs), bench.extractor)["fid"]
    return row


def sweep(config: EvalConfig | dict, pipe=None, log: Callable[[str], None] | None = None,
          extractor=None, progress: bool = False) -> dict[str, Any]:
    """Run the sweep of ``config``; write ``results.json`` and ``psnr_vs_snr.png`` to ``config.output``.

    ``pipe`` overrides ``config.pipeline`` (an already loaded pipeline); ``extractor`` overrides
    ``config.fid`` with any `splitldm.eval.metrics.FeatureExtractor` (a callable with a ``name``).
    Progress lines go to this module's `logging` logger (INFO); ``log``, if given, receives them too
    (e.g. ``print``). ``progress`` shows a tqdm bar over the channel x SNR points (on stderr).

    Returns the results dict: ``config``, ``reference`` (variance, FID of the ideal link, extractor),
    ``rows`` (one per scheme x channel x rho x SNR) and ``timing_s``.
    """
    from splitldm.eval.data import prompts_for, render_batch
    from splitldm.pipeline.models import load_pipeline

    cfg = config if isinstance(config, EvalConfig) else EvalConfig(**config)
    t0 = time.time()
    def say(message: str) -> None:
        logger.info(message)
        if log is not None:
            log(message)

    pipe = load_pipeline(cfg.pipeline) if pipe is None else pipe
    codecs = [SeedCodec.from_pretrained(p) for p in cfg.codecs] if "codec" in cfg.schemes else []
    rhos = sorted({float(c.config.rho) for c in codecs} | {float(r) for r in cfg.rhos})
    if not rhos:
        raise ValueError("rhos: no bandwidth ratio to evaluate (give codecs or rhos)")

    prompts = prompts_for(cfg.num_prompts, cfg.split, cfg.prompt_seed)
    extractor = _feature_extractor(cfg.fid) if extractor is None else extractor
    real = None
    if extractor is not None and not isinstance(extractor, _Unavailable):
        real, _, _ = render_batch(range(cfg.fid_real), split=cfg.split, seed=cfg.prompt_seed)
    bench = _Bench(pipe, prompts, cfg.split_step, cfg.num_inference_steps, cfg.guidance_scale, cfg.seed,
                   extractor, real)
    shape = tuple(bench.latents.shape[1:])
    n_values = math.prod(shape)

    # covariance of what crosses, from more prompts than the sweep uses (OPTA needs the spectrum)
    cov_prompts = prompts_for(cfg.covariance_samples, cfg.split, cfg.prompt_seed + 1)
    cov_payload = bench.split.edge(cov_prompts, generator=torch.Generator().manual_seed(cfg.seed + 1),
                                   **bench.gen_kwargs)
    cov = latent_covariance(cov_payload.tensors["latents"].float(), mode="full")
    variance = (float(bench.latents.var(dim=0, unbiased=False).mean()) if len(bench.latents) > 1
                else float(bench.latents.var()))  # one prompt: no spread across the batch to measure
    say(f"[evaluate] {len(prompts)} prompts, latents {shape}, variance {variance:.4g}; "
        f"covariance from {cov.num_samples} latents (shrinkage {cov.shrinkage:.3f})")

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    digital_ok = True
    D, level = cfg.draws, cfg.level
    if D < 2:
        notes.append("draws = 1: no interval over channel draws (the rows' *_ci are None); use draws >= 2")

    def add(scheme, channel, rho, snr, row, **extra):
        row = {"scheme": scheme, "channel": channel, "rho": rho, "snr_db": None if snr is None else float(snr),
               **extra, **row}
        if scheme in ("codec", "analog", "digital", "separation") and snr is not None and row.get("channel_uses") is not None:
            # ``channel_uses`` counts the whole batch of prompts; per image, with the served frame's side
            # information (no merging in a sweep, so no index map) at the channel's capacity:
            per_image = row["channel_uses"] / len(prompts)
            row["channel_uses_per_image"] = per_image
            row["side_info_bits_per_image"] = cfg.air_side_info_bits
            row["total_channel_uses_per_image"] = per_image + cfg.air_side_info_bits / float(_capacity(snr, channel))
        rows.append(row)
        pm = lambda key: (f" +- {row[key + '_ci']['half_width']:.2f}"  # noqa: E731
                          if row.get(key + "_ci") is not None else "")
        where = (f"{channel:8s} (no channel)" if snr is None else
                 f"{channel:8s} snr={snr:5.1f} dB" if rho is None else f"{channel:8s} rho={rho:.4g} snr={snr:5.1f} dB")
        msg = f"  {scheme:10s} {where}: "
        if row.get("latent_psnr") is not None:
            msg += f"latent PSNR {row['latent_psnr']:6.2f}{pm('latent_psnr')} dB, "
        if row.get("image_psnr") is not None:
            msg += f"image PSNR {row['image_psnr']:6.2f}{pm('image_psnr')} dB, SSIM {row['image_ssim']:.3f}"
        if scheme == "download":
            msg += f"{row['channel_uses']:.0f} channel uses per image"
        say(msg)

    seed = cfg.seed + 100
    from tqdm.auto import tqdm

    # the ideal link: the split's own cost, against the unsplit pipeline's images (same prompts and seed)
    central = _images_pt(pipe(prompts, generator=torch.Generator().manual_seed(cfg.seed), output_type="pt",
                              **bench.gen_kwargs).images)
    add("ideal", "none", None, None, _point(bench, lambda: [], 0.0, 1, seed, variance, level=level,
                                            deterministic=True, reference=central),
        note="ideal link, images against the unsplit pipeline's (a same-model step split is exact: 100 dB cap)")
    image_bits = int(math.prod(bench.reference.shape[1:])) * 8
    try:
        from splitldm.analysis.costs import download_cost, model_flops

        flops = model_flops(cfg.pipeline) if isinstance(cfg.pipeline, str) else None
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        flops = None
        notes.append(f"download latency not simulated: {exc}")

    bar = tqdm(total=len(cfg.channels) * len(cfg.snr_db), desc="evaluate", unit="point", disable=not progress)
    for channel in cfg.channels:
        for snr in cfg.snr_db:
            bar.update(1)
            bar.set_postfix_str(f"{channel} {snr:g} dB")
            for rho in rhos:
                k = max(1, math.floor(rho * n_values + 1e-9))
                if "opta" in cfg.schemes:
                    wf = reverse_water_filling(cov.eigenvalues, rho=rho, snr_db=snr, channel=channel)
                    add("opta", channel, rho, snr, {"latent_mse": wf.mse,
                                                    "latent_psnr": latent_psnr(wf.mse, cov.variance),
                                                    "channel_uses": k, "bits": None})
                for codec in (c for c in codecs if float(c.config.rho) == rho):
                    add("codec", channel, rho, snr,
                        _point(bench, lambda: [codec, make_channel(channel, csi=cfg.csi)], snr, D, seed,
                               variance, level=level))
                if "digital" in cfg.schemes and digital_ok:
                    try:
                        dcfg = best_digital_config(snr, k, n_values, covariance=cov,
                                                   channel="awgn" if channel == "awgn" else "rayleigh-block")
                    except ValueError as exc:  # no measured MCS thresholds in this install
                        digital_ok = False
                        notes.append(f"digital skipped: {exc}")
                        say(f"  digital skipped: {exc}")
                        continue
                    info = {"bits_per_value": dcfg.bits_per_value, "code_rate": dcfg.code_rate,
                            "bits_per_symbol": dcfg.bits_per_symbol, "num_components": dcfg.num_components,
                            "codeword_bits": dcfg.codeword_bits}
                    if dcfg.bits_per_value == 0:  # no scheme fits the budget: nothing sent, receiver uses the mean
                        row = _point(bench, lambda: [_Separation(0)], snr, 1, seed, variance, level=level,
                                     deterministic=True)
                        row["channel_uses"] = 0
                    else:
                        row = _point(bench, lambda: [DigitalLink(config=dcfg, covariance=cov),
                                                     make_channel(channel, csi=cfg.csi)], snr, D, seed, variance,
                                     level=level)
                    add("digital", channel, rho, snr, row, config=info)
                if "separation" in cfg.schemes:
                    b_max = _separation_bits_per_value(k, n_values, snr, channel)
                    b = best_separation_bits(bench.latents, b_max)
                    row = _point(bench, lambda: [_Separation(b)], snr, 1, seed, variance, level=level,
                                 deterministic=True)
                    row["channel_uses"] = k
                    add("separation", channel, rho, snr, row, config={"bits_per_value": b, "max_bits_per_value": b_max})
            if "analog" in cfg.schemes:
                add("analog", channel, 0.5, snr,
                    _point(bench, lambda: [AnalogLink(), make_channel(channel, csi=cfg.csi)], snr, D, seed,
                           variance, level=level))
            uses = image_bits / float(_capacity(snr, channel))
            add("download", channel, None, snr, {
                "image_psnr": None, "latent_psnr": None, "channel_uses": uses, "bits": image_bits,
                "simulated_latency_s": None if flops is None else download_cost(
                    flops, cfg.num_inference_steps, float(snr), image_bits=image_bits).latency_s},
                note=("generate-then-download: the 8-bit image at the channel's capacity (Rayleigh: ergodic, "
                      "outage ignored); exact, so no PSNR"))
    bar.close()
    monotone = {}
    for key in sorted({(r["scheme"], r["channel"], r["rho"]) for r in rows if r.get("image_psnr_ci")},
                      key=str):
        pts = sorted((r for r in rows if (r["scheme"], r["channel"], r["rho"]) == key and r["snr_db"] is not None),
                     key=lambda r: r["snr_db"])
        if len(pts) > 1:
            monotone[f"{key[0]} {key[1]} rho={key[2]:g}"] = monotone_within(
                [r["image_psnr"] for r in pts], [r["image_psnr_ci"]["low"] for r in pts],
                [r["image_psnr_ci"]["high"] for r in pts])

    results = {
        "config": asdict(cfg),
        "latent_shape": list(shape),
        "reference": {
            "latent_variance": variance,
            "covariance_variance": cov.variance,
            "covariance_samples": cov.num_samples,
            "fid_ideal_link": None if bench.fid_reference is None else bench.fid_reference["fid"],
            "fid_extractor": (bench.extractor.name if bench.extractor is not None
                              else getattr(extractor, "reason", "none")),
            "image_metrics_against": "same prompts and seeds through an ideal link",
        },
        "statistics": {
            "draws": D, "level": level, "prompts": len(prompts),
            "headline": ("*_ci: nested-draws (prompts fixed, channel random; t with G(D-1) df); "
                         "*_ci_prompts: nested-prompts (t over the G per-prompt means)"),
        },
        "rows": rows,
        "monotone": monotone,
        "notes": notes,
        "timing_s": round(time.time() - t0, 2),
    }
    from splitldm import zoo
    from splitldm.eval.provenance import provenance

    used = [cfg.pipeline, *(cfg.codecs if "codec" in cfg.schemes else [])]
    if bench.extractor is not None and cfg.fid == "classifier":
        used.append("classifier")
    results["provenance"] = provenance(
        asdict(cfg), {"generation": cfg.seed, "covariance": cfg.seed + 1, "channel_first_draw": seed,
                      "prompts": cfg.prompt_seed},
        results["reference"]["fid_extractor"] if bench.extractor is not None else None,
        models=[m for m in used if zoo.is_zoo_name(m)])
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    plot_sweep(results, out / "psnr_vs_snr.png")
    say(f"[evaluate] wrote {out / 'results.json'} and {out / 'psnr_vs_snr.png'} in {results['timing_s']} s")
    return results


def plot_sweep(results: dict[str, Any], path: str | Path) -> Path:
    """PNG: latent PSNR (top, with the OPTA curve) and image PSNR (bottom) vs SNR, one column per channel.

    Each curve is drawn at its means with the headline interval (``*_ci``, over channel draws) as error
    bars and a shaded band; the reference rows without an SNR curve (``ideal``, ``download``) are
    not drawn (they are in ``results.json``).
    """
    from splitldm.eval.plotting import new_figure, save_figure

    rows = [r for r in results["rows"] if r["scheme"] in SCHEMES]
    channels = sorted({r["channel"] for r in rows}, key=lambda c: CHANNELS.index(c))
    fig, axes = new_figure(2, len(channels), figsize=(5.5 * len(channels), 7.5))
    styles = {"codec": "o-", "digital": "s--", "separation": "^:", "analog": "d-.", "opta": "k-"}
    cap = 60.0
    for j, ch in enumerate(channels):
        for i, metric in enumerate(("latent_psnr", "image_psnr")):
            ax = axes[i][j]
            keys = sorted({(r["scheme"], r["rho"]) for r in rows if r["channel"] == ch and r.get(metric) is not None},
                          key=lambda t: (SCHEMES.index(t[0]), t[1]))
            for scheme, rho in keys:
                pts = sorted((r for r in rows if r["channel"] == ch and r["scheme"] == scheme and r["rho"] == rho
                              and r.get(metric) is not None), key=lambda r: r["snr_db"])
                xs = [r["snr_db"] for r in pts]
                ys = [min(r[metric], cap) for r in pts]
                label = f"{'OPTA (RWF)' if scheme == 'opta' else scheme} rho={rho:.3g}"
                line, = ax.plot(xs, ys, styles.get(scheme, "o-"), label=label,
                                alpha=0.6 if scheme == "opta" and rho != keys[0][1] else 1.0)
                cis = [r.get(f"{metric}_ci") for r in pts]
                if all(c is not None for c in cis):
                    lo = [min(c["low"], cap) for c in cis]
                    hi = [min(c["high"], cap) for c in cis]
                    ax.errorbar(xs, ys, yerr=[[y - l for y, l in zip(ys, lo)], [h - y for y, h in zip(ys, hi)]],
                                fmt="none", ecolor=line.get_color(), capsize=3)
                    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
            ax.set_xlabel("SNR (dB)")
            level = results.get("statistics", {}).get("level", 0.95)
            ax.set_ylabel(("latent PSNR (dB, re variance)" if metric == "latent_psnr"
                           else "image PSNR vs ideal link (dB)") + f", {level:.0%} CI")
            ax.set_title(f"{ch}: {metric.replace('_', ' ')}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=110)


def evaluate(split: SplitPipeline, prompts: Sequence[str], snr_db: Sequence[float], *, repeats: int = 1,
             seed: int = 0, level: float = 0.95, **gen_kwargs) -> list[dict[str, Any]]:
    """Measure ``split``'s own link at each SNR (its channel stage must take the SNR from the context,
    i.e. be built with ``snr_db=None``).

    Returns one dict per SNR: ``snr_db``, ``latent_mse``, ``latent_psnr``, ``image_psnr``,
    ``image_ssim`` (against the same prompts and seed through an ideal link), ``channel_uses``, ``bits``,
    and per metric its intervals and per-prompt means as in `sweep`'s rows (``repeats`` channel draws
    per prompt; >= 2 for the intervals over draws).
    ``gen_kwargs`` go to `SplitPipeline.edge` (``num_inference_steps``, ``guidance_scale``, ...).
    """
    repeats = check_draws(repeats, "repeats")
    if not isinstance(split, SplitPipeline):
        raise TypeError(f"split: expected a SplitPipeline, got {type(split).__name__}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts: expected a non-empty list of strings")
    ideal = SplitPipeline(split.pipe, split_step=split.split_step, split_stage=split.split_stage,
                          condition=split.condition, device_pipe=split.device_pipe)
    bench = _Bench.__new__(_Bench)
    bench.split, bench.seed, bench.gen_kwargs = ideal, seed, gen_kwargs
    bench.sent = ideal.edge(list(prompts), generator=torch.Generator().manual_seed(seed), **gen_kwargs)
    bench.reference = _images_pt(ideal.device(bench.sent, output_type="pt"))
    bench.latents = bench.sent.tensors["latents"].float()
    bench.extractor, bench.real_images, bench.fid_reference = None, None, None
    variance = float(bench.latents.var(dim=0, unbiased=False).mean()) if len(prompts) > 1 else float(bench.latents.var())
    out = []
    for snr in snr_db:
        row = _point(bench, lambda: list(split.link.stages), float(snr), repeats, seed + 100, variance, level=level)
        out.append({"snr_db": float(snr), **row})
    return out
