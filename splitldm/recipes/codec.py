"""Lightning recipe for the seed codec (`splitldm.link.codec.SeedCodec`).

    python -m splitldm.recipes.codec fit --config configs/codec.yaml
    python -m splitldm.recipes.codec fit --config configs/codec.yaml --ckpt_path last      # resume
    python -m splitldm.recipes.codec fit --config configs/codec.yaml \
        --trainer.accelerator gpu --trainer.devices 8 --trainer.num_nodes 2 --trainer.strategy ddp

Training pairs are latents a pipeline really produces (`CodecLatentData`): VAE latents of an image
data set (the embedded "shapes" set by default) and the latents of the denoising trajectory at the
split steps (what crosses the link on a step split). They are computed once per configuration and
cached on disk as safetensors, so epochs are cheap. `CodecModule` trains the codec through a
differentiable channel (AWGN and/or Rayleigh block fading, randomised per sample) with the SNR drawn
uniformly per sample; the loss is latent MSE, plus optionally the MSE of the images the frozen VAE
decodes from the reconstructed and the true latents.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from splitldm.link.channels import MixedBlockChannel, make_channel  # noqa: F401  (re-exported for 0.1 code)
from splitldm.link.codec import SeedCodec
from splitldm.recipes.resume import shuffled_loader

KIND_VAE = -1  # "kind" column: -1 = VAE latent of a data image, k >= 0 = trajectory latent after step k


# ============================================================================ data
def _fingerprint(pipeline: str) -> str:
    """Identifies the weights behind ``pipeline``: sizes + mtimes of a local checkpoint's files."""
    from splitldm.pipeline.models import SHIPPED
    from splitldm.zoo import checkpoints_dir

    path = checkpoints_dir() / SHIPPED[pipeline] if pipeline in SHIPPED else Path(pipeline)
    if not path.is_dir():
        if pipeline.endswith("-random"):  # seeded random weights: identified by the architecture spec
            from dataclasses import asdict as _asdict

            from splitldm.pipeline.models import get_spec

            return hashlib.sha256(json.dumps(_asdict(get_spec(pipeline)), sort_keys=True, default=str)
                                  .encode()).hexdigest()[:16]
        return pipeline
    stats = sorted((str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime))
                   for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


