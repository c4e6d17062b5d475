"""Recipe (d): the attribute classifier used by the metrics (prompt adherence, classifier-FID).

A small CNN on 64x64 RGB images in [0, 1] with one linear head per attribute of
`splitldm.eval.data.ATTRIBUTES`; its penultimate (pooled) features feed `splitldm.eval.metrics`' FID.
Exported with `AttributeClassifier.save_pretrained` (``config.json`` + ``model.safetensors``) to
``export_dir`` (default ``runs/classifier/export``; the shipped ``splitldm/checkpoints/classifier`` is
only replaced by copying an export there by hand).

    python -m splitldm.recipes.classifier fit --config configs/classifier.yaml
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from splitldm.eval.data import ATTRIBUTE_NAMES
from splitldm.eval.metrics import AttributeClassifier


class ClassifierModule(L.LightningModule):
    """Trains an `AttributeClassifier` with one cross-entropy per attribute.

    Args:
        width, feature_dim: the `AttributeClassifier` architecture.
        lr: AdamW peak learning rate.
        export_dir: where `AttributeClassifier.save_pretrained` writes the result when fitting ends
            (None: nothing is written).
        augment: train on mildly noised copies too (generated images are slightly blurry / noisy).
        init_from: a classifier to continue from (a second stage): a folder, the zoo name
            ``"classifier"`` or a hub id (`AttributeClassifier.from_pretrained`).
        schedule: ``"onecycle"`` (what the shipped classifier used; its total length is fixed at the
            first fit, so a resumed run cannot extend ``max_steps``) or ``"cosine"`` (10% warm-up,
            cosine decay).
        seed: seeds the initial weights.
    """

    def __init__(self, width: int = 32, feature_dim: int = 128, lr: float = 2e-3,
                 export_dir: str | None = "runs/classifier/export", augment: bool = True,
                 init_from: str | None = None, schedule: str = "cosine", seed: int = 0):
        if schedule not in ("onecycle", "cosine"):
            raise ValueError(f"schedule: expected 'onecycle' or 'cosine', got {schedule!r}")
        super().__init__()
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = AttributeClassifier(width=width, feature_dim=feature_dim)
        if init_from:
            self.net.load_state_dict(AttributeClassifier.from_pretrained(init_from).state_dict())

    def _step(self, batch, train: bool):
        x, y = batch["images"], batch["labels"]
        if train and self.hparams.augment:
            # Generated images are slightly blurry/noisy: train on mildly degraded copies too.
            x = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
        logits = self.net(x)
        loss = sum(F.cross_entropy(lg, y[:, i]) for i, lg in enumerate(logits))
        accs = {k: (lg.argmax(1) == y[:, i]).float().mean() for i, (k, lg) in enumerate(zip(ATTRIBUTE_NAMES, logits))}
        allc = torch.stack([lg.argmax(1) == y[:, i] for i, lg in enumerate(logits)]).all(0).float().mean()
        return loss, accs, allc

    def training_step(self, batch, batch_idx):
        loss, _, allc = self._step(batch, True)
        self.log_dict({"train/loss": loss, "train/acc_all": allc}, prog_bar=True, batch_size=len(batch["images"]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, accs, allc = self._step(batch, False)
        self.log_dict({"val/loss": loss, "val/acc_all": allc, **{f"val/acc_{k}": v for k, v in accs.items()}},
                      batch_size=len(batch["images"]), sync_dist=True)  # averaged over DDP processes

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        total = max(1, self.trainer.estimated_stepping_batches)
        if self.hparams.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=total, pct_start=0.1)
        else:
            from splitldm.recipes.vae import warmup_cosine

            warm = max(1, total // 10)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_end(self):
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.net.save_pretrained(self.hparams.export_dir)


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.classifier fit --config configs/classifier.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(ClassifierModule, args=args, run=run)


if __name__ == "__main__":
    main()
