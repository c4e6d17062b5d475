"""SeedCodec: shapes, bandwidth accounting, power, SNR adaptivity, gradients, persistence, Link stage, errors."""

import hashlib
import json
import os

import pytest
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from splitldm.link.channels import AWGN, RayleighBlockFading
from splitldm.link.codec import SeedCodec, effective_snr_db
from splitldm.link.stack import Link
from splitldm.link.payload import Payload


def _codec(**kw):
    torch.manual_seed(0)
    kw.setdefault("hidden_channels", 16)
    kw.setdefault("num_blocks", 1)
    return SeedCodec(**kw).eval()


def _x(b=3, c=4, h=8, w=8, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rho,shape,k", [(0.125, (4, 8, 8), 32), (0.25, (4, 8, 8), 64), (1 / 16, (4, 8, 8), 16),
                                         (0.125, (4, 7, 5), 17), (0.5, (8, 4, 4), 64), (0.125, (4, 16, 16), 128)])
def test_shapes_and_rho_accounting(rho, shape, k):
    codec = _codec(in_channels=shape[0], rho=rho, sample_size=shape[1:])
    x = _x(2, *shape)
    assert codec.num_symbols(shape) == k
    s = codec.encode(x, 10.0)
    assert s.shape == (2, k) and s.dtype == torch.complex64
    assert s.shape[1] / x[0].numel() == pytest.approx(rho, abs=1 / x[0].numel())
    x_hat = codec.decode(s, 10.0, shape=shape)
    assert x_hat.shape == x.shape and x_hat.dtype == torch.float32


def test_decode_defaults_to_sample_size():
    codec = _codec(sample_size=(6, 4))
    s = codec.encode(_x(2, 4, 6, 4), 5.0)
    assert codec.decode(s, 5.0).shape == (2, 4, 6, 4)


def test_unit_average_power_per_sample():
    codec = _codec()
    x = _x(5) * torch.tensor([0.01, 1.0, 100.0, 3.0, 0.5]).reshape(-1, 1, 1, 1)
    s = codec.encode(x, torch.tensor([0.0, 5.0, 10.0, 15.0, 20.0]))
    torch.testing.assert_close(s.abs().pow(2).mean(1), torch.ones(5), rtol=1e-5, atol=1e-5)


def test_rho_too_small_raises_naming_rho():
    codec = _codec(rho=0.001)
    with pytest.raises(ValueError, match="rho"):
        codec.encode(_x(1, 4, 4, 4), 5.0)
    with pytest.raises(ValueError, match="rho"):
        SeedCodec(rho=0.0)
    with pytest.raises(ValueError, match="rho"):
        SeedCodec(rho=float("nan"))


def test_snr_adaptivity_changes_encoder_and_decoder():
    codec = _codec()
    x = _x(2)
    s0, s20 = codec.encode(x, 0.0), codec.encode(x, 20.0)
    assert (s0 - s20).abs().max() > 1e-4
    assert (codec.decode(s0, 0.0) - codec.decode(s0, 20.0)).abs().max() > 1e-4
    # per-sample SNRs: sample i only depends on its own SNR
    mixed = codec.encode(x, torch.tensor([0.0, 20.0]))
    torch.testing.assert_close(mixed[0], s0[0])
    torch.testing.assert_close(mixed[1], s20[1])


def test_csi_conditioning_uses_fading_gain():
    codec = _codec(condition="csi")
    x = _x(2)
    h = torch.tensor([[0.1 + 0j], [1.0 + 0j]], dtype=torch.complex64)
    snr = torch.tensor([10.0, 10.0])
    torch.testing.assert_close(effective_snr_db(snr, h), torch.tensor([-10.0, 10.0]))
    with_h = codec.encode(x, snr, h=h)
    torch.testing.assert_close(with_h[1], codec.encode(x, snr)[1])  # |h| = 1: same as plain SNR
    torch.testing.assert_close(with_h[0], codec.encode(x, torch.tensor([-10.0, 10.0]))[0])
    plain = _codec(condition="snr")
    torch.testing.assert_close(plain.encode(x, snr, h=h), plain.encode(x, snr))