@torch.no_grad()
def trajectory_latents(pipe, prompts: Sequence[str], num_inference_steps: int, split_steps: Sequence[int],
                       guidance_scale: float, generator: torch.Generator, batch_size: int = 64
                       ) -> dict[int, torch.Tensor]:
    """Latents of the pipeline's own denoising loop (`splitldm.pipeline.sampling`) after each split step.

    Returns ``{k: latents (N, C, h, w)}`` taken after ``k`` of ``num_inference_steps`` steps (k = 0 is
    the initial noise, k = T the finished latent the VAE decodes): what a step split at ``k`` sends.
    """
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    from splitldm.pipeline import sampling

    steps = sorted(set(int(s) for s in split_steps))
    if not steps or steps[0] < 0 or steps[-1] > num_inference_steps:
        raise ValueError(f"split_steps: expected values in [0, {num_inference_steps}], got {list(split_steps)}")
    out: dict[int, list[torch.Tensor]] = {k: [] for k in steps}
    verbosity = hf_logging.get_verbosity(), df_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # long captions are truncated by small CLIPs: warned once per batch
    df_logging.set_verbosity_error()
    try:
        for start in range(0, len(prompts), batch_size):
            settings = sampling.make_settings(pipe, list(prompts[start:start + batch_size]),
                                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
            state = sampling.prepare(pipe, settings, generator=generator)
            for k in steps:
                sampling.denoise(pipe, state, stop=k)
                out[k].append(state.latents.detach().float().cpu().clone())
    finally:
        hf_logging.set_verbosity(verbosity[0])
        df_logging.set_verbosity(verbosity[1])
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def vae_latents(pipe, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Mean VAE latents (N, C, h, w) of images (N, 3, H, W) in [0, 1], times the VAE scaling factor."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size] * 2 - 1
        out.append(pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor)
    return torch.cat(out)


def noised_latents(scheduler, latents: torch.Tensor, num_inference_steps: int, steps: Sequence[int],
                   generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Forward-noised latents ``q(x_t | x_0)`` at the noise level a sampler reaches after ``k`` steps.

    After ``k`` of ``num_inference_steps`` steps a DDIM-type sampler holds latents at timestep
    ``timesteps[k]`` (clean at ``k = T``); a well-trained model's trajectory has these marginals, so
    this is a cheap proxy for `trajectory_latents` when only the VAE is available.
    """
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(num_inference_steps)
    out = {}
    for k in sorted(set(int(s) for s in steps)):
        if not 0 <= k <= num_inference_steps:
            raise ValueError(f"noised_steps: expected values in [0, {num_inference_steps}], got {k}")
        if k == num_inference_steps:
            out[k] = latents.clone()
            continue
        noise = torch.randn(latents.shape, generator=generator)
        t = sched.timesteps[k].reshape(1).long()
        out[k] = sched.add_noise(latents, noise, t.expand(latents.shape[0]))
    return out


def build_latent_set(pipeline: str, dataset: str, split: str, num_examples: int, split_steps: Sequence[int],
                     num_inference_steps: int, guidance_scale: float, seed: int, include_vae: bool = True,
                     vae_path: str | None = None, noised_steps: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """The training pairs: ``latents`` (N, C, h, w) float32 and ``kind`` (N,) int64 (see `KIND_VAE`;
    forward-noised latents at step ``k`` are marked ``100 + k``)."""
    from splitldm.eval.data import load_image_caption_dataset, render_batch
    from splitldm.pipeline.models import load_pipeline

    pipe = load_pipeline(pipeline)
    if vae_path:
        from splitldm.recipes.vae import load_vae

        pipe.vae = load_vae(vae_path).eval()
    if dataset == "shapes":
        images, captions, _ = render_batch(range(num_examples), split=split, seed=seed)
    else:
        data = load_image_caption_dataset(dataset, split=split, image_size=pipe.vae.config.sample_size,
                                          max_examples=num_examples)
        images, captions = data.images, data.captions
    parts, kinds = [], []
    g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    if include_vae or noised_steps:
        lat = vae_latents(pipe, images)
        if include_vae:
            parts.append(lat)
            kinds.append(torch.full((lat.shape[0],), KIND_VAE))
        for k, noisy in noised_latents(pipe.scheduler, lat, num_inference_steps, noised_steps, g).items():
            parts.append(noisy)
            kinds.append(torch.full((noisy.shape[0],), 100 + k))
    if split_steps:
        traj = trajectory_latents(pipe, captions, num_inference_steps, split_steps, guidance_scale, g)
        for k, lat in traj.items():
            parts.append(lat)
            kinds.append(torch.full((lat.shape[0],), k))
    if not parts:
        raise ValueError("split_steps: nothing to train on (no split_steps, noised_steps or include_vae)")
    return {"latents": torch.cat(parts).float().contiguous(), "kind": torch.cat(kinds).long()}


class CodecLatentData(L.LightningDataModule):
    """Latents a pipeline produces, cached as safetensors (one file per configuration and split).

    Args:
        pipeline: `splitldm.pipeline.models.load_pipeline` name or folder (``tiny``, ``tiny-random``, a path).
        dataset: ``"shapes"`` (embedded) or a local imagefolder / hub id for `load_image_caption_dataset`.
        num_train, num_val: images (and prompts) per split; each yields ``1 + len(split_steps)`` latents.
        split_steps: denoising steps after which trajectory latents are taken (empty: VAE latents only).
        num_inference_steps, guidance_scale: the sampler that makes the trajectories.
        include_vae: also train on VAE latents of the data images.
        vae_path: a diffusers AutoencoderKL folder that replaces the pipeline's VAE.
        noised_steps: also train on forward-noised VAE latents at the noise level after these steps
            (`noised_latents`; a proxy for trajectory latents when only the VAE is trained).
        balance_kinds: weight each training latent by 1 / (per-value variance of its kind), so that
            kinds of very different scale (clean vs noisy latents) count alike in the MSE (the loss
            then weighs relative, PSNR-like, error).
        cache_dir: where the safetensors caches go.
    """

    def __init__(self, pipeline: str = "tiny", dataset: str = "shapes", num_train: int = 2048, num_val: int = 256,
                 split_steps: list[int] = [2, 4, 6], num_inference_steps: int = 8, guidance_scale: float = 3.0,
                 include_vae: bool = True, vae_path: str | None = None, noised_steps: list[int] = [],
                 balance_kinds: bool = False, batch_size: int = 128, cache_dir: str = "runs/codec-cache",
                 seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.train_set: dict[str, torch.Tensor] | None = None
        self.val_set: dict[str, torch.Tensor] | None = None

    def cache_path(self, split: str) -> Path:
        hp = dict(self.hparams)
        keys = ("pipeline", "dataset", "split_steps", "num_inference_steps", "guidance_scale", "include_vae", "seed",
                "vae_path", "noised_steps")
        ident = {k: hp[k] for k in keys}
        ident.update(split=split, num=hp["num_train"] if split == "train" else hp["num_val"],
                     weights=_fingerprint(hp["pipeline"]),
                     vae_weights=_fingerprint(hp["vae_path"]) if hp["vae_path"] else None)
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        return Path(hp["cache_dir"]) / f"latents-{split}-{digest}.safetensors"

    def _load_or_build(self, split: str) -> dict[str, torch.Tensor]:
        path = self.cache_path(split)
        if path.exists():
            return load_file(str(path))
        data = self._build(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(data, str(tmp), metadata={"config": json.dumps(dict(self.hparams), sort_keys=True, default=str)})
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
        return data

    def _build(self, split: str) -> dict[str, torch.Tensor]:
        hp = self.hparams
        return build_latent_set(hp.pipeline, hp.dataset, split, hp.num_train if split == "train" else hp.num_val,
                                hp.split_steps, hp.num_inference_steps, hp.guidance_scale, hp.seed, hp.include_vae,
                                hp.vae_path, hp.noised_steps)

    def prepare_data(self) -> None:  # runs once per node: fill the cache
        self._load_or_build("train")
        self._load_or_build("test")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._load_or_build("train")
            self.val_set = self._load_or_build("test")

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training latents (C,), (C,)."""
        self.setup()
        lat = self.train_set["latents"]
        return lat.mean(dim=(0, 2, 3)), lat.std(dim=(0, 2, 3))

    def weights(self) -> torch.Tensor:
        """Per-latent loss weights (N,): 1 everywhere, or 1 / kind variance (mean 1) with ``balance_kinds``."""
        lat, kind = self.train_set["latents"], self.train_set["kind"]
        w = torch.ones(kind.shape[0])
        if self.hparams.balance_kinds:
            for k in kind.unique():
                sel = kind == k
                w[sel] = 1.0 / lat[sel].var(dim=0).mean().clamp_min(1e-8)
            w = w / w.mean()
        return w

    def train_dataloader(self):
        ds = TensorDataset(self.train_set["latents"], self.train_set["kind"], self.weights())
        return shuffled_loader(self, ds, self.hparams.batch_size, self.hparams.seed, drop_last=True,
                               num_workers=self.hparams.num_workers)  # resumable mid-epoch

    def val_dataloader(self):
        ds = TensorDataset(self.val_set["latents"], self.val_set["kind"])
        return DataLoader(ds, batch_size=max(self.hparams.batch_size, 256), num_workers=self.hparams.num_workers)


# ============================================================================ model
@dataclass
class CodecConfig:
    """`SeedCodec` architecture (typed, so the CLI parses ``--model.codec.rho 0.25``)."""

    in_channels: int = 4
    rho: float = 0.125
    hidden_channels: int = 64
    num_blocks: int = 2
    downsample: int = 1
    sample_size: int = 8
    condition: str = "csi"


class CodecModule(L.LightningModule):
    """Trains a `SeedCodec` through `MixedBlockChannel` (`make_channel`).

    Args:
        codec: `CodecConfig` (or a dict of `SeedCodec` keyword arguments).
        channels: channel kinds mixed per sample (``awgn``, ``rayleigh``); csi: receiver equalisation.
        snr_range_db: per-sample SNR ~ U[low, high] dB during training.
        lr, weight_decay, max_lr_steps: AdamW with cosine decay over ``max_lr_steps`` (0: constant).
        image_loss_weight: weight of the decoded-image MSE through the frozen VAE of ``pipeline``.
        pipeline: the pipeline whose VAE decodes (only loaded when ``image_loss_weight > 0``).
        val_snr_db: SNRs (dB) at which validation reports latent PSNR per channel kind.
        export_dir: when set, the trained codec is written there (`SeedCodec.save_pretrained`) at the end.
        seed: seeds the channel noise (step ``i`` uses seed ``seed + i``: resumable, reproducible).
        init_from: a `SeedCodec` folder or zoo name (``"seed-codec"``) to start from (fine-tuning; its
            architecture and statistics win).
    """

    def __init__(self, codec: CodecConfig | dict | None = None, channels: list[str] = ["awgn", "rayleigh"], csi: str = "mmse",
                 snr_range_db: list[float] = [0.0, 20.0], lr: float = 1e-3, weight_decay: float = 0.0,
                 max_lr_steps: int = 0, image_loss_weight: float = 0.0, pipeline: str = "tiny",
                 val_snr_db: list[float] = [0.0, 10.0, 20.0], export_dir: str | None = None, seed: int = 0,
                 init_from: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        kwargs = asdict(codec) if isinstance(codec, CodecConfig) else dict(codec or {})
        kwargs.setdefault("snr_range_db", list(snr_range_db))
        if init_from:
            self.codec = SeedCodec.from_pretrained(init_from).train()  # keeps its own SNR normalisation
            if [float(v) for v in snr_range_db] != [float(v) for v in self.codec.config.snr_range_db]:
                self.codec.register_to_config(trained_snr_range_db=[float(v) for v in snr_range_db])
        else:
            self.codec = SeedCodec(**kwargs)
        self.channel = make_channel(channels, csi=csi)
        self._vae = None
        lo, hi = (float(v) for v in snr_range_db)
        if hi < lo:
            raise ValueError(f"snr_range_db: expected (low, high), got {snr_range_db!r}")

    # ---- frozen VAE for the optional image loss (kept out of the state dict)
    def _decoder(self):
        if self._vae is None:
            from splitldm.pipeline.models import load_pipeline

            vae = load_pipeline(self.hparams.pipeline).vae.eval().requires_grad_(False)
            object.__setattr__(self, "_vae", vae.to(self.device))
        return self._vae

    def _decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._decoder()
        return vae.decode(latents / vae.config.scaling_factor).sample

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if (self.global_step == 0 and dm is not None and hasattr(dm, "stats") and self.codec.config.in_mean is None
                and not self.hparams.init_from):
            mean, std = dm.stats()
            self.codec.set_input_stats(mean, std.clamp_min(1e-3))

    def _step(self, x: torch.Tensor, snr, generator: torch.Generator,
              weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.codec(x, snr, generator=generator, channel=self.channel)
        per_sample = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
        mse = per_sample.mean()
        out["mse"] = mse
        out["loss"] = mse if weight is None else (weight.to(per_sample) * per_sample).mean()
        if self.hparams.image_loss_weight > 0:
            with torch.no_grad():
                ref = self._decode_images(x)
            img_mse = (self._decode_images(out["x_hat"]) - ref).pow(2).mean()
            out["image_mse"] = img_mse
            out["loss"] = out["loss"] + self.hparams.image_loss_weight * img_mse
        return out

    def training_step(self, batch, batch_idx):
        x, weight = batch[0], (batch[2] if len(batch) > 2 else None)
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
        lo, hi = (float(v) for v in self.hparams.snr_range_db)
        out = self._step(x, (lo, hi), g, weight)  # per-sample SNR ~ U[lo, hi] dB, drawn by the channel from g
        var = x.var().detach()
        self.log("train/loss", out["loss"], prog_bar=True)
        self.log("train/latent_psnr", 10 * torch.log10(var / out["mse"].detach()), prog_bar=True)
        if "image_mse" in out:
            self.log("train/image_mse", out["image_mse"])
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        x = batch[0]
        var = x.var()
        for kind in self.hparams.channels:
            channel = make_channel([kind], csi=self.hparams.csi)
            for snr_db in self.hparams.val_snr_db:
                g = torch.Generator().manual_seed(10_000 + batch_idx)
                out = self.codec(x, float(snr_db), generator=g, channel=channel)
                mse = (out["x_hat"] - x).pow(2).mean()
                self.log(f"val/{kind}_psnr_{snr_db:g}dB", 10 * torch.log10(var / mse))
                if kind == self.hparams.channels[0] and snr_db == self.hparams.val_snr_db[len(self.hparams.val_snr_db) // 2]:
                    self.log("val/mse", mse, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.codec.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.max_lr_steps > 0:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_lr_steps,
                                                               eta_min=self.hparams.lr * 0.05)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt

    def on_train_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.codec.save_pretrained(self.hparams.export_dir)


def export_checkpoint(ckpt_path: str | os.PathLike, export_dir: str | os.PathLike) -> SeedCodec:
    """Write the codec inside a Lightning checkpoint of `CodecModule` as a `SeedCodec` folder.

    The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
    crafted file cannot run code. Raises FileNotFoundError (no such file) or ValueError (the file is not a
    plain checkpoint of a `CodecModule`), naming ``ckpt_path``.
    """
    if not isinstance(ckpt_path, (str, os.PathLike)):
        raise TypeError(f"ckpt_path: expected a path, got {type(ckpt_path).__name__}")
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint file {ckpt_path}")
    try:
        module = CodecModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler, a missing key, a state dict of another model
        raise ValueError(f"ckpt_path: {ckpt_path} is not a plain Lightning checkpoint of a CodecModule; "
                         f"torch.load(weights_only=True) or the module refused it ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). Nothing in it was run.") from exc
    module.codec.save_pretrained(export_dir)
    return module.codec


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.codec fit --config configs/codec.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(CodecModule, CodecLatentData, args=args, run=run)


if __name__ == "__main__":
    main()
