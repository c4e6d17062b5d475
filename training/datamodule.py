"""Data for the recipes: the embedded shapes set (rendered on the fly) or any image + caption set."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from splitldm.data import ATTRIBUTE_NAMES, load_image_caption_dataset, make_example


class ShapesDataset(Dataset):
    """``length`` embedded examples of ``split``; item = dict(images (3,64,64) in [0,1], captions, labels (5,), index)."""

    def __init__(self, length: int, split: str = "train", seed: int = 0, holdout_combos: bool = False):
        self.length, self.split, self.seed, self.holdout_combos = length, split, seed, holdout_combos

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        img, scene = make_example(i, self.split, self.seed, self.holdout_combos)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
        return {"images": x.permute(2, 0, 1).float() / 255.0, "captions": scene.caption(),
                "labels": torch.tensor([getattr(scene, k) for k in ATTRIBUTE_NAMES]), "index": i}


class TensorCaptionDataset(Dataset):
    """Wraps `splitldm.data.ImageCaptionTensors` (labels are -1: unknown)."""

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
        holdout_combos: keep 10% of attribute combinations out of training (see `splitldm.data`).
        source: None for the embedded set, else an imagefolder path or hub id
            (`splitldm.data.load_image_caption_dataset`); its ``validation_split`` is used for val.
        num_workers: DataLoader workers (0 keeps CPU use to one process).
    """

    def __init__(self, batch_size: int = 64, num_train: int = 20000, num_val: int = 256, seed: int = 0,
                 holdout_combos: bool = False, source: str | None = None, image_size: int = 64,
                 validation_split: str | None = None, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.source is None:
            self.train_set = ShapesDataset(h.num_train, "train", h.seed, h.holdout_combos)
            self.val_set = ShapesDataset(h.num_val, "test", h.seed, h.holdout_combos)
        else:
            data = load_image_caption_dataset(h.source, "train", h.image_size, max_examples=h.num_train)
            self.train_set = TensorCaptionDataset(data)
            if h.validation_split:
                val = load_image_caption_dataset(h.source, h.validation_split, h.image_size, max_examples=h.num_val)
                self.val_set = TensorCaptionDataset(val)
            else:
                self.val_set = torch.utils.data.Subset(self.train_set, range(min(h.num_val, len(data))))

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, generator=g,
                          num_workers=self.hparams.num_workers, drop_last=len(self.train_set) > self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)
