"""Recipe (b): UNet + CLIP text encoder of the tiny SD model, on a frozen VAE from recipe (a).

Epsilon prediction on SD's noise schedule (1000 steps, scaled-linear betas), min-SNR-5 loss
weighting, caption dropout (captions -> "" with probability ``caption_dropout``) so that
classifier-free guidance works at sampling time, EMA of the weights. Latents: the VAE posterior of
each training index is computed once and cached (mean, std), then re-sampled every epoch.

When fitting ends the EMA weights are exported as a complete diffusers `StableDiffusionPipeline`
(DDIM scheduler, tokenizer, safetensors; UNet and VAE in fp16) to ``export_dir``.

    python -m splitldm.recipes.ldm fit --config configs/ldm.yaml
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from diffusers import AutoencoderKL

from splitldm.pipeline.models import SD_SCHEDULE, build_text_encoder, build_unet, build_vae, make_scheduler
from splitldm.pipeline.tokenizer import DEFAULT_WORDS, build_clip_tokenizer

from splitldm.recipes.vae import load_vae, warmup_cosine


def sd_alphas_cumprod(num_train_timesteps: int = 1000) -> torch.Tensor:
    """SD's scaled-linear schedule: alpha_bar_t for t = 0..999, float64 (1000,)."""
    s = SD_SCHEDULE
    betas = torch.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


@torch.no_grad()
def ema_update(target: torch.nn.Module, source: torch.nn.Module, decay: float) -> None:
    # one fused call instead of a kernel per tensor: on a GPU the tiny model is launch-bound
    torch._foreach_lerp_(list(target.parameters()), [p.detach() for p in source.parameters()], 1 - decay)


