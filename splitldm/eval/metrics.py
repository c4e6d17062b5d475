"""Image quality metrics that work offline: PSNR, SSIM, Fréchet distance on any features, and
prompt adherence judged by the shipped attribute classifier.

FID needs a feature extractor. Two are provided, always named in the result:

* `ClassifierFeatures` (the default): the penultimate features of the attribute classifier trained
  on the embedded shapes data (zoo name ``"classifier"``: ``splitldm/checkpoints/classifier``). Its
  numbers are **classifier-FID**, comparable only with other classifier-FID numbers from the same
  checkpoint; never call them Inception FID.
* `InceptionFeatures`: Inception-v3 pool features (torch-fidelity's FID network via
  torchmetrics), only from a weights file the user already has on disk; nothing is ever downloaded.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from splitldm.checks import (IMAGE_RANGE_TOLERANCE, Bound, check_features, check_images, check_tensor, inside,
                             read_config)
from splitldm.eval.data import ATTRIBUTE_NAMES, ATTRIBUTES, parse_caption

#: Side of the SSIM Gaussian window: `ssim` needs images at least this large.
SSIM_WINDOW = 11
#: Fewest images `fid` accepts on each side: a covariance needs two samples (with so few, FID is only a
#: smoke figure; the demo and the evaluation skip it below this count and say so).
MIN_FID_IMAGES = 2


def _check_images(name: str, x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) of any real values (the classifier's and the adherence input), as float32."""
    return check_tensor(x, name, ndim=4, dtype="real").float()


