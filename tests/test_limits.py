"""Information-theoretic limits: hand-computed values, water-filling, monotonicity, latent covariance."""

import math

import numpy as np
import pytest
import torch

from splitldm.analysis.limits import (awgn_capacity, gaussian_opta_mse, latent_covariance, opta_mse,
                             rayleigh_ergodic_capacity, reverse_water_filling, separation_bits)


def test_capacities_hand_values():
    assert awgn_capacity(0.0) == pytest.approx(1.0)
    assert awgn_capacity(10 * math.log10(3)) == pytest.approx(2.0)
    # Rayleigh ergodic capacity, log2(e) e^(1/SNR) E1(1/SNR): DOMAIN.md reference values
    for snr_db, c in [(0.0, 0.860), (10.0, 2.907), (20.0, 5.884)]:
        assert rayleigh_ergodic_capacity(snr_db) == pytest.approx(c, abs=5e-4)
    # Monte-Carlo check of E[log2(1 + |h|^2 SNR)] at 10 dB
    g = torch.Generator().manual_seed(0)
    e = -torch.log(torch.rand(1 << 20, generator=g, dtype=torch.float64))  # |h|^2 ~ Exp(1)
    assert torch.log2(1 + 10 * e).mean().item() == pytest.approx(rayleigh_ergodic_capacity(10.0), abs=5e-3)
    # Jensen: fading never beats AWGN at the same average SNR; very low SNR still finite
    s = np.array([-20.0, -5.0, 0.0, 15.0, 40.0])
    assert np.all(rayleigh_ergodic_capacity(s) < awgn_capacity(s))
    assert 0 < rayleigh_ergodic_capacity(-35.0) < awgn_capacity(-35.0)


def test_gaussian_opta_hand_values():
    assert gaussian_opta_mse(2.0, 10.0, 0.5) == pytest.approx(2.0 / 11.0)
    assert gaussian_opta_mse(1.0, 0.0, 1.0) == pytest.approx(0.25)  # (1+1)^-2
    assert gaussian_opta_mse(1.0, 10.0, 1 / 16) == pytest.approx(11 ** (-1 / 8))
    assert gaussian_opta_mse(3.0, 20.0, 0.0) == pytest.approx(3.0)
    c = rayleigh_ergodic_capacity(10.0)
    assert opta_mse(1.0, 10.0, 0.5, "rayleigh") == pytest.approx(2 ** (-c))
    assert separation_bits(1000, 0.0) == pytest.approx(1000.0)
    assert separation_bits(100, 20.0, "rayleigh") == pytest.approx(100 * rayleigh_ergodic_capacity(20.0))


def test_opta_monotone():
    snrs = np.linspace(-20, 40, 61)
    d = np.asarray(gaussian_opta_mse(1.0, snrs, 0.25))
    assert np.all(np.diff(d) < 0)
    rhos = [0.01, 0.1, 0.5, 1.0]
    assert all(gaussian_opta_mse(1.0, 5.0, a) > gaussian_opta_mse(1.0, 5.0, b) for a, b in zip(rhos, rhos[1:]))
    assert np.all(np.asarray(opta_mse(1.0, snrs, 0.25, "rayleigh")) > d)  # fading costs
    assert np.all(np.diff(rayleigh_ergodic_capacity(snrs)) > 0)


@pytest.mark.parametrize("snr_db,rho", [(0.0, 0.5), (10.0, 1 / 16), (25.0, 0.3)])
def test_water_filling_equal_variances_is_scalar_formula(snr_db, rho):
    wf = reverse_water_filling(np.full(64, 2.5), rho, snr_db)
    assert wf.mse == pytest.approx(gaussian_opta_mse(2.5, snr_db, rho), rel=1e-9)
    assert wf.active == 64


def test_water_filling_hand_example():
    # lambda = (4, 0.25), R = rho * n * log2(1 + SNR) = 0.5 * 2 * 1 = 1 bit: only the first component is
    # active, 0.5 log2(4 / theta) = 1 -> theta = 1 and D = (1 + 0.25) / 2
    wf = reverse_water_filling([4.0, 0.25], 0.5, 0.0)
    assert wf.theta == pytest.approx(1.0) and wf.mse == pytest.approx(0.625) and wf.active == 1
    np.testing.assert_allclose(wf.distortions, [1.0, 0.25])
    assert reverse_water_filling([4.0, 0.25], rate_bits=0.0).mse == pytest.approx(2.125)
    # 3 bits: both active, -log2(theta) = 3 -> theta = 1/8
    assert reverse_water_filling([4.0, 0.25], rate_bits=3.0).theta == pytest.approx(0.125)


def test_water_filling_beats_treating_as_white_and_is_monotone():
    lam = np.geomspace(10, 0.01, 100)
    wf = reverse_water_filling(lam, 0.1, 10.0)
    assert wf.mse < gaussian_opta_mse(lam.mean(), 10.0, 0.1)  # knowing the spectrum helps
    mses = [reverse_water_filling(lam, 0.1, s).mse for s in (-10, 0, 10, 20, 30)]
    assert all(a > b for a, b in zip(mses, mses[1:]))


