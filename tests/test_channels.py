"""Channels: realised SNR (incl. the 3.01 dB bug check), fading statistics, CSI modes, determinism,
gradients, per-sample SNR, pairing and power normalisation, Link-stage behaviour, bad inputs."""

import math

import pytest
import torch

from splitldm.analysis.limits import CHANNELS, lmmse_weight
from splitldm.link.channels import (AWGN, CSI_MODES, SNR_DB_RANGE, ChannelState, MixedBlockChannel, RayleighBlockFading,
                                    RayleighFastFading, check_snr_db, complex_to_real, make_channel, normalize_power,
                                    real_to_complex, resolve_snr_db)
from splitldm.link.channels import block_sizes
from splitldm.link.stack import Link, LinkContext
from splitldm.link.payload import Payload

N_SYM = 1 << 20  # noise-power estimate has relative std 1/sqrt(N) = 0.1 % = 0.004 dB; tolerance is 0.05 dB
TOL_DB = 0.05


def db(x):
    return 10 * math.log10(float(x))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unit_symbols(batch, n, seed=123):
    return normalize_power(torch.randn(batch, n, dtype=torch.complex64, generator=gen(seed)))


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 10.0, 30.0])
def test_awgn_realised_snr_and_no_3db_bug(snr_db):
    z = unit_symbols(1, N_SYM)
    y = AWGN(snr_db)(z, generator=gen(1))
    noise = (y - z).to(torch.complex128)
    n0 = 10 ** (-snr_db / 10)
    signal_power = z.abs().square().mean().item()
    assert abs(signal_power - 1) < 1e-5
    # SNR per complex symbol = signal power / noise power per complex symbol
    assert abs(db(signal_power / noise.abs().square().mean()) - snr_db) < TOL_DB
    # N0/2 per real part and per imaginary part (the 3.01 dB bug would give N0 per real part here,
    # or N0/2 total per symbol and so a realised SNR 3.01 dB above the label)
    assert abs(db(noise.real.square().mean() / (n0 / 2))) < TOL_DB
    assert abs(db(noise.imag.square().mean() / (n0 / 2))) < TOL_DB
    assert abs((noise.real * noise.imag).mean().item()) < 0.01 * n0  # circular: independent parts


def test_awgn_mmse_is_scaled_identity():
    z = unit_symbols(2, 1000)
    y = AWGN(0.0, csi="none")(z, generator=gen(3))
    y_mmse = AWGN(0.0, csi="mmse")(z, generator=gen(3))
    torch.testing.assert_close(y_mmse, y / 2)  # N0 = 1 -> y / (1 + N0)


@pytest.mark.parametrize("cls,kw", [(RayleighFastFading, {}), (RayleighBlockFading, {"coherence_symbols": 1})])
def test_rayleigh_gain_power_is_one(cls, kw):
    z = unit_symbols(1, N_SYM)
    _, state = cls(10.0, **kw)(z, generator=gen(2), return_state=True)
    assert state.h.shape == (1, N_SYM)
    assert abs(db(state.h.abs().square().double().mean())) < TOL_DB
    # Rayleigh: |h|^2 ~ Exp(1): P(|h|^2 < 0.1) = 1 - e^-0.1
    assert abs((state.h.abs().square() < 0.1).double().mean().item() - (1 - math.exp(-0.1))) < 3e-3


def test_block_fading_one_gain_per_sample_and_per_block():
    z = unit_symbols(1 << 16, 4)
    _, state = RayleighBlockFading(5.0)(z, generator=gen(4), return_state=True)
    assert state.h.shape == (1 << 16, 1)
    assert abs(db(state.h.abs().square().double().mean())) < 0.1  # 65k draws: std 0.017 dB
    z = unit_symbols(3, 10)
    _, state = RayleighBlockFading(5.0, coherence_symbols=4)(z, generator=gen(4), return_state=True)
    h = state.h
    assert h.shape == (3, 10)
    assert torch.equal(h[:, 0:4], h[:, :1].expand(3, 4)) and torch.equal(h[:, 4:8], h[:, 4:5].expand(3, 4))
    assert torch.equal(h[:, 8:10], h[:, 8:9].expand(3, 2)) and not torch.equal(h[:, 0], h[:, 4])