class LatentCache(torch.nn.Module):
    """Per-index VAE posterior (mean, std) of the training images, filled on first sight."""

    def __init__(self, size: int, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size, *shape), persistent=False)
        self.register_buffer("std", torch.zeros(size, *shape), persistent=False)
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool), persistent=False)

    @torch.no_grad()
    def sample(self, vae: AutoencoderKL, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 4, h, w) for images (B, 3, H, W) in [0, 1] at dataset ``index`` (B,)."""
        todo = ~self.filled[index]
        if todo.any():
            if getattr(vae, "_analytic", False):  # splitldm.recipes.vae_init codec: the encoder is a block average
                from splitldm.recipes.vae import block_average_latents

                mean = block_average_latents(images[todo], vae.config.latent_channels)
                logvar = vae.encoder.conv_out.bias[vae.config.latent_channels:]  # constant (zero weights)
                std = torch.exp(0.5 * logvar).view(1, -1, 1, 1).expand_as(mean)
            else:
                post = vae.encode(images[todo] * 2 - 1).latent_dist
                mean, std = post.mean, post.std
            self.mean[index[todo]], self.std[index[todo]] = mean, std
            self.filled[index[todo]] = True
        mean, std = self.mean[index], self.std[index]
        return (mean + std * torch.randn_like(mean)) * vae.config.scaling_factor


class LDMModule(L.LightningModule):
    def __init__(self, vae_path: str | None = None, model: str = "tiny", lr: float = 1e-3, caption_dropout: float = 0.1,
                 min_snr_gamma: float | None = 5.0, ema_decay: float = 0.999, warmup_steps: int = 100,
                 cache_size: int = 20000, export_dir: str | None = None, export_vae_path: str | None = None,
                 seed: int = 0):
        """``vae_path``: diffusers AutoencoderKL folder from recipe (a) (or a pipeline folder / zoo name
        such as ``"tiny"``: its VAE, see `splitldm.recipes.vae.load_vae`), ``"analytic"`` (its frozen
        encoder, rebuilt), or None (random VAE, for tests only).
        ``export_vae_path``: the VAE to ship in the exported pipeline, read when fitting ends (default
        ``vae_path``); must have the same encoder, e.g. a decoder fine-tuned with ``train_encoder: false``."""
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = build_clip_tokenizer(DEFAULT_WORDS, model_max_length=16)
        if vae_path == "analytic":  # the block-average codec of splitldm.recipes.vae_init (encoder of recipe (a))
            from splitldm.recipes.vae import analytic_vae

            self.vae = analytic_vae(model, seed)
        elif vae_path:
            self.vae = load_vae(vae_path)
        else:
            self.vae = build_vae(model, seed)
        self.vae = self.vae.eval().requires_grad_(False)
        self.text_encoder = build_text_encoder(model, seed + 1, vocab_size=len(self.tokenizer)).train()
        self.unet = build_unet(model, seed + 2).train()
        self.ema_text = copy.deepcopy(self.text_encoder).eval().requires_grad_(False)
        self.ema_unet = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod().float(), persistent=False)
        lat = self.vae.config.sample_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.cache = LatentCache(cache_size, (self.vae.config.latent_channels, lat, lat))

    def encode_text(self, captions: list[str], encoder=None) -> torch.Tensor:
        ids = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return (encoder or self.text_encoder)(ids.to(self.device))[0]

    def _loss(self, batch, train: bool):
        latents = self.cache.sample(self.vae, batch["images"], batch["index"]) if train else self._val_latents(batch)
        b = len(latents)
        captions = list(batch["captions"])
        if train and self.hparams.caption_dropout > 0:
            drop = torch.rand(b) < self.hparams.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        noise = torch.randn_like(latents)
        t = torch.randint(0, len(self.alphas_cumprod), (b,), device=self.device)
        ab = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        pred = self.unet(noisy, t, self.encode_text(captions)).sample
        err = (pred - noise).pow(2).flatten(1).mean(1)
        if self.hparams.min_snr_gamma:
            snr = ab.flatten() / (1 - ab.flatten())
            err = err * snr.clamp(max=self.hparams.min_snr_gamma) / snr  # min-SNR weighting (epsilon target)
        return err.mean()

    @torch.no_grad()
    def _val_latents(self, batch):
        return self.vae.encode(batch["images"] * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch, True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        ema_update(self.ema_unet, self.unet, decay)
        ema_update(self.ema_text, self.text_encoder, decay)

    def validation_step(self, batch, batch_idx):
        g = torch.random.fork_rng(devices=[])
        with g:
            torch.manual_seed(batch_idx)  # same noise every validation: comparable losses
            loss = self._loss(batch, False)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["index"]))

    def configure_optimizers(self):
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=1e-2)
        total = max(1, self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, self.hparams.warmup_steps, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def pipeline(self, ema: bool = True):
        """The current (EMA) weights as a `StableDiffusionPipeline` with a DDIM scheduler."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.ema_text if ema else self.text_encoder, tokenizer=self.tokenizer,
            unet=self.ema_unet if ema else self.unet, scheduler=make_scheduler("ddim"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def on_fit_end(self):
        if self.hparams.export_dir and self.trainer.is_global_zero:
            pipe = self.pipeline()
            vae = None
            if self.hparams.export_vae_path:
                try:
                    vae = load_vae(self.hparams.export_vae_path).eval()
                except FileNotFoundError:
                    import warnings

                    warnings.warn(f"export_vae_path: {self.hparams.export_vae_path} not found; shipping the training VAE")
            if vae is not None:
                if vae.config.scaling_factor != self.vae.config.scaling_factor:
                    raise ValueError("export_vae_path: its scaling_factor differs from the training VAE's")
                pipe.vae = vae
                pipe.register_modules(vae=vae)
            export_pipeline(pipe, self.hparams.export_dir)


def export_pipeline(pipe, export_dir: str | Path, fp16: bool = True) -> Path:
    """Save ``pipe`` with safetensors; UNet and VAE in fp16 (diffusers loads them back as fp32).

    The text encoder stays fp32 (transformers would keep fp16 on load, and it is tiny).
    """
    pipe = copy.deepcopy(pipe).to("cpu")
    if fp16:
        pipe.unet.to(torch.float16)
        pipe.vae.to(torch.float16)
    pipe.save_pretrained(str(export_dir), safe_serialization=True)
    return Path(export_dir)


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.ldm fit --config configs/ldm.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(LDMModule, args=args, run=run)


if __name__ == "__main__":
    main()
