"""PSNR / SSIM / Fréchet distance / prompt adherence, and the classifier checkpoint format."""

import json

import numpy as np
import pytest
import torch

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
