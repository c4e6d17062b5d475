"""Recipe: merge-aware VAE decoder (MEG-CVPO's decoder fine-tuning for merged + noisy latents).

The decoder (and ``post_quant_conv``) of a pipeline's VAE is fine-tuned on latents that crossed a
`splitldm.tome.TokenMerge` link: ``z' = unmerge(merge(z, ratio)) + sigma * n`` with a random
ratio per step (uniform in ``[0, max_ratio]``) and a random noise level per sample (``sigma`` uniform
in ``[0, max_noise]``, relative to the unit-variance scaled latent, with probability ``noise_prob``).
The encoder stays frozen (the ES side does not change); the loss is L1 + MSE to the image.

    python -m splitldm.recipes.merge_decoder fit --config configs/merge_decoder.yaml

When fitting ends the decoder is written to ``export_dir`` as a
`splitldm.pipeline.merge_decoder.MergeAwareDecoder` folder (``config.json`` + ``decoder.safetensors``:
only the decoder + post_quant_conv tensors), with ``metrics.json`` (decoded-image PSNR vs ratio for
the stock and the fine-tuned decoder on held-out images). The device loads it with
``MergeAwareDecoder.from_pretrained(export_dir).apply_to(pipe.vae)``; the default ``export_dir`` is
``runs/merge_decoder/export`` (the shipped ``splitldm/checkpoints/merge-decoder`` is never overwritten
unless asked).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from splitldm.pipeline.merge_decoder import (_PREFIXES, WEIGHTS_NAME, MergeAwareDecoder, decoder_state,
                                             load_merge_decoder)
from splitldm.tome import plan_merge

__all__ = ["MergeDecoderModule", "merge_unmerge", "psnr_table", "MergeAwareDecoder", "WEIGHTS_NAME",
           "decoder_state", "load_merge_decoder"]


def merge_unmerge(z: torch.Tensor, ratio: float, similarity: str = "euclidean") -> torch.Tensor:
    """What `TokenMerge` does to latents ``(B, C, H, W)`` on an error-free link (fixed destinations)."""
    if ratio <= 0:
        return z
    b, c, h, w = z.shape
    tokens = z.flatten(2).transpose(1, 2)
    plan = plan_merge(tokens, (h, w), ratio, similarity=similarity)
    return plan.unmerge(plan.merge(tokens)).transpose(1, 2).reshape(b, c, h, w)


@torch.no_grad()
def psnr_table(vaes: dict, images: torch.Tensor, ratios, noise_levels=(0.0,), similarity: str = "euclidean",
               seed: int = 0) -> list[dict]:
    """Decoded-image PSNR (dB, images in [0, 1], per-image mean) per (ratio, noise) and decoder.

    ``vaes``: name -> AutoencoderKL; the first one's encoder makes the latents.
    """
    first = next(iter(vaes.values()))
    sf = first.config.scaling_factor
    images = images.to(next(first.parameters()).device)
    z = first.encode(images * 2 - 1).latent_dist.mean * sf
    rows = []
    for sigma in noise_levels:
        noise = (torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)) * sigma).to(z)
        for ratio in ratios:
            zc = merge_unmerge(z, ratio, similarity) + noise
            row = {"ratio": ratio, "noise": sigma}
            for name, vae in vaes.items():
                img = (vae.decode(zc / sf).sample.clamp(-1, 1) + 1) / 2
                mse = (img - images).pow(2).flatten(1).mean(1).clamp_min(1e-10)
                row[f"psnr_{name}_db"] = round((10 * torch.log10(1 / mse)).mean().item(), 3)
            rows.append(row)
    return rows


class MergeDecoderModule(L.LightningModule):
    """Fine-tunes ``pipeline``'s VAE decoder for merged and noisy latents.

    Args:
        pipeline: `splitldm.pipeline.models.load_pipeline` name: a zoo name ("tiny", the shipped teacher),
            "tiny-random" for development, or a diffusers folder.
        max_ratio: merge ratio drawn uniformly in [0, max_ratio] per step.
        max_noise: latent noise std drawn uniformly in [0, max_noise] per sample (scaled-latent units).
        noise_prob: probability that a sample gets noise at all.
        similarity: matching used by the link ("euclidean", TokenMerge's default, or "cosine").
        lr: AdamW learning rate.
        export_dir: where to write the `MergeAwareDecoder` folder (config.json, decoder.safetensors) and
            metrics.json at the end (None: nothing is written).
        eval_images: held-out test images for the exported PSNR table.
        seed: seeds the ratio / noise draws.
    """

    def __init__(self, pipeline: str = "tiny", max_ratio: float = 0.75, max_noise: float = 0.3,
                 noise_prob: float = 0.5, similarity: str = "euclidean", lr: float = 1e-4,
                 export_dir: str | None = "runs/merge_decoder/export", eval_images: int = 64, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        from splitldm.pipeline.models import load_pipeline

        self.vae = load_pipeline(pipeline).vae.train()
        self.stock = copy.deepcopy(self.vae).eval().requires_grad_(False)
        for name, p in self.vae.named_parameters():
            p.requires_grad_(name.startswith(_PREFIXES))
        self._gen = torch.Generator().manual_seed(seed)

    # The corruption generator is the module's own: its state goes into Lightning checkpoints, so a
    # resumed fit draws what the uninterrupted one draws (see splitldm.recipes.resume).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["corruption_generator"] = self._gen.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("corruption_generator")
        if state is not None:
            self._gen.set_state(state)

    def _corrupt(self, z: torch.Tensor) -> tuple[torch.Tensor, float]:
        h = self.hparams
        ratio = float(torch.rand((), generator=self._gen)) * h.max_ratio
        zc = merge_unmerge(z, ratio, h.similarity)
        sigma = torch.rand(z.shape[0], 1, 1, 1, generator=self._gen) * h.max_noise
        sigma = sigma * (torch.rand(z.shape[0], 1, 1, 1, generator=self._gen) < h.noise_prob)
        return zc + sigma.to(z) * torch.randn(z.shape, generator=self._gen).to(z), ratio

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.stock.encode(images * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor

    def training_step(self, batch, batch_idx):
        x = batch["images"]
        zc, ratio = self._corrupt(self._latents(x))
        rec = self.vae.decode(zc / self.vae.config.scaling_factor).sample
        target = x * 2 - 1
        loss = F.l1_loss(rec, target) + F.mse_loss(rec, target)
        self.log_dict({"train/loss": loss, "train/ratio": ratio}, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch["images"]
        rows = psnr_table({"stock": self.stock, "tuned": self.vae}, x, ratios=(0.0, 0.5, 0.75))
        for row in rows:
            self.log(f"val/psnr_tuned_r{row['ratio']}", row["psnr_tuned_db"], prog_bar=row["ratio"] == 0.5)
            self.log(f"val/psnr_stock_r{row['ratio']}", row["psnr_stock_db"])

    def configure_optimizers(self):
        params = [p for p in self.vae.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.0)

    def on_fit_end(self):
        h = self.hparams
        if not h.export_dir or not self.trainer.is_global_zero:
            return
        from splitldm.eval.data import render_batch

        out = Path(h.export_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.vae.eval()
        training = {"max_ratio": h.max_ratio, "max_noise": h.max_noise, "noise_prob": h.noise_prob,
                    "similarity": h.similarity, "lr": h.lr, "steps": int(self.trainer.global_step), "seed": h.seed}
        MergeAwareDecoder.from_vae(self.vae, pipeline=h.pipeline, training=training).save_pretrained(out)
        images, _, _ = render_batch(range(h.eval_images), split="test")
        rows = psnr_table({"stock": self.stock, "tuned": self.vae}, images,
                          ratios=(0.0, 0.3, 0.5, 0.7), noise_levels=(0.0, 0.1, 0.3), similarity=h.similarity)
        (out / "metrics.json").write_text(json.dumps({"eval_images": h.eval_images, "split": "test",
                                                      "rows": rows}, indent=2))


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.merge_decoder fit --config configs/merge_decoder.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(MergeDecoderModule, args=args, run=run)


if __name__ == "__main__":
    main()
