"""Resuming a recipe: the same run, continued bit for bit, or a clear refusal.

``python -m splitldm.recipes.<recipe> fit --config <same config> --ckpt_path <file | last>`` continues
the run the checkpoint came from. Three things make that exact (`splitldm.recipes.cli.main` wires them
into every recipe):

* **The same configuration** (`check_resume`, run by `ResumeState` before any weight is loaded): every
  ``--model.*`` / ``--data.*`` value (config file and command line) is compared with the hyper-parameters
  the checkpoint recorded; values that differ are refused with one `ResumeMismatchError` naming each key
  with both values. Lightning's own behaviour, replacing the command line's model values by the
  checkpoint's without a word, is switched off (`splitldm.recipes.cli.RecipeCLI`). Only the keys in
  `ALLOWED_ON_RESUME` (where the data cache lives, loader workers, preloading: none changes a number)
  may differ; each change is logged as a warning. ``--trainer.*`` is never compared (``max_steps``,
  ``max_time`` and devices are how a run is continued). The export goes where the resumed run said
  (``model.export_dir`` is compared like every other key), and the log says where.
* **The same data order** (`EpochSampler`, `ResumableDataLoader`, `shuffled_loader`): epoch ``e`` is a
  permutation drawn from a generator seeded with ``(seed, e)``, and the loader's state (epoch, batches
  already consumed) is saved in the checkpoint, so a run stopped mid-epoch continues with the next
  unseen batch instead of restarting the epoch with a freshly seeded shuffle.
* **The same random states** (`ResumeState`): the global generators (torch CPU and CUDA, numpy, python
  ``random``) are saved in the checkpoint and restored when training restarts; validation runs on a
  fork of them, so whether (and how often) it runs never changes the training draws.

Bit-exact holds on the same machine, device and thread count (`splitldm.eval.threads`), in a single
training process; under DDP, Lightning's `DistributedSampler` orders the data (by ``(seed, epoch)``) and a
mid-epoch resume restarts that epoch. See ``docs/guides/determinism.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["ALLOWED_ON_RESUME", "EpochSampler", "ResumableDataLoader", "ResumeMismatchError", "ResumeState",
           "check_resume", "hparam_differences", "read_checkpoint", "rng_state", "set_rng_state", "shuffled_loader"]

logger = logging.getLogger(__name__)

#: Hyper-parameters that may differ between a checkpoint and its resume (each change is logged as a
#: warning): where the latent cache lives (its files are named by a hash of their content's recipe),
#: DataLoader worker processes, and preloading the embedded images. None of them changes a number.
ALLOWED_ON_RESUME = frozenset({"data.cache_dir", "data.num_workers", "data.preload"})


class ResumeMismatchError(ValueError):
    """A resume whose ``--model.*`` / ``--data.*`` values differ from the checkpoint's (message: each key
    with the checkpoint's value and the new one)."""


