"""LightningCLI entry shared by the recipes: ``python -m splitldm.recipes.<recipe> fit --config configs/<recipe>.yaml``.

Every recipe module ends with ``if __name__ == "__main__": main(<its LightningModule>[, <its DataModule>])``,
so the usual LightningCLI flags work for all of them, multi-process included, e.g.
``--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp`` (gloo on CPUs; nccl on GPUs).
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LightningCLI

from splitldm.eval.threads import set_threads
from splitldm.recipes.datamodule import ShapesDataModule

__all__ = ["main"]


def main(model_class, datamodule_class=ShapesDataModule, args: list[str] | None = None, run: bool = True):
    """Run LightningCLI for ``model_class`` with ``datamodule_class`` (`ShapesDataModule` by default).

    CPU threads per process: ``$SPLITLDM_THREADS``, else ``$OMP_NUM_THREADS``, else 1 (training shares
    the machine with its own DDP processes and data loaders; see `splitldm.eval.threads`).
    Returns the `LightningCLI` object (``cli.trainer``, ``cli.model``, ``cli.datamodule``).
    """
    set_threads(fallback=1)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the tiny models do not need full fp32
    return LightningCLI(model_class, datamodule_class, seed_everything_default=0, args=args, run=run,
                        save_config_kwargs={"overwrite": True})
