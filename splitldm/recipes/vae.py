"""Recipe (a): the tiny AutoencoderKL, 64x64 RGB -> 4x8x8 latents (SD's 8x downsampling).

Loss: L1 + MSE on images in [-1, 1] plus ``kl_weight`` times the per-element KL to N(0, 1).
When fitting ends the EMA-free weights are exported with ``save_pretrained`` (safetensors) to
``export_dir``, with ``scaling_factor`` set to 1/std of the latents of ``scale_examples`` images
(so that scaled latents have unit variance, as SD's 0.18215 does for its VAE).

    python -m splitldm.recipes.vae fit --config configs/vae.yaml
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from splitldm.pipeline.models import build_vae


class VAEModule(L.LightningModule):
    def __init__(self, model: str = "tiny", lr: float = 1e-3, kl_weight: float = 1e-5, warmup_steps: int = 50,
                 export_dir: str | None = None, scale_examples: int = 512, crop_size: int | None = None,
                 logvar_init: float | None = -6.0, init_from: str | None = None, train_encoder: bool = True,
                 seed: int = 0):
        """``init_from``: an exported VAE folder, a pipeline folder or zoo name (``"tiny"``: its VAE; see
        `load_vae`), or ``"analytic"`` for `splitldm.recipes.vae_init.analytic_init` (block-average codec;
        its scaling factor is set from ``scale_examples`` images)."""
        """``crop_size``: train on random square crops of this side (a multiple of 8; the VAE is fully
        convolutional, so crops cut the cost per example while teaching the same local job)."""
        super().__init__()
        self.save_hyperparameters()
        self.vae = build_vae(model, seed=seed).train()
        if init_from == "analytic":
            self.vae = analytic_vae(model, seed, scale_examples).train()
            logvar_init = None
        elif init_from:
            # Stage 2: continue from an exported VAE. With ``train_encoder=False`` only the decoder
            # trains, so latents (and a UNet trained on them) stay valid: fine-tune the decoder in
            # parallel with the UNet, as SD's ft-MSE decoders were.
            self.vae = load_vae(init_from).train()
            logvar_init = None
        if not train_encoder:
            self.vae.encoder.requires_grad_(False)
            self.vae.quant_conv.requires_grad_(False)
        if logvar_init is not None:
            # Start as a near-deterministic autoencoder (posterior std e^-3): with std ~1 at init the
            # decoder first sees mostly noise, which costs hundreds of steps on a CPU budget.
            c = self.vae.config.latent_channels
            with torch.no_grad():
                self.vae.quant_conv.weight[c:].zero_()
                self.vae.quant_conv.bias[c:].fill_(logvar_init)

    def _loss(self, images: torch.Tensor):
        x = images * 2 - 1
        post = self.vae.encode(x).latent_dist
        z = post.sample()
        rec = self.vae.decode(z).sample
        l1, mse = F.l1_loss(rec, x), F.mse_loss(rec, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        return l1 + mse + self.hparams.kl_weight * kl, {"l1": l1, "mse": mse, "kl": kl, "rec": rec}

    def training_step(self, batch, batch_idx):
        images = batch["images"]
        c = self.hparams.crop_size
        if c and c < images.shape[-1]:
            i, j = (int(v) for v in torch.randint(0, images.shape[-1] - c + 1, (2,)))
            images = images[..., i:i + c, j:j + c]
        loss, parts = self._loss(images)
        self.log_dict({"train/loss": loss, "train/l1": parts["l1"], "train/kl": parts["kl"]}, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, parts = self._loss(batch["images"])
        x = batch["images"]
        rec01 = (parts["rec"].clamp(-1, 1) + 1) / 2
        psnr = (10 * torch.log10(1.0 / (rec01 - x).pow(2).flatten(1).mean(1).clamp_min(1e-10))).mean()
        self.log_dict({"val/loss": loss, "val/psnr_db": psnr}, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.vae.parameters() if p.requires_grad], lr=self.hparams.lr,
                                weight_decay=0.0)
        total = max(1, self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, self.hparams.warmup_steps, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_end(self):
        if self.hparams.export_dir and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            if self.hparams.train_encoder:
                export_vae(self.vae, self.hparams.export_dir, self.hparams.scale_examples)
            else:  # same encoder: keep its scaling factor
                self.vae.save_pretrained(str(self.hparams.export_dir), safe_serialization=True)


def load_vae(name_or_path: str | Path):
    """An `AutoencoderKL` (safetensors only) from a zoo pipeline name (``"tiny"``: its ``vae/``), a VAE
    folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or a pipeline folder (its ``vae/``).

    Raises:
        FileNotFoundError: ``name_or_path`` is none of these (the message names it).
    """
    from diffusers import AutoencoderKL

    from splitldm import zoo

    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"name_or_path: expected a zoo name or a folder, got {type(name_or_path).__name__}")
    path = zoo.resolve(name_or_path) if zoo.is_zoo_name(name_or_path) else Path(name_or_path).expanduser()
    if (path / "vae" / "config.json").exists():
        path = path / "vae"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"name_or_path: {name_or_path!r} is not a VAE folder, a pipeline folder or a "
                                f"zoo pipeline name (no config.json in {path})")
    return AutoencoderKL.from_pretrained(str(path), use_safetensors=True)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 10% at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(p * torch.pi)).item())


def analytic_vae(model: str = "tiny", seed: int = 0, scale_examples: int = 512):
    """`build_vae` + `splitldm.recipes.vae_init.analytic_init`, with ``scaling_factor`` = 1/std of its latents."""
    from splitldm.recipes.vae_init import analytic_init

    vae = analytic_init(build_vae(model, seed=seed)).eval()
    vae._analytic = True
    vae.register_to_config(scaling_factor=latent_scale(vae, scale_examples))
    return vae


@torch.no_grad()
def latent_scale(vae, scale_examples: int = 512) -> float:
    """1 / std of the posterior means of ``scale_examples`` embedded train images."""
    from splitldm.eval.data import render_batch

    images, _, _ = render_batch(range(scale_examples))
    if getattr(vae, "_analytic", False):  # the encoder computes exactly this (to 1e-3), much faster
        means = block_average_latents(images, vae.config.latent_channels)
    else:
        means = _posterior_means(vae, images)
    return float(1.0 / means.std())


def _posterior_means(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Posterior means (B, C, h, w) of images (B, 3, H, W) in [0, 1], computed on the VAE's device."""
    dev = next(vae.parameters()).device
    return torch.cat([vae.encode(images[i:i + batch].to(dev) * 2 - 1).latent_dist.mean.cpu()
                      for i in range(0, len(images), batch)])


def block_average_latents(images: torch.Tensor, latent_channels: int = 4, factor: int = 8) -> torch.Tensor:
    """What the analytic encoder outputs (unscaled means): 8x8 block RGB means in [-1, 1], other channels 0.

    images (B, 3, H, W) in [0, 1] -> (B, latent_channels, H/8, W/8).
    """
    rgb = torch.nn.functional.avg_pool2d(images * 2 - 1, factor)
    pad = rgb.new_zeros(rgb.shape[0], latent_channels - 3, *rgb.shape[2:])
    return torch.cat([rgb, pad], 1)


@torch.no_grad()
def export_vae(vae, export_dir: str | Path, scale_examples: int = 512) -> float:
    """Set ``scaling_factor`` = 1/std(latent means) on embedded train images and save; returns it."""
    from splitldm.eval.data import render_batch

    vae = vae.eval()
    images, _, _ = render_batch(range(scale_examples))
    scale = float(1.0 / _posterior_means(vae, images).std())
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(str(export_dir), safe_serialization=True)  # safetensors copies to host itself
    return scale


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.vae fit --config configs/vae.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(VAEModule, args=args, run=run)


if __name__ == "__main__":
    main()
