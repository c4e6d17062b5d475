"""Analog (LMMSE) and digital (quantise + CRC + 5G LDPC + QAM) baselines as Link stages."""

import math

import pytest
import torch

from splitldm.baselines import (AWGN_BLER10_SNR_DB, MCS_TABLE, AnalogLink, DigitalConfig, DigitalLink,
                                best_digital_config, measure_bler)
from splitldm.channels import AWGN, RayleighBlockFading, RayleighFastFading
from splitldm.link import Link
from splitldm.payload import Payload


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


TABLE = {(1 / 3, 2): -1.0, (1 / 2, 2): 1.0, (1 / 2, 4): 6.5, (3 / 4, 6): 14.5, (5 / 6, 8): 22.0}


def test_best_digital_config_rule():
    n, budget = 1024, 1024  # rho = 1 complex use per value
    cfgs = {s: best_digital_config(s, budget, n, thresholds=TABLE) for s in (-5, 0, 5, 10, 20, 30)}
    assert cfgs[-5].bits_per_value == 0
    bits = [cfgs[s].bits_per_value for s in sorted(cfgs)]
    assert bits == sorted(bits) and bits[-1] > bits[1]
    for s, cfg in cfgs.items():
        assert cfg.channel_uses(n) <= budget
        if cfg.bits_per_value:
            assert TABLE[(cfg.code_rate, cfg.bits_per_symbol)] <= s
    # at 10 dB only rates with threshold <= 10 dB: 16-QAM 1/2 -> 464 * 4 / 960 = 1.93 bits per use -> 1 bit
    assert (cfgs[10].code_rate, cfgs[10].bits_per_symbol, cfgs[10].bits_per_value) == (0.5, 4, 1)
    # a Rayleigh block channel needs ~9.8 dB more for the same scheme
    assert best_digital_config(10, budget, n, thresholds=TABLE, channel="rayleigh-block").bits_per_value \
        < cfgs[20].bits_per_value
    assert best_digital_config(20, budget, n, thresholds=TABLE, margin_db=3.0).bits_per_value <= cfgs[20].bits_per_value


@pytest.mark.skipif(not AWGN_BLER10_SNR_DB, reason="MCS threshold table not measured yet")
def test_measured_table_and_cliff():
    assert set(AWGN_BLER10_SNR_DB) == set(MCS_TABLE)
    for m in (2, 4, 6, 8):  # higher code rate needs more SNR
        thr = [AWGN_BLER10_SNR_DB[(r, m)] for r in sorted({r for r, mm in MCS_TABLE if mm == m})]
        assert thr == sorted(thr)
    cfg = best_digital_config(8.0, 1024, 1024)  # rho = 1: 16-QAM rate 1/2 carries 1 bit per value
    assert cfg.bits_per_value >= 1
    thr = AWGN_BLER10_SNR_DB[(cfg.code_rate, cfg.bits_per_symbol)]
    assert measure_bler(cfg, thr + 1.0, num_codewords=40, generator=gen(11)) <= 0.2  # works at design SNR
    assert measure_bler(cfg, thr - 3.0, num_codewords=40, generator=gen(11)) >= 0.9  # the cliff


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
    with pytest.raises(ValueError, match="snr_db"):
        best_digital_config(float("nan"), 100, 10, thresholds=TABLE)
    with pytest.raises(ValueError, match="channel_uses_budget"):
        best_digital_config(10.0, -1, 10, thresholds=TABLE)
    with pytest.raises(ValueError, match="n_values"):
        best_digital_config(10.0, 100, 0, thresholds=TABLE)
    with pytest.raises(ValueError, match="channel"):
        best_digital_config(10.0, 100, 10, thresholds=TABLE, channel="rician")
    _, p = latent_payload(batch=1, shape=(2, 2, 2))
    with pytest.raises(ValueError, match="context"):
        Link([AnalogLink()])(p, generator=gen(0))  # no channel after the analog stage
    with pytest.raises(ValueError, match="payload"):
        Link([DigitalLink(), AWGN(10.0)])(Payload({"side": torch.zeros(1, 2)}), generator=gen(0))
