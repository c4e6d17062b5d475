"""Analog (LMMSE) and digital (transform coding / quantise + 5G LDPC + QAM) baselines as Link stages."""

import math

import pytest
import torch

from splitldm.link.analog import AnalogLink
from splitldm.link.digital import (_DCT, DIGITAL_WATERFALL_DB, DigitalConfig, DigitalLink, allocate_bits,
                                best_digital_config, budget_codes, digital_candidates, gaussian_uniform_quantizer,
                                measure_bler)
from splitldm.link.channels import AWGN, RayleighBlockFading, RayleighFastFading
from splitldm.analysis.limits import latent_covariance
from splitldm.link.stack import Link
from splitldm.link.payload import Payload


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def latent_payload(batch=4, shape=(4, 16, 16), seed=0, scale=1.0):
    x = torch.randn(batch, *shape, generator=gen(seed)) * scale + 0.3
    return x, Payload({"latents": x, "t": torch.tensor([7])}, meta={"step": 3}, primary=("latents",))


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
@pytest.mark.parametrize("csi", ["none", "mmse"])
def test_analog_mse_matches_closed_form_lmmse_awgn(snr_db, csi):
    x, p = latent_payload(batch=8, shape=(4, 32, 32), scale=2.0)
    out = Link([AnalogLink(), AWGN(snr_db, csi=csi)])(p, generator=gen(1))
    mse = (out.tensors["latents"] - x).square().mean().item()
    var = x.reshape(8, -1).var(dim=1, unbiased=False).mean()
    expected = AnalogLink.lmmse_mse(var, snr_db).item()  # var / (1 + SNR) = OPTA at rho = 1/2
    assert mse == pytest.approx(expected, rel=0.05)
    assert torch.equal(out.tensors["t"], p.tensors["t"]) and out.meta == {"step": 3}


def test_analog_lmmse_over_block_fading_uses_csi():
    x, p = latent_payload(batch=8, shape=(4, 32, 32))
    ctx = {}
    out = Link([AnalogLink(), RayleighBlockFading(10.0, csi="zf")])(p, generator=gen(2), context=ctx)
    err = (out.tensors["latents"] - x).reshape(8, -1).square().mean(dim=1)
    var = x.reshape(8, -1).var(dim=1, unbiased=False)
    h2 = ctx["h"].abs().square()[:, 0]
    n0 = ctx["n0"]
    torch.testing.assert_close(err, var * n0 / (h2 + n0), rtol=0.1, atol=1e-4)  # per-sample LMMSE given h


def test_analog_channel_use_accounting_and_odd_sizes():
    x, p = latent_payload(batch=3, shape=(4, 8, 8))
    out = Link([AnalogLink(), AWGN(20.0)])(p, generator=gen(3))
    s = Link.summary(out)
    assert s["channel_uses"] == 3 * 4 * 8 * 8 // 2  # rho = 1/2 complex use per real value
    assert out.tensors["latents"].shape == x.shape
    x = torch.randn(2, 3, 3, generator=gen(4))  # 9 values per sample: padded to 5 symbols
    out = Link([AnalogLink(), AWGN(40.0)])(Payload({"v": x}, primary=("v",)), generator=gen(5))
    assert Link.summary(out)["channel_uses"] == 2 * 5
    assert (out.tensors["v"] - x).abs().max() < 0.05


def test_digital_channel_use_accounting_is_exact():
    x, p = latent_payload(batch=2, shape=(4, 8, 8))
    link = DigitalLink(bits_per_value=4, code_rate=0.5, bits_per_symbol=4)
    out = Link([link, AWGN(30.0)])(p, generator=gen(6))
    # 256 values x 4 bits = 1024 bits; codeword: k = 480 incl. CRC16 -> 464 source bits -> 3 codewords
    # of 960 coded bits -> 720 16-QAM symbols per sample
    assert link.config.num_codewords(256) == 3 == math.ceil(1024 / 464)
    assert link.config.channel_uses(256) == 720
    assert DigitalConfig(4, 1 / 2, 4).channel_uses(1024) == 9 * 960 // 4
    assert DigitalConfig(8, 5 / 6, 8).channel_uses(1024) == math.ceil(8192 / 784) * 120
    assert Link.summary(out)["channel_uses"] == 2 * 720
    sent = [r for r in out.history if r.direction == "send" and r.stage == "DigitalLink"][0]
    assert sent.channel_uses == 2 * 720 and sent.note["bits_per_symbol"] == 4