def test_forward_dict_and_gradient_through_channel():
    codec = _codec(condition="csi").train()
    x = _x(4)
    g = torch.Generator().manual_seed(1)
    out = codec(x, (0.0, 20.0), generator=g, channel=RayleighBlockFading(csi="mmse"))
    assert set(out) >= {"symbols", "y", "x_hat", "snr_db", "h"}
    assert out["x_hat"].shape == x.shape and out["h"].shape == (4, 1)
    assert out["snr_db"].min() >= 0 and out["snr_db"].max() <= 20
    loss = (out["x_hat"] - x).pow(2).mean()
    loss.backward()
    # the encoder only gets gradient through the (equalised) channel output
    assert codec.enc_in[0].weight.grad is not None and codec.enc_in[0].weight.grad.abs().sum() > 0
    assert codec.dec_out.weight.grad.abs().sum() > 0


def test_forward_is_seeded_and_noise_depends_on_snr():
    codec = _codec()
    x = _x(2)
    a = codec(x, 5.0, generator=torch.Generator().manual_seed(3))["x_hat"]
    b = codec(x, 5.0, generator=torch.Generator().manual_seed(3))["x_hat"]
    torch.testing.assert_close(a, b)
    lo = codec(x, 40.0, generator=torch.Generator().manual_seed(3))
    err = (lo["y"] - lo["symbols"]).abs().pow(2).mean()
    assert err < 1e-3  # N0 = 1e-4 at 40 dB (AWGN default; csi="none" leaves y unscaled)