def test_latent_covariance_channel_and_full():
    g = torch.Generator().manual_seed(0)
    # 4 channels with variances 4, 1, 0.25, 0.0625 and means 0..3
    std = torch.tensor([2.0, 1.0, 0.5, 0.25])[None, :, None, None]
    x = torch.randn(64, 4, 8, 8, generator=g) * std + torch.arange(4.0)[None, :, None, None]
    cov = latent_covariance(x, mode="channel", shrinkage=0.0)
    assert cov.cov.shape == (4, 4) and cov.eigenvalues.shape == (256,) and cov.num_samples == 64 * 64
    np.testing.assert_allclose(cov.mean.numpy(), [0, 1, 2, 3], atol=0.05)
    np.testing.assert_allclose(torch.diag(cov.cov).numpy(), [4, 1, 0.25, 0.0625], rtol=0.05)
    assert cov.variance == pytest.approx((4 + 1 + 0.25 + 0.0625) / 4, rel=0.05)
    # full mode with N < D: the Gram-matrix path and the explicit matrix give the same spectrum
    small = x[:16]
    a = latent_covariance(small, mode="full", shrinkage=0.3)
    b = latent_covariance(small, mode="full", shrinkage=0.3, max_dim=10)
    assert a.cov.shape == (256, 256) and b.cov is None
    np.testing.assert_allclose(a.eigenvalues.numpy(), b.eigenvalues.numpy(), atol=1e-9)
    # total variance is preserved by shrinkage; Ledoit-Wolf picks a shrinkage in (0, 1] when N << D
    assert a.eigenvalues.sum().item() == pytest.approx(torch.trace(latent_covariance(small, "full", 0.0).cov).item())
    lw = latent_covariance(small, mode="full")
    assert 0 < lw.shrinkage <= 1 and torch.all(lw.eigenvalues > 0)
    assert torch.all(lw.eigenvalues[:-1] >= lw.eigenvalues[1:])
    assert reverse_water_filling(lw.eigenvalues, 0.1, 10.0).mse < gaussian_opta_mse(lw.variance, 10.0, 0.1)


def test_bad_inputs():
    with pytest.raises(ValueError, match="snr_db"):
        awgn_capacity(float("nan"))
    with pytest.raises(ValueError, match="channel"):
        opta_mse(1.0, 0.0, 0.5, "rician")
    with pytest.raises(ValueError, match="rho"):
        gaussian_opta_mse(1.0, 0.0, -0.5)
    with pytest.raises(ValueError, match="sigma2"):
        gaussian_opta_mse(-1.0, 0.0, 0.5)
    with pytest.raises(TypeError, match="rho"):
        gaussian_opta_mse(1.0, 0.0, "half")
    with pytest.raises(ValueError, match="eigenvalues"):
        reverse_water_filling([1.0, -1.0], 0.5, 0.0)
    with pytest.raises(ValueError, match="rho"):
        reverse_water_filling([1.0], None, 0.0)
    with pytest.raises(ValueError, match="rate_bits"):
        reverse_water_filling([1.0], 0.5, 0.0, rate_bits=1.0)
    with pytest.raises(ValueError, match="latents"):
        latent_covariance(torch.zeros(1, 4, 2, 2))
    with pytest.raises(TypeError, match="latents"):
        latent_covariance(torch.zeros(3, 4, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        latent_covariance(torch.zeros(3, 4, 2, 2), mode="pixel")
    with pytest.raises(ValueError, match="shrinkage"):
        latent_covariance(torch.zeros(3, 4, 2, 2), shrinkage=1.5)


def test_lmmse_is_one_formula():
    from splitldm.analysis.limits import lmmse_estimate, lmmse_mse, lmmse_weight

    # closed form var / (1 + SNR) = the Gaussian OPTA at rho = 1/2
    for snr in (-10.0, 0.0, 7.0, 30.0):
        assert lmmse_mse(2.5, snr) == pytest.approx(gaussian_opta_mse(2.5, snr, 0.5))
    np.testing.assert_allclose(lmmse_mse(1.0, np.array([0.0, 10.0])), [0.5, 1 / 11])
    a = torch.tensor([0.5 + 0.5j, 2.0 + 0j, 1j])
    v = torch.tensor([0.1, 1.0, 0.0])
    torch.testing.assert_close(lmmse_weight(a, v), a.conj() / (a.abs() ** 2 + v))
    y = torch.tensor([1.0 + 1j, -2.0 + 0j, 0.5j])
    torch.testing.assert_close(lmmse_estimate(y, a, v), lmmse_weight(a, v) * y)
    with pytest.raises(ValueError, match="variance"):
        lmmse_mse(-1.0, 0.0)
    with pytest.raises(TypeError, match="gain"):
        lmmse_weight(1.0, 0.1)


def test_separation_rate_and_shannon_limit():
    from splitldm.analysis.limits import CHANNELS, capacity, separation_bits_per_value, shannon_limit_snr_db

    assert CHANNELS == ("awgn", "rayleigh")
    # 128 uses at 10 dB over AWGN: 128 log2(11) = 442.8 bits over 256 values -> 1 bit per value
    assert separation_bits_per_value(128, 256, 10.0) == 1
    assert separation_bits_per_value(128, 256, 40.0, max_bits=3) == 3
    assert separation_bits_per_value(128, 64, 20.0, "rayleigh") == math.floor(128 * capacity(20.0, "rayleigh") / 64)
    with pytest.raises(ValueError, match="n_values"):
        separation_bits_per_value(128, 0, 10.0)
    for r in (0.5, 1.0, 3.0):
        assert awgn_capacity(shannon_limit_snr_db(r)) == pytest.approx(r)
    assert shannon_limit_snr_db(1.0) == 0.0 and shannon_limit_snr_db(0.0) == -math.inf
    np.testing.assert_allclose(shannon_limit_snr_db(np.array([1.0, 2.0])), [0.0, 10 * math.log10(3)])
    with pytest.raises(ValueError, match="bits_per_use"):
        shannon_limit_snr_db(-1.0)
