"""An embedded, procedurally drawn captioned image data set ("shapes"), and a loader for any
image + caption data set.

Every image is a 64x64 RGB picture of one coloured shape on a plain background, drawn from five
attributes (colour, shape, size, position, background) with small seeded jitter (offset, scale,
colour). Its caption names all five, e.g. ``"a small red triangle at the top left on a black
background"``; every caption word is one token of `splitldm.pipeline.tokenizer.DEFAULT_WORDS`, and
`parse_caption` turns a caption back into attributes (prompt adherence is measured that way).

Nothing is downloaded: image ``i`` of a split is a pure function of ``(split seed, i)``.
Splits: ``"train"`` (seed 0), ``"test"`` (held-out seeds, same attribute distribution).
With ``holdout_combos=True`` a fixed 10% of the attribute combinations never appear in ``train``
and ``"test"`` draws only from them (compositional generalisation).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw

#: Attribute name -> the words of its values (index = integer label).
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
BACKGROUNDS = ("black", "white", "gray")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": COLORS, "shape": SHAPES, "size": SIZES, "position": POSITIONS, "background": BACKGROUNDS,
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

IMAGE_SIZE = 64
_RGB = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (35, 60, 230), "yellow": (240, 220, 30),
    "magenta": (220, 40, 220), "cyan": (30, 215, 225),
    "black": (15, 15, 15), "white": (240, 240, 240), "gray": (128, 128, 128),
}
_CENTERS = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
            "bottom right": (0.73, 0.73), "center": (0.5, 0.5)}
_RADIUS = {"small": 0.12, "large": 0.21}  # half-extent, fraction of the image side
_SPLIT_SEEDS = {"train": 0, "test": 1_000_003}
_SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges


@dataclass(frozen=True)
class Scene:
    """One image's attributes as integer labels (indices into the tuples above)."""

    color: int
    shape: int
    size: int
    position: int
    background: int

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ATTRIBUTE_NAMES}

    def caption(self) -> str:
        return make_caption(**self.as_dict())


def make_caption(color: int, shape: int, size: int, position: int, background: int) -> str:
    """The caption of an attribute combination: ``"a {size} {color} {shape} at the {position} on a {bg} background"``."""
    return (f"a {SIZES[size]} {COLORS[color]} {SHAPES[shape]} at the {POSITIONS[position]} "
            f"on a {BACKGROUNDS[background]} background")