@pytest.mark.parametrize("csi", CSI_MODES)
@pytest.mark.parametrize("cls", [RayleighFastFading, RayleighBlockFading])
def test_fading_realised_snr_per_csi_mode(cls, csi):
    snr_db = 10.0
    n0 = 10 ** (-snr_db / 10)
    kw = {"coherence_symbols": 1} if cls is RayleighBlockFading else {}
    ch = cls(snr_db, csi=csi, **kw)
    z = unit_symbols(1, N_SYM)
    z_hat, state = ch(z, generator=gen(5), return_state=True)
    h = state.h
    z, z_hat, h = (t.to(torch.complex128)[0] for t in (z, z_hat, h))
    if csi == "none":  # raw output: y - h z is the noise
        err = (z_hat - h * z).abs().square().mean()
    elif csi == "phase":  # y conj(h)/|h| = |h| z + rotated noise
        err = (z_hat - h.abs() * z).abs().square().mean()
    elif csi == "zf":  # unbiased: z_hat = z + n/h where |h| >= zf_min_gain; per unit gain the noise is N0
        ok = h.abs() >= ch.zf_min_gain
        err = (h.abs().square() * (z_hat - z).abs().square())[ok].mean()
    else:  # mmse: z_hat = a z + g n with a = |h|^2/(|h|^2+N0); unbiased z_hat/a - z = n/h
        a = h.abs().square() / (h.abs().square() + n0)
        err = (h.abs().square() * (z_hat / a - z).abs().square()).mean()
    assert abs(db(1 / err) - snr_db) < TOL_DB
    if csi in ("zf", "mmse"):  # the receiver's published model z_hat = a z + CN(0, v) is exact
        g, a, v = ch.equalizer(state, z_hat[None].to(torch.complex64))
        a, v = a.to(torch.complex128)[0], v.double()[0]
        ratio = ((z_hat - a * z).abs().square() / v).mean()
        assert abs(db(ratio)) < TOL_DB


def test_zf_clamps_deep_fades():
    ch = RayleighFastFading(20.0, csi="zf", zf_min_gain=0.1)
    z = unit_symbols(1, 1 << 16)
    z_hat, state = ch(z, generator=gen(6), return_state=True)
    g, _, _ = ch.equalizer(state, z)
    assert g.abs().max().item() <= 10.0 + 1e-4  # amplification at most 1 / zf_min_gain
    assert torch.isfinite(z_hat).all()


def test_per_sample_snr_tensor():
    snrs = torch.tensor([-5.0, 10.0, 25.0])
    z = unit_symbols(3, 1 << 18)
    y = AWGN(snrs)(z, generator=gen(7))
    measured = [db(1 / (y[i] - z[i]).abs().double().square().mean()) for i in range(3)]
    for m, s in zip(measured, snrs.tolist()):
        assert abs(m - s) < TOL_DB
    # a per-call SNR overrides the channel's own, and a (low, high) range draws one SNR per sample
    _, state = AWGN(0.0)(z, snr_db=torch.tensor([1.0, 2.0, 3.0]), generator=gen(7), return_state=True)
    assert state.snr_db.tolist() == [1.0, 2.0, 3.0]
    s = resolve_snr_db((0.0, 20.0), 1000, gen(8))
    assert s.shape == (1000,) and 0 <= s.min() < 2 and 18 < s.max() <= 20


