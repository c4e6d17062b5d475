"""Data for the recipes: the embedded shapes set (rendered on the fly) or any image + caption set."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from splitldm.eval.data import ATTRIBUTE_NAMES, load_image_caption_dataset, make_example
from splitldm.recipes.resume import shuffled_loader


class ShapesDataset(Dataset):
    """``length`` embedded examples of ``split``; item = dict(images (3,64,64) in [0,1], captions, labels (5,), index)."""

    def __init__(self, length: int, split: str = "train", seed: int = 0, holdout_combos: bool = False,
                 preload: bool = False):
        """``preload``: render every example once into memory (uint8, 12 KiB each) instead of on every
        access; on a GPU the renderer (~0.6 ms per image) would otherwise starve the training loop."""
        self.length, self.split, self.seed, self.holdout_combos = length, split, seed, holdout_combos
        self._items = [self._render(i) for i in range(length)] if preload else None

    def __len__(self) -> int:
        return self.length

    def _render(self, i: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        img, scene = make_example(i, self.split, self.seed, self.holdout_combos)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
        return x.permute(2, 0, 1).contiguous(), scene.caption(), torch.tensor([getattr(scene, k) for k in ATTRIBUTE_NAMES])

    def __getitem__(self, i: int) -> dict:
        x, caption, labels = self._items[i] if self._items is not None else self._render(i)
        return {"images": x.float() / 255.0, "captions": caption, "labels": labels, "index": i}


class TensorCaptionDataset(Dataset):
    """Wraps `splitldm.eval.data.ImageCaptionTensors` (labels are -1: unknown)."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {"images": self.data.images[i], "captions": self.data.captions[i],
                "labels": torch.full((len(ATTRIBUTE_NAMES),), -1), "index": i}


class ShapesDataModule(L.LightningDataModule):
    """Train/val loaders.

    Args:
        batch_size: examples per step.
        num_train: training set size (indices 0..num_train-1 of the train split; the LDM recipe
            caches one latent per index).
        num_val: validation examples (held-out ``test`` split).
        seed: data seed (same seed, same images).
        holdout_combos: keep 10% of attribute combinations out of training (see `splitldm.eval.data`).
        source: None for the embedded set, else an imagefolder path or hub id
            (`splitldm.eval.data.load_image_caption_dataset`); its ``validation_split`` is used for val.
        num_workers: DataLoader workers (0 keeps CPU use to one process).
        preload: render the embedded set once into memory (see `ShapesDataset`); for GPU runs.
    """

    def __init__(self, batch_size: int = 64, num_train: int = 20000, num_val: int = 256, seed: int = 0,
                 holdout_combos: bool = False, source: str | None = None, image_size: int = 64,
                 validation_split: str | None = None, num_workers: int = 0,
                 preload: bool = False):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.source is None:
            self.train_set = ShapesDataset(h.num_train, "train", h.seed, h.holdout_combos, h.preload)
            self.val_set = ShapesDataset(h.num_val, "test", h.seed, h.holdout_combos, h.preload)
        else:
            data = load_image_caption_dataset(h.source, "train", h.image_size, max_examples=h.num_train)
            self.train_set = TensorCaptionDataset(data)
            if h.validation_split:
                val = load_image_caption_dataset(h.source, h.validation_split, h.image_size, max_examples=h.num_val)
                self.val_set = TensorCaptionDataset(val)
            else:
                self.val_set = torch.utils.data.Subset(self.train_set, range(min(h.num_val, len(data))))

    def train_dataloader(self) -> DataLoader:
        return shuffled_loader(self, self.train_set, self.hparams.batch_size, self.hparams.seed,  # resumable
                               num_workers=self.hparams.num_workers, drop_last=len(self.train_set) > self.hparams.batch_size,
                               persistent_workers=self.hparams.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)
