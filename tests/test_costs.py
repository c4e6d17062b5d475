import math

import numpy as np
import pytest
import torch

from splitldm.analysis.costs import (
    ES_DEFAULT, UE_DEFAULT, ChannelParams, DeviceProfile, ModelFlops, channel_rate_bps, download_cost,
    load_profiles, model_flops, path_loss_db, sample_channel_gain_db, snr_db, split_cost, transmission,
    unet_step_flops,
)
from splitldm.pipeline.models import get_spec

# A hand-sized model: numbers chosen so every cost below is checkable by hand.
TOY = ModelFlops(model="toy", unet_step=1e12, text_encode=1e11, vae_decode=2e12,
                 latent_shape=(4, 64, 64), image_shape=(3, 512, 512))
ES = DeviceProfile("es", flops_per_s=1e13, joules_per_flop=1e-11)
UE = DeviceProfile("ue", flops_per_s=5e12, joules_per_flop=1.25e-11)


def test_sd15_unet_step_is_about_0p8_tflop():
    f = model_flops("sd15")
    assert 0.75e12 < f.unet_step < 0.85e12
    assert f.latent_shape == (4, 64, 64) and f.image_shape == (3, 512, 512)
    assert f.image_bits == 512 * 512 * 3 * 8


def test_attention_is_counted():
    # tiny UNet at 8x8 latents: doubling the latent side multiplies conv FLOPs by 4 and
    # self-attention (quadratic in tokens) by 16, so the ratio exceeds 4 only if sdpa is counted.
    cfg = get_spec("tiny").unet
    small, big = unet_step_flops(cfg, 8), unet_step_flops(cfg, 32)
    assert big / small > 4.5


def test_model_flops_accepts_config_dict_and_batch():
    spec = get_spec("tiny")
    d = {"unet": spec.unet, "vae": spec.vae, "text_encoders": spec.text_encoders, "image_size": 64}
    a, b = model_flops(d), model_flops("tiny")
    assert a.unet_step == b.unet_step and a.vae_decode == b.vae_decode
    assert model_flops("tiny", batch_size=2).unet_step == pytest.approx(2 * b.unet_step, rel=1e-6)
    with pytest.raises(ValueError, match="model"):
        model_flops({"unet": spec.unet})
    with pytest.raises(ValueError, match="image_size"):
        model_flops("tiny", image_size=30)
    with pytest.raises(ValueError, match="name"):
        model_flops("nope")


def test_channel_hand_values():
    assert path_loss_db(100) == pytest.approx(-(35.3 + 75.2))
    # 30 dBm, 100 m, noise -94 dBm: 30 - 110.5 + 94 = 13.5 dB
    assert snr_db(30, -94, 100) == pytest.approx(13.5)
    assert snr_db(30, -94, 100, fading_power=0.1) == pytest.approx(3.5)
    assert channel_rate_bps(1e6, 10 * math.log10(3)) == pytest.approx(2e6)
    with pytest.raises(ValueError, match="distance_m"):
        path_loss_db(0)
    with pytest.raises(ValueError, match="bandwidth_hz"):
        channel_rate_bps(0, 0)


def test_rayleigh_draws_are_seeded_and_exp1():
    ch = ChannelParams(distance_m=(100.0, 100.0))
    a = sample_channel_gain_db(np.random.default_rng(0), ch, size=20000)
    b = sample_channel_gain_db(np.random.default_rng(0), ch, size=20000)
    assert np.array_equal(a, b)
    fade = 10 ** ((a - 13.5) / 10)
    assert fade.mean() == pytest.approx(1.0, abs=0.03)  # E|h|^2 = 1


