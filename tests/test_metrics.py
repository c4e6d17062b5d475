"""PSNR / SSIM / Fréchet distance / prompt adherence, and the classifier checkpoint format."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitldm.eval import data, metrics


def test_psnr_per_image_and_known_value():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1, :, :4] += 0.5  # half the pixels off by 0.5: MSE 0.125 -> 9.03 dB
    p = metrics.psnr(b, a)
    assert p.shape == (2,)
    assert torch.allclose(p, torch.tensor([20.0, 10 * np.log10(8.0)], dtype=p.dtype), atol=1e-4)
    assert torch.isinf(metrics.psnr(a, a)).all()
    with pytest.raises(ValueError, match="reference"):
        metrics.psnr(a, torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match="images"):
        metrics.psnr(np.zeros((2, 3, 8, 8)), a)


def test_ssim_identity_and_degradation():
    x, _, _ = data.render_batch(range(3))
    s = metrics.ssim(x, x)
    assert s.shape == (3,) and torch.allclose(s, torch.ones(3), atol=1e-3)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert (metrics.ssim(noisy, x) < 0.9).all()


def test_frechet_distance_matches_closed_form_and_torchmetrics():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # shift by a constant vector: FD = |shift|^2 exactly (same covariance)
    assert metrics.frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-9)

    from torchmetrics.image.fid import FrechetInceptionDistance

    clf = metrics.AttributeClassifier(width=8, feature_dim=16)
    torch.manual_seed(0)
    for p in clf.parameters():
        torch.nn.init.normal_(p, std=0.2)  # random but non-degenerate features
    extractor = metrics.ClassifierFeatures(clf)

    class Module(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return extractor(x)

    real, _, _ = data.render_batch(range(64), "train")
    fake, _, _ = data.render_batch(range(64), "test")
    fake = (fake * 0.8 + 0.1).clamp(0, 1)
    tm = FrechetInceptionDistance(feature=Module(), normalize=True)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    ours = metrics.fid(real, fake, extractor)
    assert ours["extractor"].startswith("classifier-FID")
    assert ours["n_real"] == 64 and ours["n_generated"] == 64
    assert ours["fid"] == pytest.approx(float(tm.compute()), rel=1e-4, abs=1e-6)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="features_b"):
        metrics.frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="features_a"):
        metrics.frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="extractor"):
        metrics.fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), extractor=lambda x: x)


def test_inception_needs_a_local_weights_file(tmp_path):
    with pytest.raises(ValueError, match="weights_path"):
        metrics.InceptionFeatures(None)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        metrics.InceptionFeatures(tmp_path / "missing.pth")


def test_prompt_adherence_with_an_oracle_classifier():
    class Oracle(metrics.AttributeClassifier):
        """Reads the labels smuggled in the first pixel row (test double)."""

        def predict(self, images):
            return images[:, 0, 0, :5].round().long()

    prompts = [data.make_caption(1, 2, 0, 3, 1), data.make_caption(0, 0, 1, 4, 2), "a red circle"]
    imgs = torch.zeros(3, 3, 8, 8)
    imgs[0, 0, 0, :5] = torch.tensor([1, 2, 0, 3, 1.0])  # all match
    imgs[1, 0, 0, :5] = torch.tensor([0, 0, 1, 3, 2.0])  # wrong position
    imgs[2, 0, 0, :5] = torch.tensor([0, 0, 1, 1, 1.0])  # red circle: unnamed attributes ignored
    share, per = metrics.prompt_adherence(imgs, prompts, Oracle(), per_attribute=True)
    assert share == pytest.approx(2 / 3)
    assert per["position"] == pytest.approx(0.5) and per["color"] == 1.0
    with pytest.raises(ValueError, match="prompts"):
        metrics.prompt_adherence(imgs, prompts[:2], Oracle())


def test_classifier_save_load_and_errors(tmp_path):
    clf = metrics.AttributeClassifier(width=8, feature_dim=16)
    clf.save(tmp_path / "c")
    back = metrics.load_classifier(tmp_path / "c")
    x, _, _ = data.render_batch(range(2))
    assert torch.equal(back.features(x), clf.eval().features(x))
    assert back.predict(x).shape == (2, 5)
    (tmp_path / "c" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="classifier"):
        metrics.load_classifier(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        metrics.load_classifier(tmp_path / "c")


_REFERENCE_LOGITS = [  # shipped classifier on render_batch(range(4), split="test"), computed before the port
    [[4.991042, -4.59618, -3.516438, -3.15828, -1.155088, -4.091686], [-3.69812, -0.2784239, 0.3983248, -3.203377, -6.092685, 5.380524], [-6.487651, -2.270453, -0.2192073, -3.548252, -8.276773, 8.753301], [-3.96614, -2.376547, -1.609761, -4.256248, -8.642984, 7.703854]],
    [[0.6221869, -1.746559, 9.118518, -2.870416], [3.848211, -11.93804, -1.043124, 10.93923], [6.667626, -0.4951046, -4.194309, 3.287068], [2.39221, -6.621722, 11.92735, 0.3753543]],
    [[5.492271, -8.075419], [6.713346, -4.039806], [8.609228, -5.155787], [-6.654947, 5.327477]],
    [[-4.650325, -4.129055, 8.789102, -3.256006, -6.236804], [-5.628515, -4.375409, -4.75741, -5.569599, 3.733592], [-6.798488, -5.491496, -5.1826, 9.102296, -5.75203], [-6.22931, -5.000982, 9.71517, -2.955301, -4.61689]],
    [[-8.732441, -6.476411, 5.61378], [3.460565, -6.379219, -5.446557], [5.74494, -6.053055, -5.27119], [-8.163981, -9.064524, 3.524337]],
]


def test_shipped_classifier_from_pretrained_gives_the_reference_logits():
    """The diffusers-style loader (zoo name, rewritten config.json) reproduces the pre-port logits."""
    clf = metrics.AttributeClassifier.from_pretrained("classifier")
    assert not clf.training and clf.config["feature_dim"] == 128 and clf.config.width == 32
    x, _, _ = data.render_batch(range(4), split="test", seed=0)
    with torch.no_grad():
        logits = clf(x)
    assert len(logits) == len(_REFERENCE_LOGITS)
    for got, want in zip(logits, _REFERENCE_LOGITS):
        assert torch.allclose(got, torch.tensor(want), rtol=0, atol=1e-5)
    same = metrics.load_classifier()  # the convenience: a plain call of from_pretrained, no warning
    assert all(torch.equal(a, b) for a, b in zip(same(x), logits))


def test_classifier_save_pretrained_round_trip_and_deprecated_aliases(tmp_path):
    import warnings

    clf = metrics.AttributeClassifier(width=8, feature_dim=16, image_size=32)
    folder = clf.save_pretrained(tmp_path / "c")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["_class_name"] == "AttributeClassifier" and cfg["image_size"] == 32
    back = metrics.AttributeClassifier.from_pretrained(folder)
    x, _, _ = data.render_batch(range(2))
    assert torch.equal(back.features(x), clf.eval().features(x))
    with pytest.warns(DeprecationWarning, match="save_pretrained"):
        clf.save(tmp_path / "old")
    with pytest.warns(DeprecationWarning, match="from_pretrained"):
        old = metrics.AttributeClassifier.load(tmp_path / "old")
    assert torch.equal(old.features(x), back.features(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the convenience loader does not warn
        metrics.load_classifier(folder)


def test_classifier_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TypeError, match="pretrained_model_name_or_path"):
        metrics.AttributeClassifier.from_pretrained(3)
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        metrics.AttributeClassifier.from_pretrained(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        metrics.AttributeClassifier.from_pretrained("someone/some-classifier")
    with pytest.raises(FileNotFoundError, match="name_or_path"):
        metrics.load_classifier(tmp_path / "nothing")
    with pytest.raises(ValueError, match="width"):
        metrics.AttributeClassifier(width=12)
    with pytest.raises(ValueError, match="attributes"):
        metrics.AttributeClassifier(attributes={"color": ["red"]})
    metrics.AttributeClassifier(width=8, feature_dim=4).save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**cfg, "depth": 3}))
    with pytest.raises(ValueError, match="depth"):
        metrics.AttributeClassifier.from_pretrained(tmp_path / "c")


# ============================================================================ bad inputs (issue 12)
_X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
_NAN = _X.clone()
_NAN[0, 0, 0, 0] = math.nan
_INF = _X.clone()
_INF[1, 2, 3, 4] = math.inf


class _NaNFeatures:
    name = "nan-features"

    def __call__(self, images):
        return torch.full((len(images), 4), math.nan)


#: (entry point, call, exception, text of the error, kind of bad input, outcome)
_METRICS = [
    ("`psnr`", lambda: metrics.psnr(_X * 255, _X), ValueError, "images: values must lie in \\[0.0, 1.0\\]",
     "images in [0, 255] with the default `data_range=1`", "ValueError naming `images`, the range and the tolerance"),
    ("`psnr`", lambda: metrics.psnr(_NAN, _X), ValueError, "images: must be finite", "NaN in `images`",
     "ValueError naming `images`"),
    ("`psnr`", lambda: metrics.psnr(_X, _INF), ValueError, "reference: must be finite", "inf in `reference`",
     "ValueError naming `reference`"),
    ("`psnr`", lambda: metrics.psnr(_X - 0.5, _X), ValueError, "images: values must lie", "negative images",
     "ValueError naming `images`"),
    ("`psnr`", lambda: metrics.psnr(_X, _X, data_range=0), ValueError, "data_range", "`data_range=0`",
     "ValueError naming `data_range`"),
    ("`psnr`", lambda: metrics.psnr(_X, _X, data_range=math.nan), ValueError, "data_range", "`data_range=NaN`",
     "ValueError naming `data_range`"),
    ("`psnr`", lambda: metrics.psnr(_X.to(torch.complex64), _X), TypeError, "images", "complex images",
     "TypeError naming `images`"),
    ("`psnr`", lambda: metrics.psnr(_X[0], _X[0]), ValueError, "images: expected 4 dimensions", "(C, H, W) images",
     "ValueError naming `images` and the shape"),
    ("`ssim`", lambda: metrics.ssim(_X[..., :8, :8], _X[..., :8, :8]), ValueError, "images: dimension 2 must be >= 11",
     "images of 8 x 8 pixels (smaller than the 11 x 11 window)", "ValueError naming `images` and the minimum"),
    ("`ssim`", lambda: metrics.ssim(_X * 255, _X * 255), ValueError, "images: values must lie",
     "images in [0, 255] with `data_range=1`", "ValueError naming `images`"),
    ("`ssim`", lambda: metrics.ssim(_X, _NAN), ValueError, "reference: must be finite", "NaN in `reference`",
     "ValueError naming `reference`"),
    ("`frechet_distance`", lambda: metrics.frechet_distance(torch.full((5, 3), math.nan), torch.zeros(5, 3)),
     ValueError, "features_a: must be finite", "NaN features", "ValueError naming `features_a` (no linear-algebra error)"),
    ("`frechet_distance`", lambda: metrics.frechet_distance(torch.zeros(5, 3), torch.zeros(1, 3)), ValueError,
     "features_b: expected \\(N >= 2", "one feature row", "ValueError naming `features_b`: a covariance needs 2"),
    ("`frechet_distance`", lambda: metrics.frechet_distance(torch.zeros(5), torch.zeros(5, 1)), ValueError,
     "features_a: expected 2 dimensions", "1-D features", "ValueError naming `features_a`"),
    ("`frechet_distance`", lambda: metrics.frechet_distance(np.array([["a"], ["b"]]), np.zeros((2, 1))), TypeError,
     "features_a", "an array of strings", "TypeError naming `features_a`"),
    ("`frechet_distance`", lambda: metrics.frechet_distance(torch.randn(5, 3, dtype=torch.float64) * 1e200,
                                                            torch.zeros(5, 3, dtype=torch.float64)),
     ValueError, "overflows float64", "features of magnitude 1e200", "ValueError: rescale the features"),
    ("`fid`", lambda: metrics.fid(_X, _X[:1], _NaNFeatures()), ValueError, "generated: FID needs at least 2",
     "one generated image", "ValueError naming `generated` (the demo and evaluate skip FID instead)"),
    ("`fid`", lambda: metrics.fid(_X * 255, _X, _NaNFeatures()), ValueError, "real: values must lie",
     "real images in [0, 255]", "ValueError naming `real`"),
    ("`fid`", lambda: metrics.fid(_X, _X, _NaNFeatures()), ValueError, "extractor\\(real\\): must be finite",
     "an extractor that returns NaN", "ValueError naming the extractor's output"),
    ("`InceptionFeatures`", lambda: metrics.InceptionFeatures(3), TypeError, "weights_path", "a number as the path",
     "TypeError naming `weights_path`"),
    ("`InceptionFeatures`", lambda: metrics.InceptionFeatures(__file__, feature=1000), ValueError, "feature",
     "`feature=1000`", "ValueError naming `feature` and the choices"),
]

#: (entry point, kind of bad input, what the user gets): collected into docs/guides/bad-inputs.md.
CASES = [c[0:1] + c[4:6] for c in _METRICS] + [
    ("`psnr` / `ssim`", "random shapes, ranges, NaN / inf (Hypothesis, 60 + 30 examples)",
     "a correct value (PSNR >= 0 dB or +inf, SSIM in [-1, 1]) or ValueError; nothing else"),
    ("`frechet_distance`", "random sizes, magnitudes, NaN (Hypothesis, 60 examples)",
     "a finite distance >= 0 (0 for equal sets, |shift|^2 for a shift) or ValueError; nothing else"),
]


@pytest.mark.parametrize("entry,call,exc,needle", [c[:4] for c in _METRICS], ids=[f"{c[0]} {c[4]}" for c in _METRICS])
def test_metric_inputs_are_checked(entry, call, exc, needle):
    with pytest.raises(exc, match=needle):
        call()


def test_float_noise_beyond_the_range_is_tolerated_and_255_needs_data_range():
    noisy = (_X * (1 + 5e-4)).clamp_min(0)  # a decoder's 1.0000x
    assert torch.isfinite(metrics.psnr(noisy, _X)).all()
    assert torch.allclose(metrics.psnr(_X * 255, (_X * 255).round(), data_range=255),
                          metrics.psnr(_X, (_X * 255).round() / 255), atol=1e-3)
    assert torch.allclose(metrics.ssim(_X * 255, _X * 255, data_range=255), torch.ones(2), atol=1e-4)


_shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 14), st.integers(1, 14))
_values = st.floats(-0.5, 2.0, allow_nan=False, width=32) | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0])


def _images(draw, shape):
    n = math.prod(shape)
    vals = draw(st.lists(_values, min_size=n, max_size=n))
    return torch.tensor(vals, dtype=torch.float32).reshape(shape)


def _in_range(x, data_range=1.0):
    tol = metrics.IMAGE_RANGE_TOLERANCE * data_range
    return bool(torch.isfinite(x).all()) and float(x.min()) >= -tol and float(x.max()) <= data_range + tol


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_psnr_property_value_or_clean_error(data):
    shape = data.draw(_shapes)
    a = _images(data.draw, shape)
    b = _images(data.draw, shape) if data.draw(st.booleans()) else a.clone()
    try:
        p = metrics.psnr(a, b)
    except ValueError as exc:
        assert str(exc).startswith(("images:", "reference:"))
        assert not (_in_range(a) and _in_range(b))
        return
    assert _in_range(a) and _in_range(b)
    assert p.shape == (shape[0],) and not torch.isnan(p).any() and (p > -0.1).all()
    assert torch.isinf(p[(a - b).flatten(1).abs().amax(1) == 0]).all()


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_ssim_property_value_or_clean_error(data):
    shape = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(8, 13), st.integers(8, 13)))
    a, b = _images(data.draw, shape), _images(data.draw, shape)
    try:
        s = metrics.ssim(a, b)
    except ValueError as exc:
        assert str(exc).startswith(("images:", "reference:"))
        assert min(shape[2:]) < metrics.SSIM_WINDOW or not (_in_range(a) and _in_range(b))
        return
    assert min(shape[2:]) >= metrics.SSIM_WINDOW and _in_range(a) and _in_range(b)
    assert s.shape == (shape[0],) and torch.isfinite(s).all() and (s.abs() <= 1 + 1e-4).all()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 6), d=st.integers(1, 4), scale=st.sampled_from([1e-3, 1.0, 1e3, 1e200]),
       nan=st.booleans(), seed=st.integers(0, 2 ** 16), shift=st.floats(-10, 10))
def test_frechet_property_value_or_clean_error(n, m, d, scale, nan, seed, shift):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    b = torch.randn(m, d, generator=g, dtype=torch.float64) * scale
    if nan:
        a[0, 0] = math.nan
    try:
        fd = metrics.frechet_distance(a, b)
    except ValueError as exc:
        assert str(exc).startswith(("features_a:", "features_b:"))
        assert nan or min(n, m) < 2 or scale > 1e100
        return
    assert not nan and min(n, m) >= 2 and math.isfinite(fd) and fd >= 0
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * max(1.0, scale ** 2))
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(d * shift ** 2, rel=1e-6, abs=1e-6 * scale ** 2)
