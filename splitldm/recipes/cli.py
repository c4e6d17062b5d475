"""LightningCLI entry shared by the recipes: ``python -m splitldm.recipes.<recipe> fit --config configs/<x>.yaml``."""

from __future__ import annotations

import os

import torch
from lightning.pytorch.cli import LightningCLI

from splitldm.recipes.datamodule import ShapesDataModule


def main(model_class, args=None, run: bool = True):
    """Run LightningCLI for ``model_class`` with `ShapesDataModule`.

    CPU threads come from ``$SPLITLDM_THREADS`` (default 1: the machines this is developed on are shared).
    """
    torch.set_num_threads(int(os.environ.get("SPLITLDM_THREADS", "1")))
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the tiny models do not need full fp32
    return LightningCLI(model_class, ShapesDataModule, seed_everything_default=0, args=args, run=run,
                        save_config_kwargs={"overwrite": True})