def test_transmission_bits_paper_convention():
    n = 4 * 128 * 128  # SDXL latent: 1.05 Mbit at 16 bit, 0.56 at r=0.5, 0.31 at r=0.75 (DOMAIN.md)
    assert transmission(n)[0] == 1048576
    assert transmission(n, 0.5)[0] == pytest.approx(0.557e6, rel=1e-3)
    assert transmission(n, 0.75)[0] == pytest.approx(0.311e6, rel=1e-3)
    bits, uses = transmission(n, 0.5, rho=0.5)
    assert bits == n * 0.5 and uses == 0.25 * n
    with pytest.raises(ValueError, match="merge_ratio"):
        transmission(n, 1.0)
    with pytest.raises(ValueError, match="rho"):
        transmission(n, 0.0, rho=0)


def test_split_cost_by_hand():
    snr = 10 * math.log10(3)  # rate = 2 Mbit/s at 1 MHz
    ch = ChannelParams(tx_power_dbm=30.0)  # 1 W
    c = split_cost(TOY, es_steps=3, ue_steps=1, merge_ratio=0.5, snr_db=snr, es=ES, ue=UE, channel=ch,
                   guidance=True, fixed_delay_s=0.1)
    f_es = 1e11 + 3 * 2e12
    f_ue = 1 * 2e12 + 2e12
    bits = 0.5 * 16384 * 16 + 0.5 * 16384 * 1
    t_tx = bits / 2e6
    assert c.bits == bits
    assert c.latency_s == pytest.approx(f_es / 1e13 + t_tx + f_ue / 5e12 + 0.1)
    assert c.energy_j == pytest.approx(f_es * 1e-11 + 1.0 * t_tx + f_ue * 1.25e-11)
    assert c.parts["tx_s"] == pytest.approx(t_tx)
    # analog seed: channel uses at B per second
    a = split_cost(TOY, 4, 0, 0.0, snr_db=snr, rho=0.25, es=ES, ue=UE, channel=ch, fixed_delay_s=0)
    assert a.channel_uses == 0.25 * 16384 and a.parts["tx_s"] == pytest.approx(4096 / 1e6)


def test_download_cost_by_hand():
    snr = 10 * math.log10(3)
    c = download_cost(TOY, 4, snr_db=snr, es=ES, guidance=False, fixed_delay_s=0.0)
    f = 1e11 + 4e12 + 2e12
    assert c.latency_s == pytest.approx(f / 1e13 + 512 * 512 * 24 / 2e6)
    assert c.bits == 512 * 512 * 24


def test_default_limits_bind_for_sdxl():
    f = model_flops("sdxl")
    ch = ChannelParams()
    mid = ch.mean_snr_db()
    assert split_cost(f, 12, 0, 0.0, mid).latency_s > 3.0      # full latent, 12 steps: too slow
    assert split_cost(f, 12, 0, 0.75, mid).latency_s < 3.0     # merging rescues latency
    assert split_cost(f, 12, 0, 0.75, mid).energy_j > 1800.0   # but 12 steps cost too much energy
    assert split_cost(f, 8, 0, 0.5, mid).energy_j < 1800.0
    # MEG vs generate-then-download at the default channel
    assert split_cost(f, 8, 0, 0.5, mid).latency_s < 0.5 * download_cost(f, 8, mid).latency_s


def test_profiles_yaml(tmp_path):
    assert UE_DEFAULT.flops_per_s == ES_DEFAULT.flops_per_s / 2
    assert UE_DEFAULT.joules_per_flop == pytest.approx(1.25 * ES_DEFAULT.joules_per_flop)
    p = tmp_path / "p.yaml"
    p.write_text("es: {flops_per_s: 2.0e13, joules_per_flop: 1.0e-11}\nue: {flops_per_s: 1.0e13, joules_per_flop: 2.0e-11}\n")
    es, ue = load_profiles(p)
    assert es.flops_per_s == 2e13 and ue.joules_per_flop == 2e-11
    p.write_text("es: {flops_per_s: 2.0e13}\nue: {flops_per_s: 1.0e13, joules_per_flop: 2.0e-11}\n")
    with pytest.raises(ValueError, match="joules_per_flop"):
        load_profiles(p)
    p.write_text("es: {flops_per_s: 2.0e13, joules_per_flop: 1.0e-11}\n")
    with pytest.raises(ValueError, match="ue"):
        load_profiles(p)
    with pytest.raises(ValueError, match="flops_per_s"):
        DeviceProfile("x", flops_per_s=0, joules_per_flop=1e-11)