@pytest.mark.parametrize("cls", [AWGN, RayleighBlockFading, RayleighFastFading])
def test_determinism_with_generator(cls):
    z = unit_symbols(2, 256)
    ch = cls(5.0)
    a, b, c = ch(z, generator=gen(11)), ch(z, generator=gen(11)), ch(z, generator=gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the module's own generator (seed=...) also gives reproducible, advancing noise
    d1, d2 = cls(5.0, seed=3)(z), cls(5.0, seed=3)(z)
    assert torch.equal(d1, d2)
    m = cls(5.0, seed=3)
    assert not torch.equal(m(z), m(z))


@pytest.mark.parametrize("cls,csi", [(AWGN, "none"), (AWGN, "mmse"), (RayleighBlockFading, "mmse"),
                                     (RayleighFastFading, "zf"), (RayleighFastFading, "phase")])
def test_gradient_flows_to_input_only(cls, csi):
    z = unit_symbols(2, 64).requires_grad_(True)
    snr = torch.tensor([3.0, 7.0], requires_grad=True)
    ch = cls(csi=csi)
    z_hat, state = ch(z, snr_db=snr, generator=gen(13), return_state=True)
    z_hat.real.sum().backward()
    g, _, _ = ch.equalizer(state, z.detach())
    a = g if state.h is None else g * state.h  # true coefficient of z in z_hat = g h z + g n
    # linear in z: d Re(sum z_hat)/dz -> conj(a) (PyTorch's convention for real losses)
    torch.testing.assert_close(z.grad, torch.broadcast_to(a.conj(), z.shape).to(z.dtype))
    assert snr.grad is None  # noise power is not differentiated
    # noise is the same for a different input: y1 - y2 = a (z1 - z2)
    z2 = unit_symbols(2, 64, seed=9)
    with torch.no_grad():
        y1 = ch(z, snr_db=snr, generator=gen(13))
        y2 = ch(z2, snr_db=snr, generator=gen(13))
    torch.testing.assert_close(y1 - y2, a * (z.detach() - z2), atol=1e-5, rtol=1e-5)


def test_normalize_power():
    z = torch.randn(4, 3, 5, dtype=torch.complex64, generator=gen(14)) * torch.tensor([0.1, 1, 10, 0])[:, None, None]
    w = normalize_power(z)
    p = w.abs().square().mean(dim=(1, 2))
    torch.testing.assert_close(p[:3], torch.ones(3))
    assert torch.equal(w[3], torch.zeros_like(w[3]))
    torch.testing.assert_close(normalize_power(z[:1], power=2.0).abs().square().mean(), torch.tensor(2.0))
    zz = z[:3].clone().requires_grad_(True)
    normalize_power(zz).abs().sum().backward()
    assert torch.isfinite(zz.grad).all()


def test_pairing_within_samples_never_across_batch():
    x = torch.arange(12.0).reshape(2, 3, 2)
    z = real_to_complex(x)
    assert z.dtype == torch.complex64 and z.shape == (2, 3)
    assert z[0].tolist() == [0 + 1j, 2 + 3j, 4 + 5j] and z[1].tolist() == [6 + 7j, 8 + 9j, 10 + 11j]
    assert torch.equal(complex_to_real(z, (3, 2)), x)
    assert torch.equal(complex_to_real(z), x.reshape(2, 6))
    # 2 samples x 3 values: 6 values in all, but odd per sample -> refused rather than paired across samples
    with pytest.raises(ValueError, match="odd"):
        real_to_complex(torch.zeros(2, 3))
    assert real_to_complex(torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.complex128


def test_link_analog_mode_roundtrip_and_accounting():
    x = torch.randn(3, 4, 4, 4, generator=gen(15))
    p = Payload({"latents": x, "step": torch.tensor([4])}, meta={"k": 1}, primary=("latents",))
    for ch in (AWGN(40.0), RayleighBlockFading(40.0, csi="zf"), RayleighFastFading(40.0, csi="mmse")):
        out = Link([ch])(p, generator=gen(16))
        assert out.tensors["latents"].shape == x.shape and out.tensors["latents"].dtype == x.dtype
        assert torch.equal(out.tensors["step"], p.tensors["step"]) and out.meta == {"k": 1}
        rel = ((out.tensors["latents"] - x).square().mean() / x.square().mean()).item()
        assert rel < 1e-2
        sent = [r for r in out.history if r.direction == "send"][-1]
        assert sent.channel_uses == 3 * 64 / 2  # 64 real values per sample -> 32 complex uses
    a = Link([AWGN(10.0)])(p, generator=gen(17)).tensors["latents"]
    b = Link([AWGN(10.0)])(p, generator=gen(17)).tensors["latents"]
    assert torch.equal(a, b)


def test_link_context_publishes_snr_and_gains():
    z = normalize_power(torch.randn(2, 8, dtype=torch.complex64, generator=gen(18)))
    side = torch.randn(2, 3)
    p = Payload({"symbols": z, "side": side}, primary=("symbols",))
    ctx = {}
    out = Link([RayleighBlockFading(snr_db=torch.tensor([0.0, 20.0]), csi="mmse")])(p, generator=gen(19), context=ctx)
    assert ctx["snr_db"].tolist() == [0.0, 20.0] and ctx["h"].shape == (2, 1)
    assert ctx["eq_gain"]["symbols"].shape == (2, 8) and ctx["eq_noise_var"]["symbols"].shape == (2, 8)
    assert torch.equal(out.tensors["side"], side)  # real side information crosses untouched
    ctx = LinkContext()  # a stage called directly takes the typed context (a dict: TypeError, below)
    RayleighBlockFading(5.0).prepare(p, ctx, gen(0))
    assert ctx["h"].shape == (2, 1)  # known before sending: usable by a CSI-aware transmitter
    assert ctx.h.shape == (2, 1) and ctx.snr_db.tolist() == [5.0, 5.0] and ctx.n0.shape == (2,)
    with pytest.raises(TypeError, match="context.*LinkContext"):
        RayleighBlockFading(5.0).prepare(p, {}, gen(0))
    ctx = {}
    Link([RayleighFastFading(5.0)])(p, generator=gen(20), context=ctx)
    assert ctx["h"].shape == (2, 8)
    # a channel without SNR takes it from the context (e.g. set by a controller)
    ctx = {"snr_db": torch.tensor([3.0, 4.0])}
    Link([AWGN()])(p, generator=gen(21), context=ctx)
    assert ctx["snr_db"].tolist() == [3.0, 4.0]


def test_multi_row_tensors_group_by_sample():
    """A (2B, ...) tensor next to a (B, ...) one (a guided UNet-cut carry): rows i and i + B are
    sample i's, so they get sample i's SNR and block gain; shapes and gains come back row-aligned."""
    lat = normalize_power(torch.randn(2, 16, dtype=torch.complex64, generator=gen(30)))
    carry = normalize_power(torch.randn(4, 16, dtype=torch.complex64, generator=gen(31)))
    p = Payload({"lat": lat, "carry": carry}, primary=("lat", "carry"))
    ctx = {}
    out = Link([RayleighBlockFading(snr_db=torch.tensor([0.0, 40.0]), csi="none")])(p, generator=gen(32), context=ctx)
    assert ctx["h"].shape == (2, 1) and out.tensors["carry"].shape == (4, 16)
    h = ctx["h"][:, 0]
    for row, sample in ((0, 0), (1, 1), (2, 0), (3, 1)):  # csi none: y = h z + n
        resid = out.tensors["carry"][row] - h[sample] * carry[row]
        assert (resid.abs().square().mean() < 0.05) == (sample == 1)  # 40 dB vs 0 dB noise
    assert ctx["eq_gain"]["carry"].shape == (4, 16)
    with pytest.raises(ValueError, match="batch dimension"):
        Link([AWGN(10.0)])(Payload({"a": lat, "b": carry[:3]}, primary=("a", "b")), generator=gen(0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 40.5, -20.5, torch.tensor([0.0, float("nan")]),
                                 (10.0, 50.0), (5.0, 1.0), (1.0,)])
def test_bad_snr_raises_naming_snr_db(bad):
    with pytest.raises(ValueError, match="snr_db"):
        resolve_snr_db(bad, 2, gen(0))
    with pytest.raises(ValueError, match="snr_db"):
        AWGN(bad)


def test_bad_inputs():
    z = unit_symbols(2, 4)
    with pytest.raises(TypeError, match="snr_db"):
        resolve_snr_db(True, 2, gen(0))
    with pytest.raises(TypeError, match="snr_db"):
        resolve_snr_db("10", 2, gen(0))
    with pytest.raises(ValueError, match="snr_db"):
        AWGN()(z, snr_db=torch.zeros(3), generator=gen(0))  # wrong batch size
    with pytest.raises(ValueError, match="snr_db"):
        AWGN()(z, generator=gen(0))  # no SNR anywhere
    with pytest.raises(ValueError, match="csi"):
        RayleighBlockFading(10.0, csi="perfect")
    with pytest.raises(ValueError, match="zf_min_gain"):
        RayleighFastFading(10.0, zf_min_gain=0.0)
    with pytest.raises(ValueError, match="coherence_symbols"):
        RayleighBlockFading(10.0, coherence_symbols=0)
    with pytest.raises(TypeError, match="z"):
        AWGN(10.0)(torch.randn(2, 4))  # real symbols
    with pytest.raises(ValueError, match="z"):
        AWGN(10.0)(torch.zeros(2, dtype=torch.complex64))  # no symbol dimension
    with pytest.raises(TypeError, match="z"):
        normalize_power(torch.randn(2, 4))
    with pytest.raises(ValueError, match="power"):
        normalize_power(z, power=-1.0)
    with pytest.raises(TypeError, match="x"):
        real_to_complex(z)
    with pytest.raises(ValueError, match="shape"):
        complex_to_real(z, (3,))
    with pytest.raises(ValueError, match="payload"):
        Link([AWGN(10.0)])(Payload({"side": torch.zeros(2)}), generator=gen(0))
    with pytest.raises(ValueError, match="snr_db"):
        Link([AWGN()])(Payload({"x": torch.zeros(2, 4)}, primary=("x",)), generator=gen(0))


# ------------------------------------------------------------------ one factory, one list, one SNR rule
def test_make_channel_is_the_one_factory():
    assert CHANNELS == ("awgn", "rayleigh")
    awgn = make_channel("awgn")
    assert type(awgn) is AWGN and awgn.csi == "mmse" and awgn.snr_db is None
    ray = make_channel("rayleigh", snr_db=5.0, csi="zf", coherence_symbols=4, seed=3)
    assert type(ray) is RayleighBlockFading and ray.snr_db == 5.0 and ray.csi == "zf"
    assert ray.coherence_symbols == 4 and ray.seed == 3
    assert type(make_channel(["rayleigh"])) is RayleighBlockFading and type(make_channel(("awgn",))) is AWGN
    mixed = make_channel(["awgn", "rayleigh"], csi="none", p_rayleigh=0.25)
    assert type(mixed) is MixedBlockChannel and mixed.p_rayleigh == 0.25 and mixed.csi == "none"
    for bad in ("optical", [], ["awgn", "fast"], 3):
        with pytest.raises(ValueError, match="kind"):
            make_channel(bad)
    with pytest.raises(ValueError, match="snr_db"):
        make_channel("awgn", snr_db=99.0)
    with pytest.raises(ValueError, match="p_rayleigh"):
        MixedBlockChannel(p_rayleigh=1.5)


def test_mixed_block_channel_fades_about_half_the_samples():
    h = MixedBlockChannel().draw_gains(2000, 8, gen(40))
    assert h.shape == (2000, 1)
    assert 0.45 < float((h == 1).float().mean()) < 0.55


def test_check_snr_db_is_the_range_rule_of_resolve_snr_db():
    lo, hi = SNR_DB_RANGE
    assert check_snr_db(lo) == lo and check_snr_db(hi) == hi and check_snr_db(7) == 7.0
    assert check_snr_db(torch.tensor(3.0)) == 3.0
    for bad in (lo - 0.1, hi + 0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="snr_point"):
            check_snr_db(bad, "snr_point")
        with pytest.raises(ValueError, match="snr_db"):
            resolve_snr_db(bad, 1)
    with pytest.raises(TypeError, match="snr_db"):
        check_snr_db(True)
    with pytest.raises(TypeError, match="snr_db"):
        check_snr_db("5")


def test_mmse_equaliser_is_the_lmmse_weight():
    h = torch.randn(3, 1, dtype=torch.complex64, generator=gen(41))
    n0 = torch.tensor([0.1, 1.0, 3.0])
    like = torch.zeros(3, 5, dtype=torch.complex64)
    g, a, v = RayleighBlockFading(csi="mmse").equalizer(ChannelState(torch.zeros(3), n0, h), like)
    assert torch.equal(g, lmmse_weight(h, n0[:, None]))
    torch.testing.assert_close(g, h.conj() / (h.abs().square() + n0[:, None]))
    g, a, v = AWGN(csi="mmse").equalizer(ChannelState(torch.zeros(3), n0, None), like)
    torch.testing.assert_close(g, (1 / (1 + n0[:, None])).to(torch.complex64))


def test_analog_mode_is_analog_link_with_counted_side_information():
    x = torch.randn(2, 4, 4, 4, generator=gen(42))
    p = Payload({"latents": x}, primary=("latents",))
    ctx = LinkContext()
    ch = AWGN(20.0, csi="mmse")
    ch.prepare(p, ctx, gen(43))
    sent = ch.send(p, ctx, gen(43))
    # AnalogLink's format: unit-power symbols + (mean, std) as 2 float32 per sample, in the payload
    assert sent.tensors["latents"].shape == (2, 32) and sent.tensors["latents"].dtype == torch.complex64
    assert sent.tensors["latents.stats"].shape == (2, 2) and "analog_lmmse" in sent.meta
    assert sent.tensor_bits() == 2 * 2 * 32
    out = ch.receive(sent, ctx, gen(43))
    assert set(out.tensors) == {"latents"} and out.meta == {} and ctx.extra == {}
    assert ((out.tensors["latents"] - x).square().mean() / x.var()).item() < 0.05
    # an explicit AnalogLink before the channel gives the same bits (same generator)
    from splitldm.link.analog import AnalogLink

    a = Link([ch])(p, generator=gen(44)).tensors["latents"]
    b = Link([AnalogLink(), ch])(p, generator=gen(44)).tensors["latents"]
    assert torch.equal(a, b)


# ------------------------------------------------------------------ per-block fading and transmit power
def test_block_sizes_are_contiguous_and_even():
    assert block_sizes(32, 8) == [4] * 8
    assert block_sizes(10, 4) == [3, 3, 2, 2]  # the first n mod M blocks one symbol longer
    assert block_sizes(5, 5) == [1] * 5 and sum(block_sizes(1001, 7)) == 1001
    with pytest.raises(ValueError, match="blocks"):
        block_sizes(3, 4)
    with pytest.raises(ValueError, match="blocks"):
        block_sizes(8, 0)


def test_blocks_one_gain_per_block_and_blocks_1_is_the_old_channel():
    z = unit_symbols(3, 10)
    _, state = RayleighBlockFading(5.0, blocks=4)(z, generator=gen(2), return_state=True)
    assert state.h.shape == (3, 4)
    # the same realisation through the per-symbol path: gains repeated over blocks of 3, 3, 2, 2 symbols
    per_symbol = state.h.repeat_interleave(torch.tensor([3, 3, 2, 2]), dim=1)
    noise_free = RayleighBlockFading(40.0, blocks=4).apply(z, ChannelState(state.snr_db, state.n0 * 0, state.h), gen(0))
    assert torch.equal(noise_free, z * per_symbol)
    # blocks=1 draws exactly what the default (one gain per sample) draws, in a Link as well
    p = Payload({"x": z}, primary=("x",))
    a, ca = Link([RayleighBlockFading(5.0)]).send_half(p, gen(3))
    b, cb = Link([RayleighBlockFading(5.0, blocks=1)]).send_half(p, gen(3))
    assert torch.equal(a.tensors["x"], b.tensors["x"]) and torch.equal(ca.h, cb.h)


def test_block_power_scales_each_block_and_the_receiver_sees_effective_gains():
    """Same generator: the powered channel draws the same gains and noise; block m's received signal is
    ``sqrt(p_m) h_m z`` (noise-free energy ratio exactly p_m) and the published CSI is ``sqrt(p_m) h_m``."""
    z = unit_symbols(2, 32)
    p = [2.0, 0.0, 1.5, 0.5, 1.0, 1.25, 0.75, 1.0]
    payload = Payload({"x": z}, primary=("x",))
    eq, ceq = Link([RayleighBlockFading(5.0, blocks=8)]).send_half(payload, gen(11))
    pw, cpw = Link([RayleighBlockFading(5.0, blocks=8, power=p)]).send_half(payload, gen(11))
    sq = torch.tensor(p).sqrt()
    assert torch.allclose(cpw.h, ceq.h * sq, rtol=0, atol=1e-6)
    signal_eq = ceq.h.repeat_interleave(4, dim=1) * z
    signal_pw = cpw.h.repeat_interleave(4, dim=1) * z
    noise = eq.tensors["x"] - signal_eq
    assert torch.allclose(pw.tensors["x"] - signal_pw, noise, atol=1e-5)  # the same noise draw
    ratio = signal_pw.abs().square().reshape(2, 8, 4).sum(-1) / signal_eq.abs().square().reshape(2, 8, 4).sum(-1)
    assert torch.allclose(ratio, torch.tensor(p).expand(2, 8), rtol=1e-5, atol=1e-6)
    # the receiver needs no p: a channel built without power equalises the powered output with the
    # published effective gains exactly as the sender's own channel does
    rx = Link([RayleighBlockFading(5.0, blocks=8)]).receive_half(pw, cpw)
    assert torch.equal(rx.tensors["x"], Link([RayleighBlockFading(5.0, blocks=8, power=p)]).receive_half(pw, cpw).tensors["x"])
    # per-sample powers (B, M)
    per = torch.tensor([p, [1.0] * 8])
    _, c2 = Link([RayleighBlockFading(5.0, blocks=8, power=per)]).send_half(payload, gen(11))
    assert torch.equal(c2.h[1], ceq.h[1]) and torch.allclose(c2.h[0], cpw.h[0], atol=0)


def test_block_power_bad_inputs():
    with pytest.raises(ValueError, match="blocks"):
        RayleighBlockFading(5.0, blocks=0)
    with pytest.raises(ValueError, match="blocks"):
        RayleighBlockFading(5.0, blocks=2, coherence_symbols=4)
    with pytest.raises(ValueError, match="power"):
        RayleighBlockFading(5.0, power=[1.0, 1.0])  # no blocks
    with pytest.raises(ValueError, match="power"):
        RayleighBlockFading(5.0, blocks=2, power=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="power"):
        RayleighBlockFading(5.0, blocks=2, power=[1.5, 1.0])  # mean 1.25: more than the budget
    with pytest.raises(ValueError, match="power"):
        RayleighBlockFading(5.0, blocks=2, power=[2.5, -0.5])
    with pytest.raises(ValueError, match="power"):
        RayleighBlockFading(5.0, blocks=2, power=[float("nan"), 1.0])
    with pytest.raises(TypeError, match="power"):
        RayleighBlockFading(5.0, blocks=2, power="1,1")
    with pytest.raises(ValueError, match="power"):  # per-sample powers for another batch
        RayleighBlockFading(5.0, blocks=2, power=torch.ones(3, 2))(unit_symbols(2, 4), generator=gen(0))
    with pytest.raises(ValueError, match="blocks"):  # fewer symbols than blocks
        RayleighBlockFading(5.0, blocks=8)(unit_symbols(2, 4), generator=gen(0))
    assert make_channel("rayleigh", blocks=8, power=[1.0] * 8).note()["blocks"] == 8
