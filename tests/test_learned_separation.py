"""The learned separation baseline: best-fit rate adaptation, the ideal capacity-achieving code (capacity
from splitldm.analysis.limits), the per-SNR LDPC operating point and the end-to-end LDPC + QAM link."""

from __future__ import annotations

import math

import pytest
import torch

from splitldm.analysis.limits import awgn_capacity, rayleigh_ergodic_capacity
from splitldm.link.digital import DigitalConfig
from splitldm.link.entropy_model import EntropyModel
from splitldm.link.learned_separation import (EncodedLevels, LearnedSeparationLink, OperationalRD,
                                              best_learned_digital_config, encode_levels, header_bits,
                                              ideal_separation, operational_rd)
from splitldm.link.payload import Payload
from splitldm.link.stack import Link


def _model() -> EntropyModel:
    torch.manual_seed(0)
    m = EntropyModel(latent_channels=4, hidden_channels=8, lambdas=[1e-2, 1e-3])
    m.set_input_stats(torch.zeros(4), torch.ones(4))
    return m.eval()


def _table() -> OperationalRD:
    # 2 latents, 2 levels: level 0 costs 20 / 30 bits, level 1 costs 60 / 90 bits
    bits = torch.tensor([[20, 60], [30, 90]])
    mse = torch.tensor([[1.0, 0.5, 0.1], [2.0, 0.8, 0.2]], dtype=torch.float64)
    return OperationalRD(bits, mse)


def test_header_bits():
    assert header_bits(1) == 1 and header_bits(3) == 2 and header_bits(10) == 4


def test_best_fit_picks_least_mse_within_budget():
    rd = _table()
    col, mse = rd.best_fit(25)
    assert col.tolist() == [1, 0] and mse.tolist() == [0.5, 2.0]
    col, mse = rd.best_fit(torch.tensor([100.0, 89.0]))
    assert col.tolist() == [2, 1] and mse.tolist() == [0.1, 0.8]
    assert rd.mean_mse(0) == 1.5


def test_ideal_separation_uses_the_capacity_formulas():
    rd = _table()
    k = 8
    for snr in (0.0, 5.0, 10.0):
        budget = math.floor(k * awgn_capacity(snr) + 1e-9)
        assert ideal_separation(rd, k, snr, "awgn")["mse"] == rd.mean_mse(budget)
        budget = math.floor(k * rayleigh_ergodic_capacity(snr) + 1e-9)
        out = ideal_separation(rd, k, snr, "rayleigh", generator=torch.Generator().manual_seed(0), repeats=3)
        assert out["mse"] == rd.mean_mse(budget)
        assert rd.mse[:, 2].mean() <= out["mse_block_csit"] <= rd.mse[:, 0].mean()
        draws = out["mse_block_csit_draws"]  # (repeats, N): each latent under each fade
        assert draws.shape == (3, 2) and float(draws.mean()) == out["mse_block_csit"]
        assert all(float(v) in rd.mse[i].tolist() for row in draws for i, v in enumerate(row))
    with pytest.raises(ValueError, match="repeats"):
        ideal_separation(rd, k, 0.0, "rayleigh", repeats=0)
    with pytest.raises(ValueError, match="channel_uses"):
        ideal_separation(rd, 0, 0.0)


def test_operational_rd_measures_real_bitstreams():
    m = _model()
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    rd = operational_rd(m, x)
    assert rd.bits.shape == (6, 2) and rd.mse.shape == (6, 3)
    from splitldm.link.entropy_model import bit_length

    data = m.encode(x, 1)
    assert rd.bits[:, 1].tolist() == [header_bits(2) + bit_length(d) for d in data]
    assert torch.allclose(rd.mse[:, 0], x.pow(2).flatten(1).mean(1).double())  # nothing sent: the mean (0)
    assert (rd.est_bits <= rd.bits + 1).all() and (rd.bits - rd.est_bits <= 40).all()  # the coder's flush
    out = ideal_separation(rd, 32, 20.0, "awgn")
    assert out["mse_rate_estimate"] <= out["mse"]