def parse_caption(caption: str) -> dict[str, int | None]:
    """Attributes named in ``caption`` (None for an attribute it does not name).

    Word order does not matter except that the background colour is the colour word directly
    before ``background``; positions are read from ``top``/``bottom`` and ``left``/``right``
    (``center``/``centre``/``middle`` alone means the centre).
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a str, got {type(caption).__name__}")
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    out: dict[str, int | None] = {k: None for k in ATTRIBUTE_NAMES}
    bg_idx = None
    if "background" in words:
        i = words.index("background")
        if i > 0 and words[i - 1] in BACKGROUNDS:
            out["background"] = BACKGROUNDS.index(words[i - 1])
            bg_idx = i - 1
    for j, w in enumerate(words):
        if j == bg_idx:
            continue
        if w in COLORS and out["color"] is None:
            out["color"] = COLORS.index(w)
        elif w in SHAPES and out["shape"] is None:
            out["shape"] = SHAPES.index(w)
        elif w in SIZES and out["size"] is None:
            out["size"] = SIZES.index(w)
    vert = "top" if "top" in words else "bottom" if "bottom" in words else None
    horiz = "left" if "left" in words else "right" if "right" in words else None
    if vert and horiz:
        out["position"] = POSITIONS.index(f"{vert} {horiz}")
    elif any(w in words for w in ("center", "centre", "middle")):
        out["position"] = POSITIONS.index("center")
    return out


def all_combinations() -> list[Scene]:
    """Every attribute combination, in a fixed order (6*4*2*5*3 = 720)."""
    return [Scene(c, s, z, p, b) for c in range(len(COLORS)) for s in range(len(SHAPES))
            for z in range(len(SIZES)) for p in range(len(POSITIONS)) for b in range(len(BACKGROUNDS))]


def heldout_combinations(fraction: float = 0.1) -> frozenset[Scene]:
    """A fixed ``fraction`` of the combinations, chosen by a hash (no RNG state involved)."""
    def key(s: Scene) -> int:
        return int(hashlib.sha256(s.caption().encode()).hexdigest()[:8], 16)
    combos = sorted(all_combinations(), key=key)
    return frozenset(combos[: int(round(fraction * len(combos)))])


def sample_scene(rng: np.random.Generator, split: str = "train", holdout_combos: bool = False) -> Scene:
    """Draw uniform attributes; with ``holdout_combos`` train avoids and test uses only the held-out set."""
    if holdout_combos:
        held = sorted(heldout_combinations(), key=lambda s: s.caption())
        if split == "test":
            return held[int(rng.integers(len(held)))]
        while True:
            scene = Scene(*(int(rng.integers(len(v))) for v in ATTRIBUTES.values()))
            if scene not in held:
                return scene
    return Scene(*(int(rng.integers(len(v))) for v in ATTRIBUTES.values()))


def render(scene: Scene, rng: np.random.Generator | None = None, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB PIL image of side ``image_size``; ``rng`` adds the jitter (None: none)."""
    s = image_size * _SUPERSAMPLE
    def jit(scale: float) -> float:
        return float(rng.uniform(-scale, scale)) if rng is not None else 0.0
    bg = tuple(int(np.clip(v + jit(12), 0, 255)) for v in _RGB[BACKGROUNDS[scene.background]])
    fg = tuple(int(np.clip(v + jit(20), 0, 255)) for v in _RGB[COLORS[scene.color]])
    cx, cy = _CENTERS[POSITIONS[scene.position]]
    cx, cy = (cx + jit(0.04)) * s, (cy + jit(0.04)) * s
    r = _RADIUS[SIZES[scene.size]] * (1.0 + jit(0.12)) * s
    img = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(img)
    shape = SHAPES[scene.shape]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "square":
        q = r * 0.85  # equal-area-ish with the circle
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fg)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=fg)
    else:  # cross: two bars, a third of the extent thick
        t = r / 3
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)
    return img.resize((image_size, image_size), Image.Resampling.BOX)


def _item_rng(split: str, index: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([_SPLIT_SEEDS[split], seed, index])


def _check_split(split: str) -> None:
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"split: expected one of {sorted(_SPLIT_SEEDS)}, got {split!r}")


def make_example(index: int, split: str = "train", seed: int = 0, holdout_combos: bool = False
                 ) -> tuple[Image.Image, Scene]:
    """Example ``index`` of ``split``: a pure function of ``(split, seed, index, holdout_combos)``."""
    _check_split(split)
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index: expected a non-negative int, got {index!r}")
    rng = _item_rng(split, int(index), seed)
    scene = sample_scene(rng, split, holdout_combos)
    return render(scene, rng), scene


def shapes_dataset(num_examples: int = 1000, split: str = "train", seed: int = 0,
                   holdout_combos: bool = False):
    """The embedded data set as a Hugging Face `datasets.Dataset`.

    Columns: ``image`` (PIL 64x64 RGB), ``caption`` (str) and the integer attribute labels
    ``color``, ``shape``, ``size``, ``position``, ``background``. Same arguments, same rows.
    """
    import datasets

    _check_split(split)
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples: expected a positive int, got {num_examples!r}")
    cols: dict[str, list] = {"image": [], "caption": [], **{k: [] for k in ATTRIBUTE_NAMES}}
    for i in range(num_examples):
        img, scene = make_example(i, split, seed, holdout_combos)
        cols["image"].append(img)
        cols["caption"].append(scene.caption())
        for k, v in scene.as_dict().items():
            cols[k].append(v)
    features = datasets.Features({
        "image": datasets.Image(), "caption": datasets.Value("string"),
        **{k: datasets.Value("int64") for k in ATTRIBUTE_NAMES},
    })
    return datasets.Dataset.from_dict(cols, features=features)