def test_digital_high_snr_reproduces_quantised_latent_exactly():
    x, p = latent_payload(batch=2, shape=(4, 8, 8))
    for link, channel in [(DigitalLink(6, 2 / 3, 4), AWGN(30.0)),
                          (DigitalLink(3, 1 / 2, 2), RayleighBlockFading(40.0, csi="zf")),
                          (DigitalLink(8, 1 / 2, 6), RayleighFastFading(40.0, csi="mmse"))]:
        ctx = {}
        out = Link([link, channel])(p, generator=gen(7), context=ctx)
        assert ctx["digital"]["codeword_errors"] == 0 and ctx["digital"]["values_erased"] == 0
        assert torch.equal(out.tensors["latents"], link.quantized(x))
        step = (x.reshape(2, -1).amax(1) - x.reshape(2, -1).amin(1)) / (2 ** link.config.bits_per_value - 1)
        assert ((out.tensors["latents"] - x).reshape(2, -1).abs().amax(1) <= step / 2 + 1e-5).all()


def test_digital_very_low_snr_fails_to_the_mean():
    x, p = latent_payload(batch=2, shape=(4, 8, 8))
    ctx = {}
    out = Link([DigitalLink(4, 1 / 2, 4), AWGN(-10.0)])(p, generator=gen(8), context=ctx)
    assert ctx["digital"]["codeword_errors"] == ctx["digital"]["codewords"] == 6
    mean = x.reshape(2, -1).mean(1)
    torch.testing.assert_close(out.tensors["latents"], mean[:, None, None, None].expand_as(x))


def test_digital_zero_bits_sends_nothing():
    x, p = latent_payload(batch=2, shape=(4, 4, 4))
    out = Link([DigitalLink(0, 1 / 2, 2), AWGN(10.0)])(p, generator=gen(9))
    assert Link.summary(out)["channel_uses"] == 0
    torch.testing.assert_close(out.tensors["latents"], x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))


def test_digital_deterministic_with_generator():
    x, p = latent_payload(batch=2, shape=(4, 4, 4))
    runs = [Link([DigitalLink(4, 1 / 2, 4), AWGN(6.5)])(p, generator=gen(10)).tensors["latents"] for _ in range(2)]
    assert torch.equal(*runs)


