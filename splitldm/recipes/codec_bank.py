"""Lightning recipe for a `splitldm.link.codec_bank.SeedCodecBank`: one seed codec per tensor of a UNet cut.

    python -m splitldm.recipes.codec_bank fit --config configs/codec_bank.yaml

`CutFeatureData` runs the pipeline's own split (`SplitPipeline.edge` with ``split_stage``) on many
prompts and keeps the primary tensors of each payload: the latents plus the carry's hidden state and
skip connections, exactly what a cut at that stage sends (with classifier-free guidance the carry has
two rows per prompt, unconditional and conditional; each row is one training feature). They are
cached as safetensors per configuration. `CodecBankModule` is `splitldm.recipes.codec.CodecModule` training a
bank instead of one codec: each codec through the same mixed channel with SNR ~ U[snr_range_db] per
sample; the loss is the mean over tensors of the MSE normalised by the tensor's variance (tensors of
very different scale count alike). The same multi-GPU/multi-node flags as ``splitldm.recipes.codec`` apply.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from splitldm.link.codec_bank import SeedCodecBank, payload_layout
from splitldm.recipes.codec import CodecConfig, CodecLatentData, CodecModule, _fingerprint, make_channel
from splitldm.recipes.resume import shuffled_loader


# ============================================================================ data
@torch.no_grad()
def cut_features(pipe, prompts: Sequence[str], split_step: int, split_stage: int, num_inference_steps: int,
                 guidance_scale: float, generator: torch.Generator, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """What crosses a cut before UNet stage ``split_stage`` of step ``split_step``, for each prompt.

    Returns ``{name: (N, C, h, w) float32}`` for every primary tensor of the `SplitPipeline` payload
    (``latents`` with one row per prompt, ``carry.hidden`` / ``carry.skip.i`` with one row per UNet
    batch row: two per prompt under classifier-free guidance).
    """
    from splitldm.pipeline.split import SplitPipeline

    split = SplitPipeline(pipe, split_step=split_step, split_stage=split_stage, generator_state="none")
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        payload = split.edge(list(prompts[start:start + batch_size]), num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, generator=generator)
        for name in payload_layout(payload):
            out.setdefault(name, []).append(payload.tensors[name].detach().float().cpu())
    return {name: torch.cat(parts).contiguous() for name, parts in out.items()}


class _FeatureRows(Dataset):
    """Row ``i`` of every tensor set (sets with fewer rows wrap around), as a dict."""

    def __init__(self, features: dict[str, torch.Tensor]):
        self.features = features
        self.length = max(t.shape[0] for t in features.values())

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: t[i % t.shape[0]] for name, t in self.features.items()}


class CutFeatureData(CodecLatentData):
    """Features crossing a UNet cut (`cut_features`), cached as safetensors per configuration and split
    (the cache handling is `CodecLatentData`'s).

    Args:
        pipeline: `splitldm.pipeline.models.load_pipeline` name or folder (``tiny``, ``tiny-random``, a path).
        num_train, num_val: prompts per split (embedded shapes captions, `splitldm.eval.data.prompts_for`).
        split_step, split_stage: the cut (as `SplitPipeline`): inside step ``split_step``'s UNet pass,
            before `UNetChain` stage ``split_stage``.
        num_inference_steps, guidance_scale: the sampler that makes the features.
    """

    def __init__(self, pipeline: str = "tiny", num_train: int = 1024, num_val: int = 128, split_step: int = 4,
                 split_stage: int = 3, num_inference_steps: int = 8, guidance_scale: float = 3.0,
                 batch_size: int = 64, cache_dir: str = "runs/codec-bank-cache", seed: int = 0, num_workers: int = 0):
        L.LightningDataModule.__init__(self)  # not CodecLatentData's arguments: only its caching is shared
        self.save_hyperparameters()
        self.train_set: dict[str, torch.Tensor] | None = None
        self.val_set: dict[str, torch.Tensor] | None = None

    def cache_path(self, split: str) -> Path:
        hp = dict(self.hparams)
        ident = {k: hp[k] for k in ("pipeline", "split_step", "split_stage", "num_inference_steps",
                                    "guidance_scale", "seed")}
        ident.update(split=split, num=hp["num_train"] if split == "train" else hp["num_val"],
                     weights=_fingerprint(hp["pipeline"]))
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        return Path(hp["cache_dir"]) / f"cut-{split}-{digest}.safetensors"

    def _build(self, split: str) -> dict[str, torch.Tensor]:
        from splitldm.eval.data import prompts_for
        from splitldm.pipeline.models import load_pipeline

        hp = self.hparams
        prompts = prompts_for(hp.num_train if split == "train" else hp.num_val, split=split, seed=hp.seed)
        g = torch.Generator().manual_seed(hp.seed + (0 if split == "train" else 1))
        return cut_features(load_pipeline(hp.pipeline), prompts, hp.split_step, hp.split_stage,
                            hp.num_inference_steps, hp.guidance_scale, g)

    def layout(self) -> dict[str, list[int]]:
        """``{name: [C, h, w]}`` of the cut's tensors (what the bank must code)."""
        self.setup()
        return {name: list(t.shape[1:]) for name, t in self.train_set.items()}

    def stats(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-tensor, per-channel mean and std of the training features: ``{name: ((C,), (C,))}``."""
        self.setup()
        return {name: (t.mean(dim=(0, 2, 3)), t.std(dim=(0, 2, 3))) for name, t in self.train_set.items()}

    def train_dataloader(self):
        return shuffled_loader(self, _FeatureRows(self.train_set), self.hparams.batch_size, self.hparams.seed,
                               drop_last=True, num_workers=self.hparams.num_workers)  # resumable mid-epoch

    def val_dataloader(self):
        return DataLoader(_FeatureRows(self.val_set), batch_size=max(self.hparams.batch_size, 256),
                          num_workers=self.hparams.num_workers)


# ============================================================================ model
class CodecBankModule(CodecModule):
    """`CodecModule` for a `SeedCodecBank` (optimiser, schedule and export are inherited).

    Args:
        codec: `CodecConfig` shared by every codec of the bank (its ``in_channels`` / ``sample_size``
            are ignored: each codec takes its tensor's shape).
        layout: ``{name: [C, h, w]}``; None: taken from the datamodule at setup (then recorded in the
            hyperparameters, so the checkpoint rebuilds the bank).
        Others as `CodecModule` (no image loss: the features are not latents).
    """

    def __init__(self, codec: CodecConfig | dict | None = None, layout: dict[str, list[int]] | None = None,
                 channels: list[str] = ["awgn", "rayleigh"], csi: str = "mmse",
                 snr_range_db: list[float] = [0.0, 20.0], lr: float = 1e-3, weight_decay: float = 0.0,
                 max_lr_steps: int = 0, val_snr_db: list[float] = [0.0, 10.0, 20.0], export_dir: str | None = None,
                 seed: int = 0):
        super().__init__(codec=codec, channels=channels, csi=csi, snr_range_db=snr_range_db, lr=lr,
                         weight_decay=weight_decay, max_lr_steps=max_lr_steps, val_snr_db=val_snr_db,
                         export_dir=export_dir, seed=seed)
        self.codec = None if layout is None else self._build(layout)

    def _build(self, layout: dict[str, list[int]]) -> SeedCodecBank:
        codec = self.hparams.codec
        kwargs = vars(codec).copy() if isinstance(codec, CodecConfig) else dict(codec or {})
        for key in ("in_channels", "sample_size"):
            kwargs.pop(key, None)
        kwargs.setdefault("snr_range_db", list(self.hparams.snr_range_db))
        return SeedCodecBank.for_layout({name: tuple(shape) for name, shape in layout.items()}, **kwargs)

    def setup(self, stage: str) -> None:
        if self.codec is None:
            dm = self.trainer.datamodule
            self.hparams.layout = dm.layout()
            self.codec = self._build(self.hparams.layout)

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.global_step == 0 and dm is not None and hasattr(dm, "stats"):
            for name, (mean, std) in dm.stats().items():
                if self.codec[name].config.in_mean is None:
                    self.codec[name].set_input_stats(mean, std.clamp_min(1e-3))

    def _losses(self, batch: dict[str, torch.Tensor], snr, generator: torch.Generator, channel) -> dict[str, torch.Tensor]:
        """Per-tensor MSE normalised by the batch variance of that tensor."""
        outs = self.codec(batch, snr, generator=generator, channel=channel)
        return {name: (outs[name]["x_hat"] - x).pow(2).mean() / x.var().clamp_min(1e-12) for name, x in batch.items()}

    def training_step(self, batch, batch_idx):
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
        lo, hi = (float(v) for v in self.hparams.snr_range_db)
        nmse = self._losses(batch, (lo, hi), g, self.channel)
        loss = torch.stack(list(nmse.values())).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/psnr", -10 * torch.log10(loss.detach()), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        for kind in self.hparams.channels:
            channel = make_channel([kind], csi=self.hparams.csi)
            for snr_db in self.hparams.val_snr_db:
                g = torch.Generator().manual_seed(10_000 + batch_idx)
                nmse = self._losses(batch, float(snr_db), g, channel)
                for name, value in nmse.items():
                    self.log(f"val/{kind}_psnr_{snr_db:g}dB/{name}", -10 * torch.log10(value))
                mean = torch.stack(list(nmse.values())).mean()
                self.log(f"val/{kind}_psnr_{snr_db:g}dB", -10 * torch.log10(mean))
                if kind == self.hparams.channels[0] and snr_db == self.hparams.val_snr_db[len(self.hparams.val_snr_db) // 2]:
                    self.log("val/nmse", mean, prog_bar=True)


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.codec_bank fit --config configs/codec_bank.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(CodecBankModule, CutFeatureData, args=args, run=run)


if __name__ == "__main__":
    main()