# ============================================================================ hyper-parameters
def _plain(value):
    """``value`` as plain JSON-like data (dataclasses and namespaces as dicts, tuples as lists, paths as
    strings), so that a config and a checkpoint compare by meaning, not by type (``4 == 4.0`` in Python)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class _Missing:
    def __repr__(self) -> str:
        return "(not recorded)"


_MISSING = _Missing()


def _diff(saved, current, key: str, out: list) -> None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for k in sorted(saved.keys() | current.keys()):
            _diff(saved.get(k, _MISSING), current.get(k, _MISSING), f"{key}.{k}", out)
    elif saved is _MISSING or current is _MISSING or saved != current:
        if not (saved is _MISSING and current is _MISSING):
            out.append((key, saved, current))


def hparam_differences(saved: Mapping, current: Mapping, section: str) -> list[tuple[str, object, object]]:
    """``[(key, saved value, current value)]`` for every hyper-parameter that differs, keys dotted as on
    the command line (``model.codec.hidden_channels``); a key only one side has shows ``(not recorded)``
    on the other. Keys starting with ``_`` (Lightning's bookkeeping, e.g. ``_instantiator``) are ignored."""
    out: list[tuple[str, object, object]] = []
    _diff(_plain(dict(saved)), _plain(dict(current)), section, out)
    return out


def check_resume(checkpoint: Mapping, model_hparams: Mapping, data_hparams: Mapping | None = None,
                 ckpt_path: str | os.PathLike | None = None, log: bool = True, skip_unset: bool = False) -> None:
    """Compare a run's hyper-parameters with those its checkpoint recorded (see the module docstring).

    Args:
        checkpoint: the Lightning checkpoint dict (its ``hyper_parameters`` and ``datamodule_hyper_parameters``).
        model_hparams, data_hparams: the resumed run's ``module.hparams`` and ``datamodule.hparams``.
        ckpt_path: named in the messages.
        log: log the allowed changes and where the export goes (warnings); False only checks.
        skip_unset: do not compare values that are None now (a recipe may fill them in at setup, e.g.
            the codec bank's ``layout``): the early check before the trainer runs.

    Raises:
        ResumeMismatchError: values outside `ALLOWED_ON_RESUME` differ; the message names every one.
    """
    name = os.fspath(ckpt_path) if ckpt_path is not None else "the checkpoint"
    diffs = hparam_differences(checkpoint.get("hyper_parameters") or {}, model_hparams, "model")
    if data_hparams is not None and checkpoint.get("datamodule_hyper_parameters") is not None:
        diffs += hparam_differences(checkpoint["datamodule_hyper_parameters"], data_hparams, "data")
    # a key only one side has is a parameter added or removed since (a new version): warned, not refused
    refused = [d for d in diffs if d[0] not in ALLOWED_ON_RESUME and d[1] is not _MISSING and d[2] is not _MISSING
               and not (skip_unset and d[2] is None)]
    if refused:
        lines = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, old, new in refused)
        raise ResumeMismatchError(
            f"ckpt_path: resuming {name} with {len(refused)} value(s) that differ from the run it continues "
            f"({lines}). Pass the values the checkpoint was trained with (a resume continues the same run), "
            f"or start a new run without --ckpt_path (e.g. --model.init_from for the codecs).")
    if not log:
        return
    for key, old, new in diffs:
        if old is _MISSING:
            logger.warning("resume: %s is not recorded in %s (a parameter added since?): using %r", key, name, new)
        elif new is _MISSING:
            logger.warning("resume: %s = %r in %s is no parameter of this version: ignored", key, old, name)
        else:
            logger.warning("resume: %s changed from %r (checkpoint) to %r: allowed on resume (no number "
                           "depends on it)", key, old, new)
    export = model_hparams.get("export_dir") if isinstance(model_hparams, Mapping) else None
    step = checkpoint.get("global_step")
    logger.warning("resume: continuing %s from step %s; the export goes to %s, as the resumed run said",
                   name, step, repr(export) if export else "nowhere (export_dir unset)")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint as a dict, read with ``torch.load(weights_only=True)`` (nothing is unpickled
    beyond tensors and plain data: a crafted file raises `pickle.UnpicklingError`); memory-mapped when
    it is in torch's zip format, so that reading its hyper-parameters does not read its weights."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format


