"""PSNR / SSIM / Fréchet distance / prompt adherence, and the classifier checkpoint format."""

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