def _image_pair(images, reference, data_range: float, min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    a = check_images(images, "images", data_range=data_range, min_size=min_size)
    b = check_images(reference, "reference", data_range=data_range, min_size=min_size)
    if a.shape != b.shape:
        raise ValueError(f"reference: shape {tuple(b.shape)} does not match images {tuple(a.shape)}")
    return a, b


def psnr(images: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, one value per image: (B,).

    Images are (B, C, H, W) in [0, ``data_range``]; the MSE is the per-image mean over C, H, W.
    Identical images give +inf.

    Raises:
        TypeError: not tensors (or complex / bool). ValueError: shapes differ, NaN / inf, or values
        outside ``[0, data_range]`` beyond float noise (`splitldm.checks.IMAGE_RANGE_TOLERANCE` times
        ``data_range``): images in [0, 255] need ``data_range=255``.
    """
    a, b = _image_pair(images, reference, data_range)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(float(data_range) ** 2 / mse)


def ssim(images: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Gaussian window 11, sigma 1.5; torchmetrics), one value per image: (B,).

    Images (B, C, H, W) in [0, ``data_range``] (as `psnr`), with H, W >= `SSIM_WINDOW` (11): a smaller
    image has no full window and is refused (ValueError) instead of giving a meaningless number.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _image_pair(images, reference, data_range, min_size=SSIM_WINDOW)
    return structural_similarity_index_measure(a, b, data_range=float(data_range), reduction="none")


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``, in float64; the
    matrix square root goes through symmetric eigendecompositions (stable for singular S).

    Raises:
        TypeError: not a tensor / numeric array. ValueError: not (N, D) with N >= 2 (a covariance needs
        two samples), NaN / inf features, or the dimensions differ.
    """
    a = check_features(features_a, "features_a")
    b = check_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_b: dimension {b.shape[1]} does not match features_a {a.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], a.shape[1]), torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    if not all(bool(torch.isfinite(t).all()) for t in (mu_a, mu_b, cov_a, cov_b)):
        raise ValueError("features_a: the Fréchet distance overflows float64 (features of magnitude "
                         f"{max(float(a.abs().max()), float(b.abs().max())):.3g}); rescale the features")
    ev, vec = torch.linalg.eigh(cov_a)
    sqrt_a = (vec * ev.clamp_min(0).sqrt()) @ vec.T
    mid = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((mid + mid.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt
    if not torch.isfinite(fd):
        raise ValueError("features_a: the Fréchet distance overflows float64 (features of magnitude "
                         f"{max(float(a.abs().max()), float(b.abs().max())):.3g}); rescale the features")
    return float(fd.clamp_min(0))


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that maps images (B, 3, H, W) in [0, 1] to features (B, D), and says what it is.

    ``name`` is recorded next to every FID it produces (e.g. ``"classifier-FID[...]"``).
    """

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------
# The attribute classifier (diffusers ModelMixin / ConfigMixin; safetensors save/load)
# ---------------------------------------------------------------------------------------------

#: File holding the classifier's tensors inside its folder (next to ``config.json``).
CLASSIFIER_WEIGHTS_NAME = "model.safetensors"
#: Sanity bounds of a classifier ``config.json``, checked before the network is built.
CLASSIFIER_BOUNDS = {"width": Bound("int", 8, 4096, nullable=False), "feature_dim": Bound("int", 1, 65536, nullable=False),
                     "image_size": Bound("int", 1, 4096, nullable=False), "attributes": Bound("dict")}


class AttributeClassifier(ModelMixin, ConfigMixin):
    """Small CNN: RGB images in [0, 1] -> ``feature_dim`` features -> one logit vector per attribute.

    Spatial layout survives to the features (4x4 pooled map, flattened), so position is learnable.
    Saved and loaded as diffusers models are: ``save_pretrained(folder)`` writes ``config.json`` and
    ``model.safetensors``; ``from_pretrained`` takes such a folder, the zoo name ``"classifier"``
    (the shipped ``splitldm/checkpoints/classifier``, via `splitldm.zoo`) or a hub id when online.

    Parameters:
        width (`int`, defaults to 32): channels of the first convolution (the widest layer has 4x).
        feature_dim (`int`, defaults to 128): size of the penultimate features (classifier-FID space).
        image_size (`int`, defaults to 64): side (pixels) images are resized to before the network.
        attributes (`dict[str, list[str]]`, *optional*): the attribute vocabulary, one head per key;
            must equal `splitldm.eval.data.ATTRIBUTES` (the default), which the labels index.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, width: int = 32, feature_dim: int = 128, image_size: int = 64,
                 attributes: dict[str, list[str]] | None = None):
        super().__init__()
        vocabulary = {k: list(v) for k, v in ATTRIBUTES.items()}
        if attributes is not None and {k: list(v) for k, v in attributes.items()} != vocabulary:
            raise ValueError("attributes: vocabulary differs from splitldm.eval.data.ATTRIBUTES")
        if attributes is None:
            self.register_to_config(attributes=vocabulary)
        for name, value in (("width", width), ("feature_dim", feature_dim), ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if width % 8:
            raise ValueError(f"width: expected a multiple of 8 (GroupNorm(8, .)), got {width}")
        w = width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(block(3, w, 1), block(w, w, 2), block(w, 2 * w, 2), block(2 * w, 4 * w, 2),
                                  block(4 * w, 4 * w, 1), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.proj = nn.Linear(4 * w * 16, feature_dim)
        self.heads = nn.ModuleList(nn.Linear(feature_dim, len(v)) for v in ATTRIBUTES.values())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim) of images (B, 3, H, W) in [0, 1]."""
        x = _check_images("images", images)
        size = self.config["image_size"]
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return F.silu(self.proj(self.body((x - 0.5) / 0.25)))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Logits per attribute, in `splitldm.eval.data.ATTRIBUTE_NAMES` order: list of (B, n_values)."""
        f = self.features(images)
        return [h(f) for h in self.heads]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted attribute labels (B, 5) int64 of images (B, 3, H, W) in [0, 1]."""
        return torch.stack([lg.argmax(1) for lg in self(images)], 1)

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``save_directory`` (safetensors only)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("safe_serialization: only safetensors is supported")
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"save_directory: expected a path, got {type(save_directory).__name__}")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / CLASSIFIER_WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike = "classifier", *,
                        local_files_only: bool | None = None, **kwargs) -> "AttributeClassifier":
        """Load from a `save_pretrained` folder, the zoo name ``"classifier"`` or a hub id (when online).

        Raises:
            FileNotFoundError: no such folder / zoo model / hub repository, or ``config.json`` /
                ``model.safetensors`` missing (named in the message).
            ValueError: the files are unreadable, or the config does not match this class.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from splitldm.zoo import ARG, resolve_pretrained

        if kwargs:
            raise TypeError(f"from_pretrained: unexpected arguments {sorted(kwargs)}")
        folder = resolve_pretrained(pretrained_model_name_or_path, (cls.config_name,), what="classifier",
                                    local_files_only=bool(local_files_only),
                                    files=f"{cls.config_name}, {CLASSIFIER_WEIGHTS_NAME}")
        missing = [f for f in (cls.config_name, CLASSIFIER_WEIGHTS_NAME) if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{ARG}: {folder} is not a classifier folder; missing {missing}")
        config = read_config(folder, cls.config_name, CLASSIFIER_BOUNDS)  # sizes checked before allocation
        weights = inside(folder, CLASSIFIER_WEIGHTS_NAME)
        try:
            known = {"width", "feature_dim", "image_size", "attributes"}
            unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
            if unknown:
                raise ValueError(f"unknown config keys {unknown}")
            model = cls(**{k: config[k] for k in known if k in config})
            model.load_state_dict(load_file(str(weights)))
        except (SafetensorError, RuntimeError, ValueError, OSError, KeyError, TypeError) as exc:
            raise ValueError(f"pretrained_model_name_or_path: could not load the classifier from {folder}: "
                             f"{exc}") from exc
        return model.eval()

    # ---- deprecated names (one release)
    def save(self, folder: str | os.PathLike) -> Path:
        """Deprecated: use `save_pretrained` (same files)."""
        warnings.warn("AttributeClassifier.save is deprecated; use save_pretrained", DeprecationWarning, stacklevel=2)
        return self.save_pretrained(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "AttributeClassifier":
        """Deprecated: use `from_pretrained` (same files; also takes zoo names and hub ids)."""
        warnings.warn("AttributeClassifier.load is deprecated; use AttributeClassifier.from_pretrained",
                      DeprecationWarning, stacklevel=2)
        return cls.from_pretrained(folder)


def load_classifier(name_or_path: str | os.PathLike = "classifier") -> AttributeClassifier:
    """The shipped attribute classifier (zoo name ``"classifier"``), or one from a folder or hub id.

    A convenience for ``AttributeClassifier.from_pretrained(name_or_path)`` (errors name ``name_or_path``).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a name or a path, got {type(name_or_path).__name__}")
    try:
        return AttributeClassifier.from_pretrained(name_or_path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"name_or_path: {exc}") from exc


class ClassifierFeatures:
    """`FeatureExtractor` from the attribute classifier's penultimate layer ("classifier-FID")."""

    def __init__(self, classifier: AttributeClassifier | str | os.PathLike = "classifier", batch_size: int = 256):
        self.model = classifier if isinstance(classifier, AttributeClassifier) else load_classifier(classifier)
        self.model.eval()
        self.batch_size = batch_size
        self.name = f"classifier-FID[splitldm attribute classifier, {self.model.config['feature_dim']}-d penultimate]"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _check_images("images", images)
        return torch.cat([self.model.features(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)])


class InceptionFeatures:
    """`FeatureExtractor`: Inception-v3 (FID network) 2048-d pool features from a LOCAL weights file.

    ``weights_path``: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (or the same state
    dict saved elsewhere), or the same tensors as a ``.safetensors`` file (preferred). Nothing is
    downloaded (no path, or a missing file, is an error) and nothing is unpickled: a ``.safetensors``
    file is read as such, anything else with ``torch.load(weights_only=True)``, which refuses any
    pickled object but tensors and plain containers (a crafted file is a ValueError, its code never runs).

    Raises:
        ValueError: no path, a file that is not a plain state dict of tensors, or tensors that are not the
            FID Inception-v3's. FileNotFoundError: no such file.
    """

    def __init__(self, weights_path: str | os.PathLike | None, feature: int = 2048):
        if weights_path is None:
            raise ValueError("weights_path: Inception FID needs a local Inception-v3 weights file "
                             "(torch-fidelity's pt_inception-2015-12-05 .pth, or its tensors as .safetensors); "
                             "splitldm never downloads it. Use ClassifierFeatures for offline classifier-FID instead.")
        if not isinstance(weights_path, (str, os.PathLike)):
            raise TypeError(f"weights_path: expected a path, got {type(weights_path).__name__}")
        if feature not in (64, 192, 768, 2048) or isinstance(feature, bool):
            raise ValueError(f"feature: expected one of 64, 192, 768, 2048 (Inception-v3 features), got {feature!r}")
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights_path: no such file {path}")
        self.model = _inception(read_state_dict(path, "weights_path"), feature, path)
        self.feature = str(feature)
        self.name = f"Inception-FID[inception-v3-compat pool {feature}-d, weights {path.name}]"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (_check_images("images", images).clamp(0, 1) * 255).round().to(torch.uint8)
        return self.model(x)[0].reshape(len(x), -1).double()


def read_state_dict(path: str | os.PathLike, name: str = "weights_path") -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path``, never unpickling: ``.safetensors`` with safetensors,
    anything else with ``torch.load(weights_only=True)`` (tensors and plain containers only).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, refused by the safe loader, or not a
        mapping of str -> tensor; every message names ``name``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name}: {path} is not a valid safetensors file: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any failure of the restricted unpickler means: not a plain tensor file
            raise ValueError(f"{name}: {path} is not a plain tensor file; torch.load(weights_only=True) refused it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). splitldm "
                             "never unpickles arbitrary objects: save the tensors with safetensors.") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{name}: {path} does not hold a state dict (a mapping of names to tensors)")
    return state


_INCEPTION_LOCK = threading.Lock()


def _inception(state: dict[str, torch.Tensor], feature: int, path: Path) -> nn.Module:
    """torch-fidelity's FID Inception-v3 with ``state`` loaded (its own loader, which unpickles, never runs:
    it is handed the already checked state dict)."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    def provide(*args, **kwargs):
        return state

    try:
        with _INCEPTION_LOCK, mock.patch.object(fe, "load_state_dict_from_url", provide):
            model = fe.FeatureExtractorInceptionV3(name="inception-v3-compat", features_list=[str(feature)])
    except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, wrong shapes
        raise ValueError(f"weights_path: {path} does not hold the FID Inception-v3 weights: "
                         f"{str(exc).splitlines()[0][:300]}") from exc
    return model.eval()


def fid(real: torch.Tensor, generated: torch.Tensor, extractor: FeatureExtractor) -> dict:
    """FID between image sets (N, 3, H, W) and (M, 3, H, W) in [0, 1] under ``extractor``.

    Returns ``{"fid": float, "extractor": extractor.name, "n_real": N, "n_generated": M}`` so that
    the number always travels with the network that produced it.
    """
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError("extractor: expected a FeatureExtractor (callable with a `name`)")
    real, generated = check_images(real, "real"), check_images(generated, "generated")
    for name, x in (("real", real), ("generated", generated)):
        if len(x) < MIN_FID_IMAGES:
            raise ValueError(f"{name}: FID needs at least {MIN_FID_IMAGES} images (a covariance), got {len(x)}")
    fr, fg = extractor(real), extractor(generated)
    for name, f, n in (("real", fr, len(real)), ("generated", fg, len(generated))):
        check_features(f, f"extractor({name})")
        if len(f) != n:
            raise ValueError(f"extractor({name}): expected {n} feature rows, got shape {tuple(f.shape)}")
    return {"fid": frechet_distance(fr, fg), "extractor": extractor.name, "n_real": len(fr), "n_generated": len(fg)}


def prompt_adherence(images: torch.Tensor, prompts: Sequence[str],
                     classifier: AttributeClassifier | None = None, per_attribute: bool = False):
    """Share of ``images`` (B, 3, H, W) in [0, 1] whose predicted attributes ALL match their prompt.

    Each prompt is parsed back into attributes (`splitldm.eval.data.parse_caption`); attributes a prompt
    does not name are not checked. With ``per_attribute`` also returns per-attribute accuracies.
    """
    x = _check_images("images", images)
    if not isinstance(prompts, str) and len(prompts) == 0:
        raise ValueError("prompts: the prompt list is empty")
    if isinstance(prompts, str) or len(prompts) != len(x):
        raise ValueError(f"prompts: expected a list of {len(x)} strings, got {type(prompts).__name__}")
    model = classifier if classifier is not None else load_classifier()
    pred = torch.cat([model.predict(x[i:i + 256]) for i in range(0, len(x), 256)])
    ok = torch.ones(len(x), dtype=torch.bool)
    per = {}
    for j, k in enumerate(ATTRIBUTE_NAMES):
        want = [parse_caption(p)[k] for p in prompts]
        named = torch.tensor([w is not None for w in want])
        target = torch.tensor([w if w is not None else -1 for w in want])
        match = (pred[:, j] == target) | ~named
        ok &= match
        per[k] = float(match[named].float().mean()) if named.any() else float("nan")
    share = float(ok.float().mean())
    return (share, per) if per_attribute else share


__all__ = ["psnr", "ssim", "frechet_distance", "FeatureExtractor", "AttributeClassifier", "load_classifier",
           "ClassifierFeatures", "InceptionFeatures", "read_state_dict", "fid", "prompt_adherence", "SSIM_WINDOW",
           "MIN_FID_IMAGES", "IMAGE_RANGE_TOLERANCE"]