def test_save_load_round_trip(tmp_path):
    codec = _codec(rho=0.25, condition="csi", sample_size=8)
    codec.set_input_stats([0.1, -0.2, 0.3, 0.0], [1.5, 2.0, 0.5, 1.0])
    codec.default_snr_db = 7.0
    codec.save_pretrained(tmp_path / "c")
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"config.json", "model.safetensors"}
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["rho"] == 0.25 and cfg["in_std"] == [1.5, 2.0, 0.5, 1.0]
    loaded = SeedCodec.from_pretrained(tmp_path / "c")
    assert loaded.default_snr_db == 7.0
    x = _x(2)
    torch.testing.assert_close(loaded.encode(x, 3.0), codec.encode(x, 3.0))
    s = codec.encode(x, 3.0)
    torch.testing.assert_close(loaded.decode(s, 3.0), codec.decode(s, 3.0))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory"):
        SeedCodec.from_pretrained(tmp_path / "missing")
    _codec().save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        SeedCodec.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{ nope")
    with pytest.raises(ValueError, match="corrupt"):
        SeedCodec.from_pretrained(tmp_path / "c")
    _codec().save_pretrained(tmp_path / "d")
    (tmp_path / "d" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SeedCodec.from_pretrained(tmp_path / "d")
    # weights that do not fit the config
    _codec(hidden_channels=8).save_pretrained(tmp_path / "e")
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    cfg["hidden_channels"] = 16
    (tmp_path / "e" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        SeedCodec.from_pretrained(tmp_path / "e")


def test_trained_snr_range_is_validated_and_reported():
    assert SeedCodec(hidden_channels=8, trained_snr_range_db=[-5, 20]).training_snr_range_db == (-5.0, 20.0)
    assert SeedCodec(hidden_channels=8, snr_range_db=(2, 12)).training_snr_range_db == (2.0, 12.0)
    with pytest.raises(ValueError, match="trained_snr_range_db"):
        SeedCodec(hidden_channels=8, trained_snr_range_db=[10, 0])


def test_input_errors():
    codec = _codec()
    with pytest.raises(ValueError, match="channels"):
        codec.encode(_x(1, 3), 5.0)
    with pytest.raises(ValueError, match="x"):
        codec.encode(torch.randn(4, 8, 8), 5.0)
    bad = _x(1)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(bad, 5.0)
    with pytest.raises(ValueError, match="snr_db"):
        codec.encode(_x(2), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="snr_db"):
        codec.encode(_x(1), float("inf"))
    s = codec.encode(_x(1), 5.0)
    with pytest.raises(ValueError, match="y"):
        codec.decode(s[:, :-1], 5.0)
    with pytest.raises(TypeError, match="y"):
        codec.decode(s.real, 5.0)
    with pytest.raises(ValueError, match="condition"):
        SeedCodec(condition="perfect")


def _payload(b=2, seed=0):
    lat = _x(b, seed=seed)
    side = torch.arange(3, dtype=torch.int64)
    return Payload(tensors={"latents": lat, "step": side}, meta={"step": 4}, primary=("latents",))


@pytest.mark.parametrize("channel", [AWGN(snr_db=10.0), RayleighBlockFading(snr_db=10.0, csi="mmse")])
def test_link_stage_round_trip(channel):
    codec = _codec(condition="csi")
    link = Link([codec, channel])
    p = _payload()
    out = link(p, generator=torch.Generator().manual_seed(0))
    assert out.tensors["latents"].shape == p.tensors["latents"].shape
    assert out.tensors["latents"].dtype == torch.float32
    assert torch.equal(out.tensors["step"], p.tensors["step"])  # side information untouched
    assert out.meta == p.meta
    sent = [r for r in out.history if r.direction == "send"]
    assert sent[1].stage == "SeedCodec" and sent[1].channel_uses == 2 * 32
    # the latents' bits became channel uses; only the side information stays digital
    assert sent[1].bits < sent[0].bits
    again = link(_payload(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.tensors["latents"], out.tensors["latents"])


def test_link_stage_matches_forward_and_errors():
    codec = _codec()
    link = Link([codec, AWGN(snr_db=40.0)])
    out = link(_payload(), generator=torch.Generator().manual_seed(0))
    clean = codec.decode(codec.encode(_payload().tensors["latents"], 40.0), 40.0)
    assert (out.tensors["latents"] - clean).abs().max() < 0.05
    with pytest.raises(ValueError, match="snr_db"):
        Link([_codec()])(_payload())
    alone = _codec()
    alone.default_snr_db = 10.0
    assert Link([alone])(_payload()).tensors["latents"].shape == (2, 4, 8, 8)
    wrong = Payload(tensors={"latents": _x(2, 3)}, primary=("latents",))
    with pytest.raises(ValueError, match="channels"):
        Link([codec, AWGN(snr_db=5.0)])(wrong)


def test_link_with_token_merge_before_codec():
    from splitldm.link.merge import TokenMerge

    codec = _codec()
    link = Link([TokenMerge(0.5), codec, AWGN(snr_db=10.0)])
    out = link(_payload(), generator=torch.Generator().manual_seed(0))
    assert out.tensors["latents"].shape == (2, 4, 8, 8)
    sent = [r for r in out.history if r.direction == "send"]
    assert sent[2].channel_uses == 2 * 16  # 32 merged tokens x 4 channels x rho 1/8 per image


# ------------------------------------------------------------------ diffusers save / load contract
# Computed with the 0.1 code (SeedCodec.load, before ModelMixin), on a fixed payload and seed: the shipped
# codec + Rayleigh block fading at 5 dB (MMSE), link generator seeded 7. Every 64th value of the received
# latents (2, 4, 8, 8), their sum and their absolute sum. sha256 of the received float32 bytes on the
# machine that computed it: 68e6e2fa4131ad68c32b6a32b9678ed294b3f88f020b28e0879a93630dfd0523.
_SHIPPED_RECEIVED = [0.15173017978668213, 0.15102487802505493, 0.4687305688858032, -0.04137662425637245,
                     0.136293426156044, 0.8480237722396851, 0.3227176070213318, 0.10411328077316284]
_SHIPPED_SUM, _SHIPPED_ABS_SUM = 40.638826734386384, 166.9275997010991
_SHIPPED_WEIGHTS_SHA256 = "ffa227e3a267ec1c6ab96dd9c2db95134418a2276273d8ee4a4ca66aab3f095e"


def _received(codec):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(123))
    p = Payload({"latents": x}, primary=("latents",))
    out = Link([codec, RayleighBlockFading(snr_db=5.0, csi="mmse")])(p, generator=torch.Generator().manual_seed(7))
    return out.tensors["latents"]


def test_shipped_codec_from_pretrained_matches_the_01_loader():
    from splitldm.zoo import resolve

    folder = resolve("seed-codec")
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == _SHIPPED_WEIGHTS_SHA256
    codec = SeedCodec.from_pretrained("seed-codec")  # a zoo name, from any working directory
    assert isinstance(codec, ModelMixin) and isinstance(codec, ConfigMixin) and not codec.training
    assert codec.config.rho == 0.125 and codec.config.condition == "csi"
    y = _received(codec)
    torch.testing.assert_close(y.flatten()[::64], torch.tensor(_SHIPPED_RECEIVED), rtol=0, atol=1e-6)
    assert float(y.double().sum()) == pytest.approx(_SHIPPED_SUM, abs=1e-4)
    assert float(y.double().abs().sum()) == pytest.approx(_SHIPPED_ABS_SUM, abs=1e-4)
    with pytest.warns(DeprecationWarning, match="from_pretrained"):
        old = SeedCodec.load(folder)  # the 0.1 name: a deprecated alias, same bits
    assert torch.equal(_received(old), y)
    assert torch.equal(_received(SeedCodec.from_pretrained(folder)), y)  # a folder works too


def test_save_pretrained_from_pretrained_round_trip_and_aliases(tmp_path):
    codec = _codec(rho=0.25, condition="csi")
    codec.set_input_stats([0.1, -0.2, 0.3, 0.0], [1.5, 2.0, 0.5, 1.0])
    codec.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["_class_name"] == "SeedCodec" and "_diffusers_version" in cfg
    loaded = SeedCodec.from_pretrained(tmp_path / "c", torch_dtype=torch.float64)
    assert loaded.enc_out.weight.dtype == torch.float64 and loaded.in_mean.dtype == torch.float64
    again = SeedCodec.from_config(loaded.config)  # fresh weights, same architecture (diffusers' verb)
    assert again.config.rho == 0.25 and again.in_std.reshape(-1).tolist() == [1.5, 2.0, 0.5, 1.0]
    assert isinstance(codec.in_mean, torch.Tensor)  # buffers win over the config keys of the same name
    with pytest.warns(DeprecationWarning, match="save_pretrained"):
        codec.save(tmp_path / "old")
    assert {p.name for p in (tmp_path / "old").iterdir()} == {"config.json", "model.safetensors"}
    with pytest.raises(ValueError, match="safe_serialization"):
        codec.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    with pytest.raises(TypeError, match="push_to_hub"):
        codec.save_pretrained(tmp_path / "hub", push_to_hub=True)
    codec.save_pretrained(tmp_path / "worker", is_main_process=False)  # another DDP rank writes nothing
    assert not list((tmp_path / "worker").iterdir())
    # a config of another class is refused
    cfg["_class_name"] = "AutoencoderKL"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="AutoencoderKL"):
        SeedCodec.from_pretrained(tmp_path / "c")


def test_from_pretrained_sources(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="pretrained_model_name_or_path"):
        SeedCodec.from_pretrained(42)
    # a hub id is only tried when it is not a local path and HF_HUB_OFFLINE is unset
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        SeedCodec.from_pretrained("someone/some-codec")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def fake_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        _codec().save_pretrained(tmp_path / "snapshot")
        return str(tmp_path / "snapshot")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert isinstance(SeedCodec.from_pretrained("someone/some-codec"), SeedCodec)
    assert calls[0][0] == "someone/some-codec" and all(p.endswith((".json", ".safetensors")) for p in calls[0][1])
    with pytest.raises(FileNotFoundError, match="local_files_only"):
        SeedCodec.from_pretrained("someone/other", local_files_only=True)
    # a local folder with a hub-like name is read locally, never downloaded
    _codec().save_pretrained(tmp_path / "owner" / "name")
    monkeypatch.chdir(tmp_path)
    assert isinstance(SeedCodec.from_pretrained("owner/name"), SeedCodec) and len(calls) == 1
    assert os.environ.get("HF_HUB_OFFLINE") is None