# ============================================================================ random states
def rng_state() -> dict:
    """The global random states: torch CPU (and CUDA when initialised), numpy, python ``random``, as
    tensors and numbers only (a checkpoint loads with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what `rng_state` returned (CUDA states only onto as many devices as were saved)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning("resume: the checkpoint saved %d CUDA generator states, this machine has %d "
                           "devices: CUDA random states not restored", len(cuda), torch.cuda.device_count())


class ResumeState(L.Callback):
    """Makes a resumed fit continue the interrupted one (added to every recipe by `splitldm.recipes.cli`).

    * ``on_load_checkpoint``: `check_resume` against the checkpoint a fit resumes from (whatever
      ``ckpt_path`` named: a file, ``"last"``, ...), after the module's ``setup`` (values a recipe fills
      in there, like the codec bank's layout, are compared too). Lightning loads the weights just
      before this hook; `splitldm.recipes.cli.RecipeCLI` checks a checkpoint file earlier still (values
      not set yet aside), so that a different architecture is reported by name rather than as a tensor
      size mismatch.
    * ``state_dict`` / ``load_state_dict``: the global random states (`rng_state`) at the save, restored
      at the first ``on_train_batch_start`` (after Lightning's sanity check, data loading and restart
      bookkeeping, just before the next training step),
      and ``trainer.max_steps``: a resume that changes it is warned (a schedule sized by it changes from
      there on) or, for a one-cycle schedule that cannot be extended, refused with `ResumeMismatchError`.
    * validation (and the sanity check) run on a fork of the global random states: the states after it
      are those before it, so a resumed run (which skips the validation of the step it resumes at)
      draws what the uninterrupted run draws.
    """

    def __init__(self) -> None:
        self._to_restore: dict | None = None
        self._before_validation: dict | None = None
        self._max_steps: int | None = None  # this run's trainer.max_steps (saved with the random states)
        self._saved_max_steps: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._max_steps = trainer.max_steps

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":
            return
        dm = trainer.datamodule
        check_resume(checkpoint, pl_module.hparams, dm.hparams if dm is not None else None, trainer.ckpt_path)
        if self.state_key not in (checkpoint.get("callbacks") or {}):
            logger.warning("resume: %s holds no random states (saved without ResumeState): the global "
                           "generators start from the seed, not where the run stopped", trainer.ckpt_path)

    def state_dict(self) -> dict:
        return {"rng": rng_state(), "max_steps": self._max_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict.get("rng")
        self._saved_max_steps = state_dict.get("max_steps")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, now = self._saved_max_steps, trainer.max_steps
        self._saved_max_steps = None
        if saved is not None and saved != now:
            for config in trainer.lr_scheduler_configs:
                total = getattr(config.scheduler, "total_steps", None)  # OneCycleLR: fixed at the first fit
                if isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR) and total < now:
                    raise ResumeMismatchError(
                        f"trainer.max_steps: the checkpoint's one-cycle LR schedule is {total} steps long and "
                        f"cannot be extended to {now} (resume with --trainer.max_steps {saved}, or start a new "
                        f"run, e.g. --model.init_from with the export)")
            logger.warning("resume: trainer.max_steps changed from %s (checkpoint) to %s: an LR schedule sized "
                           "by max_steps decays over the new length from here on, so the result is not what "
                           "one uninterrupted run of %s steps gives", saved, now, now)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Restored here, not earlier: on its first batch after a resume, Lightning fast-forwards the
        # validation it skips by creating that loader's iterator, which draws from the global generator.
        if self._to_restore is not None:
            set_rng_state(self._to_restore)
            self._to_restore = None

    # ---- validation on a fork: captured after the training batch it follows (Lightning creates the
    # validation loader's iterator, which draws a worker seed from the global generator, before any
    # validation hook runs), restored when it ends.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._before_validation = rng_state()

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._before_validation = rng_state()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._restore_after_validation()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._restore_after_validation()

    def _restore_after_validation(self) -> None:
        if self._before_validation is not None:
            set_rng_state(self._before_validation)
            self._before_validation = None


# ============================================================================ data order
def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"splitldm-shuffle:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class EpochSampler(Sampler[int]):
    """Random order of ``num_examples`` indices, a function of ``(seed, epoch)`` only, resumable mid-epoch.

    Like `torch.utils.data.DistributedSampler`, the epoch is set from outside (``set_epoch``; Lightning
    calls it at every epoch start), so iterating twice in one epoch gives the same order.

    Args:
        num_examples: dataset length.
        seed: the data seed.
        consumed_batches: returns how many batches of the current epoch training has consumed (read
            when a checkpoint is saved; Lightning's batch progress, see `shuffled_loader`).
    """

    def __init__(self, num_examples: int, seed: int = 0, consumed_batches: Callable[[], int] | None = None):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"num_examples: expected an int >= 1, got {num_examples!r}")
        self.num_examples, self.seed, self.consumed_batches = num_examples, int(seed), consumed_batches
        self.epoch, self._start = 0, 0

    def __len__(self) -> int:
        return self.num_examples

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._start = int(epoch), 0

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The order of epoch ``epoch`` (default: the current one): (num_examples,) int64."""
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch if epoch is None else epoch))
        return torch.randperm(self.num_examples, generator=g)

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0  # the resumed offset applies to the first pass only
        return iter(self.permutation()[start:].tolist())

    def state_dict(self, batch_size: int) -> dict:
        consumed = int(self.consumed_batches()) if self.consumed_batches is not None else 0
        return {"epoch": self.epoch, "start": min(consumed * int(batch_size), self.num_examples),
                "seed": self.seed, "num_examples": self.num_examples}

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("seed", "num_examples"):
            if int(state[key]) != getattr(self, key):
                raise ResumeMismatchError(f"ckpt_path: the checkpoint's training data has {key} {state[key]}, "
                                          f"this run's {getattr(self, key)}: not the same data")
        self.epoch, self._start = int(state["epoch"]), int(state["start"])


class ResumableDataLoader(DataLoader):
    """A `DataLoader` whose `EpochSampler` state goes into Lightning checkpoints (Lightning saves the
    ``state_dict`` of stateful training loaders and loads it before iterating again on a resume); each
    epoch's worker seeds are drawn from ``(seed, epoch)`` as well."""

    def __iter__(self):
        if isinstance(self.sampler, EpochSampler) and self.generator is not None:
            self.generator.manual_seed(_epoch_seed(self.sampler.seed + 1, self.sampler.epoch))
        return super().__iter__()

    def state_dict(self) -> dict:
        return self.sampler.state_dict(self.batch_size) if isinstance(self.sampler, EpochSampler) else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if isinstance(self.sampler, EpochSampler) and state_dict:
            self.sampler.load_state_dict(state_dict)


def shuffled_loader(datamodule: L.LightningDataModule, dataset, batch_size: int, seed: int,
                    **kwargs) -> DataLoader:
    """The training loader of a recipe: shuffled, resumable mid-epoch (`EpochSampler`).

    In a multi-process run (``trainer.world_size > 1``) it is a plain shuffling loader: Lightning then
    puts a `DistributedSampler` in (order by ``(seed, epoch)``; a mid-epoch resume restarts the epoch).
    ``kwargs`` go to `DataLoader` (``drop_last``, ``num_workers``, ...).
    """
    trainer = getattr(datamodule, "trainer", None)
    generator = torch.Generator().manual_seed(int(seed))
    if trainer is not None and trainer.world_size > 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, **kwargs)

    def consumed() -> int:
        t = getattr(datamodule, "trainer", None)
        return t.fit_loop.epoch_loop.batch_progress.current.ready if t is not None else 0

    sampler = EpochSampler(len(dataset), seed, consumed)
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)