def correlated_latents(num=300, shape=(4, 8, 8), seed=0):
    """Spatially smooth, channel-correlated latents with a non-zero mean (like VAE latents)."""
    g = gen(seed)
    c, h, w = shape
    coarse = torch.randn(num, c, max(1, h // 4), max(1, w // 4), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    mix = torch.eye(c) + 0.5 * torch.randn(c, c, generator=g)
    return torch.einsum("dc,nchw->ndhw", mix, smooth) + 0.1 * torch.randn(num, c, h, w, generator=g) + 0.3


def test_gaussian_quantizer_matches_max_table():
    # MSE-optimal uniform quantisers for a unit Gaussian (Max 1960 / Hui & Neuhoff 2001)
    for b, step, mse in [(1, 1.596, 0.3634), (2, 0.9957, 0.1188), (3, 0.5860, 0.03744), (4, 0.3352, 0.01154)]:
        s, d = gaussian_uniform_quantizer(b)
        assert s == pytest.approx(step, abs=2e-3) and d == pytest.approx(mse, rel=1e-2)
    assert gaussian_uniform_quantizer(0)[1] == 1.0


def test_bit_allocation_is_reverse_water_filling():
    lam = torch.tensor([16.0, 4.0, 1.0, 0.25, 0.01])
    alloc = allocate_bits(lam, 8)
    assert sum(alloc) == 8 and list(alloc) == sorted(alloc, reverse=True)
    assert alloc[0] > alloc[2] > 0 and len(alloc) <= 4  # more bits for more variance; 0.01 gets none
    assert allocate_bits(lam, 0) == () and len(allocate_bits(lam, 1000, max_bits=3)) == 5


def test_budget_codes_fit_the_budget():
    codes = budget_codes(32)  # the seed codec's 32 complex uses for a 4x8x8 latent
    assert {m for m, *_ in codes} == {2, 4, 6, 8}
    for m, k, n, c in codes:
        assert c * n // m <= 32 and n % m == 0 and 12 <= k and 0.2 <= k / n <= 0.95
    assert (2, 13, 64, 1) in codes  # QPSK, rate 1/5: the most robust
    assert budget_codes(1) == [] and {m for m, *_ in budget_codes(2)} == {8}  # 2 uses of 256-QAM: k = 12 of 16
    assert all(c == 2 for *_, c in budget_codes(2000, bits_per_symbol=(8,)))  # 16000 coded bits: 2 codewords


@pytest.mark.parametrize("with_cov", [True, False])
def test_transform_coding_round_trip_at_32_uses(with_cov):
    lat = correlated_latents()
    cov = latent_covariance(lat[:200], mode="full") if with_cov else None
    x = lat[200:204]
    p = Payload({"latents": x, "t": torch.tensor([7])}, meta={"step": 3}, primary=("latents",))
    lam = cov.eigenvalues if with_cov else _DCT((4, 8, 8)).prior
    alloc = allocate_bits(lam, 58)
    cfg = DigitalConfig(max(alloc), 58 / 64, 2, 64, allocation=alloc, crc=None)
    assert cfg.num_components == len(alloc) and cfg.channel_uses(256) == 32
    link = DigitalLink(config=cfg, covariance=cov)
    ctx = {}
    out = Link([link, AWGN(30.0)])(p, generator=gen(1), context=ctx)
    assert ctx["digital"] == {"codewords": 4, "codeword_errors": 0, "values_erased": 0}
    assert Link.summary(out)["channel_uses"] == 4 * 32
    q = link.quantized(x)
    assert torch.equal(out.tensors["latents"], q)  # the quantised latent, exactly
    assert torch.equal(out.tensors["t"], p.tensors["t"]) and out.meta == {"step": 3}
    mean = cov.mean.reshape(1, 4, 8, 8).float().expand_as(x) if with_cov \
        else x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    assert (q - x).square().mean() < 0.5 * (mean - x).square().mean()  # 58 bits spent well
    # very low SNR: every codeword fails its syndrome check -> everything falls back to the mean
    ctx = {}
    out = Link([link, AWGN(-15.0)])(p, generator=gen(2), context=ctx)
    assert ctx["digital"]["codeword_errors"] == ctx["digital"]["codewords"] == 4
    torch.testing.assert_close(out.tensors["latents"], mean)
    runs = [Link([link, AWGN(2.0)])(p, generator=gen(3)).tensors["latents"] for _ in range(2)]
    assert torch.equal(*runs)


@pytest.mark.skipif(not DIGITAL_WATERFALL_DB, reason="waterfall table not measured yet")
def test_best_digital_config_at_the_default_budget():
    lat = correlated_latents()
    cov = latent_covariance(lat, mode="full")
    cands = {s: digital_candidates(s, 32, 256, covariance=cov) for s in (-15, -5, 0, 5, 10, 20, 30)}
    cfgs = {s: c[0]["config"] for s, c in cands.items()}
    d0 = float(cov.eigenvalues.mean())
    assert cands[-15][0]["expected_mse"] > 0.99 * d0 and cands[-15][0]["bler"] > 0.99  # nothing gets through
    assert best_digital_config(10, 1, 256, covariance=cov).bits_per_value == 0  # no code fits 1 use: send nothing
    for s in (0, 5, 10, 20, 30):
        assert cfgs[s].bits_per_value > 0 and 0 < cfgs[s].channel_uses(256) <= 32
        assert cfgs[s] == best_digital_config(s, 32, 256, covariance=cov)
    exp = [cands[s][0]["expected_mse"] for s in sorted(cands)]
    assert exp == sorted(exp, reverse=True) and exp[-1] < 0.2 * exp[0]
    bits = [cfgs[s].source_bits(256) for s in sorted(cfgs)]
    assert bits == sorted(bits) and bits[-1] > 2 * bits[3]
    # one fade per latent costs SNR: fewer bits at the same SNR; the DCT fallback also finds a scheme
    ray = best_digital_config(10, 32, 256, covariance=cov, channel="rayleigh-block")
    assert 0 < ray.source_bits(256) < cfgs[10].source_bits(256)
    assert best_digital_config(10, 32, 256).bits_per_value > 0
    # the cliff: the 10 dB design works there and collapses a few dB below
    cfg = cfgs[10]
    s90, s10 = DIGITAL_WATERFALL_DB[(cfg.bits_per_symbol, cfg.info_bits, cfg.codeword_bits)]
    assert s10 <= 10.0 and s10 - s90 < 4.0
    assert measure_bler(cfg, 10.0, num_codewords=40, generator=gen(11)) <= 0.1
    assert measure_bler(cfg, s90 - 1.0, num_codewords=40, generator=gen(11)) >= 0.9


def test_bad_inputs():
    with pytest.raises(ValueError, match="bits_per_value"):
        DigitalConfig(17)
    with pytest.raises(ValueError, match="code_rate"):
        DigitalConfig(4, code_rate=1.0)
    with pytest.raises(ValueError, match="bits_per_symbol"):
        DigitalConfig(4, bits_per_symbol=3)
    with pytest.raises(ValueError, match="codeword_bits"):
        DigitalConfig(4, bits_per_symbol=6, codeword_bits=1000)
    with pytest.raises(ValueError, match="num_iter"):
        DigitalLink(num_iter=0)
    with pytest.raises(TypeError, match="config"):
        DigitalLink(config=(4, 0.5, 4))
    with pytest.raises(ValueError, match="crc"):
        DigitalConfig(4, crc="CRC7")
    with pytest.raises(ValueError, match="code_rate"):  # k = 11 < 12: below Sionna's 5G LDPC limits
        DigitalConfig(4, code_rate=11 / 64, bits_per_symbol=2, codeword_bits=64, crc=None)
    with pytest.raises(ValueError, match="allocation"):
        DigitalConfig(3, allocation=(2, 1))
    with pytest.raises(ValueError, match="num_components"):
        DigitalConfig(2, num_components=0)
    with pytest.raises(ValueError, match="snr_db"):
        best_digital_config(float("nan"), 100, 10)
    with pytest.raises(ValueError, match="channel_uses_budget"):
        best_digital_config(10.0, -1, 10)
    with pytest.raises(ValueError, match="n_values"):
        best_digital_config(10.0, 100, 0)
    with pytest.raises(ValueError, match="channel"):
        best_digital_config(10.0, 100, 10, channel="rician")
    with pytest.raises(ValueError, match="covariance"):
        best_digital_config(10.0, 32, 10, covariance=torch.ones(7))
    with pytest.raises(ValueError, match="margin_db"):
        best_digital_config(10.0, 32, 10, margin_db=float("inf"))
    with pytest.raises(ValueError, match="max_bits_per_value"):
        best_digital_config(10.0, 32, 10, max_bits_per_value=0)
    lat = correlated_latents(num=20, shape=(2, 2, 2))
    with pytest.raises(ValueError, match="covariance"):
        DigitalLink(covariance=latent_covariance(lat, mode="channel"))
    link = DigitalLink(config=DigitalConfig(2, 0.5, 2, 64, num_components=4, crc=None),
                       covariance=latent_covariance(lat, mode="full"))
    with pytest.raises(ValueError, match="covariance"):  # 8 values described, 16 sent
        Link([link, AWGN(10.0)])(Payload({"v": torch.randn(2, 4, 2, 2)}, primary=("v",)), generator=gen(0))
    with pytest.raises(ValueError, match="num_components"):
        Link([DigitalLink(config=DigitalConfig(2, 0.5, 2, 64, num_components=9, crc=None)), AWGN(10.0)])(
            Payload({"v": torch.randn(2, 2, 2, 2)}, primary=("v",)), generator=gen(0))
    _, p = latent_payload(batch=1, shape=(2, 2, 2))
    with pytest.raises(ValueError, match="context"):
        Link([AnalogLink()])(p, generator=gen(0))  # no channel after the analog stage
    with pytest.raises(ValueError, match="payload"):
        Link([DigitalLink(), AWGN(10.0)])(Payload({"side": torch.zeros(1, 2)}), generator=gen(0))


def test_separation_reference_stage():
    from splitldm.analysis.limits import separation_bits_per_value
    from splitldm.link.separation import Separation

    x = torch.randn(2, 4, 4, 4, generator=gen(50))
    p = Payload({"latents": x}, primary=("latents",))
    out = Link([Separation(4)])(p)
    torch.testing.assert_close(out.tensors["latents"], DigitalLink(config=DigitalConfig(4)).quantized(x))
    mean = Link([Separation(0)])(p).tensors["latents"]
    torch.testing.assert_close(mean, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    assert separation_bits_per_value(32, 64, 10.0) == 1  # 32 log2(11) = 110.7 bits over 64 values
    with pytest.raises(ValueError, match="bits_per_value"):
        Separation(17)


def test_fec_adapter_lives_in_fec():
    from splitldm.link import digital, fec

    assert digital._Coder is fec._Coder  # DigitalLink's coder is the FEC adapter, importable on its own
    cfg = DigitalConfig(1, 0.5, 2, 64, num_components=1, crc=None)
    coder = fec._Coder.get(cfg, torch.device("cpu"), 20)
    bits = torch.randint(0, 2, (3, cfg.payload_bits), generator=gen(51)).float()
    sym = coder.encode(bits)
    out, ok = coder.decode(sym.reshape(3, -1), torch.full(sym.reshape(3, -1).shape, 1e-3), (3, 1, 64))
    assert ok.all() and torch.equal(out.reshape(3, -1), bits)


def test_analog_link_uses_the_one_lmmse():
    from splitldm.analysis.limits import lmmse_mse

    assert AnalogLink.lmmse_mse(2.0, 10.0).item() == pytest.approx(lmmse_mse(2.0, 10.0))
    assert AnalogLink.lmmse_mse(2.0, 10.0).dtype == torch.float64
