"""Lightning recipe for the learned entropy model (`splitldm.link.entropy_model.EntropyModel`).

    python -m splitldm.recipes.entropy fit --config configs/entropy.yaml

The data are the seed codec's own training latents (`splitldm.recipes.codec.CodecLatentData`: VAE
latents of the shapes set and the tiny pipeline's latents after steps 4, 6 and 8, cached as
safetensors, each kind weighted by 1/variance). `EntropyModule` minimises the rate-distortion
Lagrangian ``D + lambda_l R`` with one rate level ``l`` drawn uniformly per sample: ``D`` the weighted
MSE per latent value, ``R`` the rate estimate in bits per latent under the factorized prior with
additive uniform noise (Ballé et al. 2018). Validation reports, per level, the quantised latent PSNR
and the bits per latent.
"""

from __future__ import annotations

import torch
import lightning as L

from splitldm.link.entropy_model import EntropyModel
from splitldm.recipes.codec import CodecLatentData

__all__ = ["EntropyModule", "main"]


class EntropyModule(L.LightningModule):
    """Trains an `EntropyModel` for ``D + lambda_l R`` (see the module docstring).

    Args:
        model: `EntropyModel` keyword arguments (``latent_channels``, ``hidden_channels``, ``lambdas``, ...).
        lr: AdamW learning rate of the transforms and gains; ``density_lr`` of the factorized densities.
        max_lr_steps: cosine decay over this many steps (0: constant).
        val_levels: levels validation reports (default: all).
        export_dir: when set, the model is written there (`EntropyModel.save_pretrained`) at the end.
        seed: seeds the level draw and the uniform noise (step ``i`` uses ``seed * 1000003 + i``).
    """

    def __init__(self, model: dict | None = None, lr: float = 1e-3, density_lr: float = 1e-2, max_lr_steps: int = 0,
                 val_levels: list[int] | None = None, export_dir: str | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.model = EntropyModel(**dict(model or {}))

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.global_step == 0 and dm is not None and hasattr(dm, "stats") and self.model.config.in_mean is None:
            mean, std = dm.stats()
            self.model.set_input_stats(mean, std.clamp_min(1e-3))

    def training_step(self, batch, batch_idx):
        x, weight = batch[0], (batch[2] if len(batch) > 2 else torch.ones(batch[0].shape[0]))
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
        level = torch.randint(0, self.model.num_levels, (x.shape[0],), generator=g)
        out = self.model(x, level.to(x.device), generator=g)
        mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
        lam = torch.tensor(self.model.config.lambdas, dtype=x.dtype, device=x.device)[level.to(x.device)]
        w = weight.to(x)
        loss = (w * mse + lam * out["bits"]).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bits", out["bits"].mean(), prog_bar=True)
        self.log("train/wmse", (w * mse).mean())
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch[0]
        var = x.var()
        levels = self.hparams.val_levels if self.hparams.val_levels is not None else range(self.model.num_levels)
        for lv in levels:
            out = self.model(x, int(lv))
            mse = (out["x_hat"] - x).pow(2).mean()
            self.log(f"val/psnr_level{lv}", 10 * torch.log10(var / mse))
            self.log(f"val/bits_level{lv}", out["bits"].mean())

    def configure_optimizers(self):
        dens = list(self.model.density.parameters())
        ids = {id(p) for p in dens}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        opt = torch.optim.AdamW([{"params": rest, "lr": self.hparams.lr},
                                 {"params": dens, "lr": self.hparams.density_lr, "weight_decay": 0.0}],
                                weight_decay=0.0)
        if self.hparams.max_lr_steps > 0:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_lr_steps, eta_min=0.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt

    def on_train_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.model.save_pretrained(self.hparams.export_dir)


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.entropy fit --config configs/entropy.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(EntropyModule, CodecLatentData, args=args, run=run)


if __name__ == "__main__":
    main()