def test_operating_point_follows_snr():
    rd = _table()
    _, info_lo = best_learned_digital_config(-15.0, 32, rd, "awgn")
    assert info_lo["bler"] > 0.99 and info_lo["expected_mse"] == pytest.approx(1.5, rel=0.01)
    cfg_none, _ = best_learned_digital_config(-15.0, 32, OperationalRD(rd.bits + 1000, rd.mse), "awgn")
    assert cfg_none is None  # nothing fits any code: send nothing
    cfg_hi, info_hi = best_learned_digital_config(20.0, 32, rd, "awgn")
    assert isinstance(cfg_hi, DigitalConfig) and info_hi["info_bits"] >= 90 and info_hi["expected_mse"] < 0.2
    cfg_r, info_r = best_learned_digital_config(20.0, 32, rd, "rayleigh")
    assert info_r["expected_mse"] > info_hi["expected_mse"]  # fading costs
    with pytest.raises(ValueError, match="channel"):
        best_learned_digital_config(0.0, 32, rd, "rician")


def test_ldpc_link_round_trip_and_erasure():
    from splitldm.link.channels import AWGN

    m = EntropyModel.from_pretrained("entropy-model")  # the shipped model: its levels beat the mean
    x = m.norm_mean[None, :, None, None] + m.norm_std[None, :, None, None] * torch.randn(
        3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    cfg = DigitalConfig(1, 0.5, 4, 1024, num_components=1, crc=None)  # 512 information bits, 256 uses
    rd = operational_rd(m, x)
    assert (rd.bits <= 512).all()
    stage = LearnedSeparationLink(m, cfg)
    assert stage.channel_uses() == 256 and stage.info_bits == 512
    payload = Payload(tensors={"latents": x}, primary=("latents",))
    ctx: dict = {"snr_db": 30.0}
    out = Link([stage, AWGN()])(payload, generator=torch.Generator().manual_seed(0), context=ctx)
    col, _ = rd.best_fit(512)  # what the encoder sends: the least-MSE choice that fits
    assert (col > 0).all()
    mean = m.norm_mean[:, None, None].expand(4, 8, 8)
    expected = torch.stack([mean if c == 0 else m.decode(m.encode(x[i:i + 1], int(c) - 1), int(c) - 1)[0]
                            for i, c in enumerate(col)])
    assert torch.equal(out.tensors["latents"], expected)  # decoded exactly
    assert ctx["learned_separation"]["codeword_errors"] == 0 and ctx["learned_separation"]["levels"] == col.tolist()
    ctx = {"snr_db": -10.0}
    out = Link([stage, AWGN()])(payload, generator=torch.Generator().manual_seed(0), context=ctx)
    assert torch.equal(out.tensors["latents"], mean.expand_as(x))  # erased: the mean
    with pytest.raises(TypeError, match="model"):
        LearnedSeparationLink("x", cfg)
    with pytest.raises(TypeError, match="config"):
        LearnedSeparationLink(m, None)


def test_one_encoding_shared_by_the_rd_table_and_the_link():
    from splitldm.link.channels import AWGN

    m = _model()
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    enc = encode_levels(m, x)
    assert isinstance(enc, EncodedLevels) and enc.bits.shape == (4, 2) and enc.x_hat.shape == (2, 4, 4, 8, 8)
    fresh, shared = operational_rd(m, x), operational_rd(m, x, encoded=enc)
    for a, b in ((fresh.bits, shared.bits), (fresh.mse, shared.mse), (fresh.est_bits, shared.est_bits)):
        assert torch.equal(a, b)
    half = enc.subset(slice(2, None))
    assert torch.equal(operational_rd(m, x[2:], encoded=half).mse, fresh.subset(slice(2, None)).mse)
    cfg = DigitalConfig(1, 0.5, 4, 1024, num_components=1, crc=None)
    payload = Payload(tensors={"latents": x[2:]}, primary=("latents",))
    outs = [Link([LearnedSeparationLink(m, cfg, encoded=e), AWGN()])(
        payload, generator=torch.Generator().manual_seed(0), context={"snr_db": 30.0}).tensors["latents"]
        for e in (None, half)]
    assert torch.equal(outs[0], outs[1])  # the same bits either way
    with pytest.raises(ValueError, match="encoded: made for other latents"):
        operational_rd(m, x[:2], encoded=half)
    with pytest.raises(ValueError, match="encoded: made for other latents"):
        Link([LearnedSeparationLink(m, cfg, encoded=half), AWGN()])(
            Payload(tensors={"latents": x[:2]}, primary=("latents",)), generator=torch.Generator().manual_seed(0),
            context={"snr_db": 30.0})
    with pytest.raises(TypeError, match="encoded"):
        LearnedSeparationLink(m, cfg, encoded="bits")
    with pytest.raises(TypeError, match="index"):
        enc.subset([0, 1])
