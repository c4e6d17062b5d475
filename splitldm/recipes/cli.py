"""LightningCLI entry shared by the recipes: ``python -m splitldm.recipes.<recipe> fit --config configs/<recipe>.yaml``.

Every recipe module ends with ``if __name__ == "__main__": main(<its LightningModule>[, <its DataModule>])``,
so the usual LightningCLI flags work for all of them, multi-process included, e.g.
``--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp`` (gloo on CPUs; nccl on GPUs).

Resuming (``--ckpt_path <file | last>``) continues the same run bit for bit or refuses with one line
naming each ``--model.*`` / ``--data.*`` value that differs from the checkpoint's: see
`splitldm.recipes.resume`.
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from lightning.pytorch.cli import LightningCLI

from splitldm.eval.threads import set_threads
from splitldm.recipes.datamodule import ShapesDataModule
from splitldm.recipes.resume import ResumeMismatchError, ResumeState, check_resume, read_checkpoint

__all__ = ["RecipeCLI", "main"]


class RecipeCLI(LightningCLI):
    """`LightningCLI` that compares a resume's values with its checkpoint instead of replacing them.

    Lightning's own ``--ckpt_path`` handling parses the checkpoint's model hyper-parameters over the
    command line's, so ``--model.lr 0.1`` on a resume is silently dropped; here the command line stays
    as given and `splitldm.recipes.resume.ResumeState` refuses values that differ.
    """

    def _parse_ckpt_path(self) -> None:  # overrides Lightning's silent replacement (see the class docstring)
        return None

    def before_fit(self) -> None:
        """A checkpoint file is checked before the trainer loads its weights (`check_resume`)."""
        path = self.config_init[self.subcommand].get("ckpt_path")
        if path and os.path.isfile(path):
            checkpoint = read_checkpoint(path)
            dm = self.datamodule
            check_resume(checkpoint, self.model.hparams, dm.hparams if dm is not None else None, path, log=False,
                         skip_unset=True)  # values filled in at setup: compared later, by ResumeState


def main(model_class, datamodule_class=ShapesDataModule, args: list[str] | None = None, run: bool = True):
    """Run LightningCLI for ``model_class`` with ``datamodule_class`` (`ShapesDataModule` by default).

    CPU threads per process: ``$SPLITLDM_THREADS``, else ``$OMP_NUM_THREADS``, else 1 (training shares
    the machine with its own DDP processes and data loaders; see `splitldm.eval.threads`).
    Every trainer gets `splitldm.recipes.resume.ResumeState` (exact resume, checked values).
    Returns the `LightningCLI` object (``cli.trainer``, ``cli.model``, ``cli.datamodule``).

    Raises:
        ResumeMismatchError: (a `ValueError`) a resume with values that differ from the checkpoint's;
            run as a program (``args`` None) it is printed as one line and the exit status is 2.
    """
    set_threads(fallback=1)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the tiny models do not need full fp32
    if args is None:  # a command: say what the recipe does (the resume checks log through `logging`)
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("splitldm").setLevel(logging.INFO)
    try:
        return RecipeCLI(model_class, datamodule_class, seed_everything_default=0, args=args, run=run,
                         save_config_kwargs={"overwrite": True}, trainer_defaults={"callbacks": [ResumeState()]})
    except ResumeMismatchError as e:
        if args is not None:
            raise
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