def render_batch(indices: Iterable[int], split: str = "train", seed: int = 0, holdout_combos: bool = False
                 ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Examples as tensors, without going through `datasets` (fast path for training).

    Returns ``images`` (N, 3, 64, 64) float in [0, 1], ``captions`` (N strings) and ``labels``
    (N, 5) int64 in `ATTRIBUTE_NAMES` order.
    """
    imgs, caps, labels = [], [], []
    for i in indices:
        img, scene = make_example(int(i), split, seed, holdout_combos)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))
        caps.append(scene.caption())
        labels.append([getattr(scene, k) for k in ATTRIBUTE_NAMES])
    if not imgs:
        raise ValueError("indices: empty")
    images = torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0
    return images, caps, torch.tensor(labels, dtype=torch.long)


def prompts_for(num: int, split: str = "test", seed: int = 0, holdout_combos: bool = False) -> list[str]:
    """``num`` captions of ``split`` (the prompts used to evaluate generation)."""
    _check_split(split)
    return [sample_scene(_item_rng(split, i, seed), split, holdout_combos).caption() for i in range(num)]


# ---------------------------------------------------------------------------------------------
# Any image + caption data set (imagefolder with metadata.jsonl, or a hub id when online)
# ---------------------------------------------------------------------------------------------

@dataclass
class ImageCaptionTensors:
    """A data set as tensors: ``images`` (N, 3, H, W) float in [0, 1] and ``captions`` (N strings)."""

    images: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def load_image_caption_dataset(source: str | Path, split: str = "train", image_size: int = IMAGE_SIZE,
                               image_column: str = "image", caption_column: str = "caption",
                               max_examples: int | None = None, cache_dir: str | None = None
                               ) -> ImageCaptionTensors:
    """Load any `datasets` image + caption set and turn it into tensors for training.

    ``source`` is a local folder (read with the ``imagefolder`` builder: images plus a
    ``metadata.jsonl`` with ``file_name`` and a caption column) or, when online, a hub data set id.
    Images are converted to RGB, centre-cropped to a square and resized to ``image_size``.
    """
    import datasets

    if not isinstance(source, (str, Path)):
        raise TypeError(f"source: expected a path or a data set id, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "metadata.jsonl").exists() and not any(path.glob("*/metadata.jsonl")):
            raise FileNotFoundError(f"source: {path} has no metadata.jsonl (imagefolder needs one for captions)")
        ds = datasets.load_dataset("imagefolder", data_dir=str(path), split=split, cache_dir=cache_dir)
    elif str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"source: no such folder {source!r}")
    else:
        ds = datasets.load_dataset(str(source), split=split, cache_dir=cache_dir)
    for col in (image_column, caption_column):
        if col not in ds.column_names:
            raise ValueError(f"source: column {col!r} not in data set columns {ds.column_names}")
    n = len(ds) if max_examples is None else min(len(ds), int(max_examples))
    if n == 0:
        raise ValueError(f"source: data set {source!r} split {split!r} is empty")
    imgs, caps = [], []
    for row in ds.select(range(n)):
        img = row[image_column].convert("RGB")
        w, h = img.size
        side = min(w, h)
        img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))
        caps.append(str(row[caption_column]))
    images = torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0
    return ImageCaptionTensors(images, caps)


def write_imagefolder(folder: str | Path, num_examples: int = 8, split: str = "train", seed: int = 0) -> Path:
    """Write embedded examples as an ``imagefolder`` (PNG files + ``metadata.jsonl``); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_examples):
        img, scene = make_example(i, split, seed)
        name = f"{i:05d}.png"
        img.save(folder / name)
        lines.append(json.dumps({"file_name": name, "caption": scene.caption(), **scene.as_dict()}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


__all__ = [
    "ATTRIBUTES", "ATTRIBUTE_NAMES", "COLORS", "SHAPES", "SIZES", "POSITIONS", "BACKGROUNDS", "Scene",
    "make_caption", "parse_caption", "all_combinations", "heldout_combinations", "sample_scene", "render",
    "make_example", "shapes_dataset", "render_batch", "prompts_for", "ImageCaptionTensors",
    "load_image_caption_dataset", "write_imagefolder",
]