def test_bad_cost_inputs():
    with pytest.raises(ValueError, match="es_steps"):
        split_cost(TOY, -1)
    with pytest.raises(ValueError, match="snr_db"):
        split_cost(TOY, 4, snr_db=float("nan"))
    with pytest.raises(ValueError, match="steps"):
        split_cost(TOY, 0, 0)


# --------------------------------------------------------------------------- DiT families (issue 13)

@pytest.mark.parametrize("name, step_tflop, text_gflop, latent", [
    ("sd3", (8.0, 10.0), (2300, 2700), (16, 128, 128)),     # 24 joint blocks over 4096 + 333 tokens; T5 over 256
    ("pixart", (6.0, 7.0), (1000, 1300), (4, 128, 128)),    # 28 blocks; T5-XXL over 120 tokens
    ("flux", (70.0, 80.0), (4500, 5500), (16, 128, 128)),   # 19 double + 38 single blocks; T5 over 512
])
def test_dit_model_flops_of_the_real_configs(name, step_tflop, text_gflop, latent):
    f = model_flops(name)
    assert step_tflop[0] * 1e12 < f.unet_step < step_tflop[1] * 1e12 and f.denoiser_step == f.unet_step
    assert text_gflop[0] * 1e9 < f.text_encode < text_gflop[1] * 1e9
    assert f.latent_shape == latent and f.image_shape == (3, 1024, 1024)
    assert 9e12 < f.vae_decode < 12e12  # the 1024 px SD-family VAE decoder: ~10.5 TFLOP
    assert model_flops(name, image_size=512).unet_step < f.unet_step / 3  # a quarter of the image tokens


def test_dit_step_flops_match_the_block_chain_cut_table():
    from splitldm.analysis.costs import dit_step_flops
    from splitldm.pipeline.dit_chain import dit_chain
    from splitldm.pipeline.dit_specs import get_dit_spec

    spec = get_dit_spec("pixart")
    rows = dit_chain(spec.build_transformer()).cut_table(height=64, width=64, text_length=120)
    assert dit_step_flops("pixart", 64) == rows[0].flops_ue
    with pytest.raises(ValueError, match="image_size"):
        model_flops("flux", image_size=1000)
    with pytest.raises(ValueError, match="name"):
        model_flops("sd4")
    with pytest.raises(TypeError, match="spec"):
        dit_step_flops(3, 64)


def test_model_params_of_the_real_configs():
    from splitldm.analysis.costs import model_params

    # Denoiser + VAE + text encoders: SD3-medium 2.0 B + 4.7 B T5 + 0.8 B CLIPs; Flux 11.9 B + 4.8 B.
    assert 7.0e9 < model_params("sd3") < 8.0e9
    assert 16.0e9 < model_params("flux") < 17.5e9
    assert 5.0e9 < model_params("pixart") < 5.6e9
    assert 0.9e9 < model_params("sd15") < 1.2e9


@pytest.mark.parametrize("name", ["sd3", "pixart", "flux"])
def test_meg_environment_accepts_dit_models(name):
    from splitldm.rl.envs.meg import MEGRates

    env = MEGRates(model=name)
    assert env.flops.model == name and env.flops.unet_step == model_flops(name).unet_step
    obs, _ = env.reset(seed=0)
    _, reward, *_ = env.step(env.action_space.sample())
    assert np.isfinite(reward)
    env2 = MEGRates(model=model_flops(name))  # a ModelFlops works as well
    assert env2.flops == env.flops
