"""SeedCodecBank: a seed codec per tensor of a UNet-cut payload (Link round trip, accounting, errors,
persistence) and its Lightning recipe (splitldm/recipes/codec_bank.py)."""

import json
import math

import pytest
import torch

from splitldm.link.channels import AWGN
from splitldm.link.codec import SeedCodec
from splitldm.link.codec_bank import SeedCodecBank, payload_layout
from splitldm.link.stack import Link
from splitldm.link.payload import Payload
from splitldm.pipeline.split import SplitPipeline
from splitldm.recipes.codec_bank import CodecBankModule, cut_features, main

STAGE = 3  # before down.2 of tiny: latents, carry.hidden and four skips of three shapes cross
SMALL = dict(rho=0.125, hidden_channels=8, num_blocks=1)


@pytest.fixture(scope="module")
def cut_payload(tiny_pipe):
    split = SplitPipeline(tiny_pipe, split_step=1, split_stage=STAGE)
    # guidance 1: one row per image in every tensor (guided carries: test_guided_cut_carry_...)
    return split.edge(["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(0))


def test_round_trip_of_a_cut_payload(cut_payload):
    layout = payload_layout(cut_payload)
    assert len({shape for shape in layout.values()}) >= 3  # several channel counts / resolutions
    bank = SeedCodecBank.for_payload(cut_payload, **SMALL)
    assert bank.layout() == layout
    received = Link([bank, AWGN(snr_db=40.0)])(cut_payload, generator=torch.Generator().manual_seed(1))
    for name in cut_payload.primary:
        x, x_hat = cut_payload.tensors[name], received.tensors[name]
        assert x_hat.shape == x.shape and x_hat.dtype == x.dtype and torch.isfinite(x_hat).all()
    for name in set(cut_payload.tensors) - set(cut_payload.primary):  # side information crosses untouched
        assert torch.equal(received.tensors[name], cut_payload.tensors[name])
    assert "seed_codec_bank" not in received.meta and received.meta == cut_payload.meta

    # channel uses: sum over tensors of rows x k, k = floor(rho C h w), exactly as the payload counts them
    ks = bank.num_symbols()
    assert all(ks[n] == math.floor(0.125 * math.prod(shape)) for n, shape in layout.items())
    expected = sum(cut_payload.tensors[n].shape[0] * ks[n] for n in cut_payload.primary)
    sent = [r for r in received.history if r.stage == "SeedCodecBank" and r.direction == "send"][0]
    assert sent.channel_uses == expected == Link.summary(received)["channel_uses"]
    assert sent.bits < cut_payload.num_bits()  # the features left the digital part


def test_split_pipeline_end_to_end(tiny_pipe, cut_payload):
    bank = SeedCodecBank.for_payload(cut_payload, **SMALL)
    split = SplitPipeline(tiny_pipe, split_step=1, split_stage=STAGE, link=Link([bank, AWGN(snr_db=10.0)]))
    out = split(["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=1.0, output_type="pt",
                generator=torch.Generator().manual_seed(0), link_generator=torch.Generator().manual_seed(2))
    assert out.images.shape == (2, 3, 64, 64) and torch.isfinite(out.images).all()
    assert out.link["channel_uses"] == sum(2 * k for k in bank.num_symbols().values())


@pytest.mark.parametrize("fading", ["awgn", "rayleigh"])
def test_guided_cut_carry_crosses_codec_and_channel(tiny_pipe, fading):
    """With guidance the carry holds [uncond, cond] rows (2B) next to B latents: rows i and i + B are
    sample i's, so they share its SNR and fading gain; the split still finishes."""
    from splitldm.link.channels import RayleighBlockFading

    split = SplitPipeline(tiny_pipe, split_step=1, split_stage=STAGE)
    kw = dict(num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    payload = split.edge(["a red circle", "a blue square"], **kw)
    rows = {payload.tensors[n].shape[0] for n in payload.primary}
    assert rows == {2, 4}
    bank = SeedCodecBank.for_payload(payload, **SMALL)
    channel = AWGN(snr_db=[0.0, 30.0]) if fading == "awgn" else RayleighBlockFading(snr_db=30.0)
    link = Link([bank, channel])
    received = link(payload, generator=torch.Generator().manual_seed(1))
    for name in payload.primary:
        assert received.tensors[name].shape == payload.tensors[name].shape
    split = SplitPipeline(tiny_pipe, split_step=1, split_stage=STAGE, link=link)
    out = split(["a red circle", "a blue square"], output_type="pt", link_generator=torch.Generator().manual_seed(2), **kw)
    assert out.images.shape == (2, 3, 64, 64) and torch.isfinite(out.images).all()


def test_errors(cut_payload):
    layout = payload_layout(cut_payload)
    missing = {n: s for n, s in layout.items() if n != "carry.skip.2"}
    with pytest.raises(ValueError, match=r"carry\.skip\.2.*no codec"):
        Link([SeedCodecBank.for_layout(missing, **SMALL), AWGN(snr_db=10.0)])(cut_payload)
    wrong = dict(layout, **{"carry.hidden": (64, 4, 4)})
    with pytest.raises(ValueError, match=r"carry\.hidden.*shape"):
        Link([SeedCodecBank.for_layout(wrong, **SMALL), AWGN(snr_db=10.0)])(cut_payload)
    with pytest.raises(ValueError, match="layout"):
        SeedCodecBank.for_layout({"x": (4, 8)})
    with pytest.raises(ValueError, match="in_channels"):
        SeedCodecBank.for_layout({"x": (4, 8, 8)}, in_channels=4)
    with pytest.raises(TypeError, match="SeedCodec"):
        SeedCodecBank({"x": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="non-empty"):
        SeedCodecBank({})
    bank = SeedCodecBank.for_layout({"x": (4, 8, 8)}, **SMALL)
    with pytest.raises(ValueError, match="no codec-bank symbols"):
        bank.receive(Payload({"x": torch.zeros(1, 4, 8, 8)}, primary=("x",)), {}, torch.Generator())
    with pytest.raises(ValueError, match="snr_db"):  # no channel stage and no default SNR
        Link([bank])(Payload({"x": torch.zeros(1, 4, 8, 8)}, primary=("x",)))


def test_save_load_round_trip(tmp_path, cut_payload):
    bank = SeedCodecBank.for_payload(cut_payload, **SMALL)
    bank["latents"].set_input_stats([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 2.0])
    bank.save_pretrained(tmp_path / "bank")
    assert not list((tmp_path / "bank").rglob("*.bin")) and not list((tmp_path / "bank").rglob("*.pt"))
    loaded = SeedCodecBank.from_pretrained(tmp_path / "bank")
    assert loaded.names == bank.names and loaded.layout() == bank.layout()
    for (_, a), (_, b) in zip(bank.items(), loaded.items()):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    one = Link([bank.eval(), AWGN(snr_db=5.0)])(cut_payload, generator=g())
    two = Link([loaded, AWGN(snr_db=5.0)])(cut_payload, generator=g())
    assert all(torch.equal(one.tensors[n], two.tensors[n]) for n in cut_payload.primary)
    # bad folders
    with pytest.raises(FileNotFoundError, match="bank.json"):
        SeedCodecBank.from_pretrained(tmp_path / "nothing")
    (tmp_path / "bank" / "bank.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        SeedCodecBank.from_pretrained(tmp_path / "bank")
    (tmp_path / "bank" / "bank.json").write_text(json.dumps({"codecs": {"x": "../elsewhere"}}))
    with pytest.raises(ValueError, match="outside"):
        SeedCodecBank.from_pretrained(tmp_path / "bank")
    (tmp_path / "bank" / "bank.json").write_text(json.dumps({"codecs": {"x": "missing"}}))
    with pytest.raises(FileNotFoundError):
        SeedCodecBank.from_pretrained(tmp_path / "bank")


def test_cut_features_are_the_payload_tensors(tiny_pipe, cut_payload):
    feats = cut_features(tiny_pipe, ["a red circle", "a blue square"], 1, STAGE, 2, 1.0,
                         torch.Generator().manual_seed(0), batch_size=1)
    assert set(feats) == set(cut_payload.primary)
    for name in cut_payload.primary:
        torch.testing.assert_close(feats[name], cut_payload.tensors[name].float())
    # with classifier-free guidance the carry has two rows per prompt (each a training feature)
    cfg = cut_features(tiny_pipe, ["a red circle"], 1, STAGE, 2, 3.0, torch.Generator().manual_seed(0))
    assert cfg["latents"].shape[0] == 1 and cfg["carry.hidden"].shape[0] == 2


def test_lightning_fit_two_steps(tmp_path):
    cli = main([
        "fit", "--config", "configs/codec_bank.yaml",
        "--data.pipeline", "tiny-random", "--data.num_train", "4", "--data.num_val", "2",
        "--data.num_inference_steps", "2", "--data.split_step", "1", "--data.batch_size", "4",
        "--data.cache_dir", str(tmp_path / "cache"),
        "--model.codec.hidden_channels", "8", "--model.codec.num_blocks", "1",
        "--model.val_snr_db", "[5.0]", "--model.export_dir", str(tmp_path / "export"),
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.callbacks.init_args.every_n_train_steps", "2",
    ])
    assert cli.trainer.global_step == 2
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert "val/awgn_psnr_5dB/carry.skip.0" in cli.trainer.callback_metrics
    assert len(list((tmp_path / "cache").iterdir())) == 2
    bank = SeedCodecBank.load(tmp_path / "export")
    assert bank.layout()["carry.hidden"] == (64, 2, 2) and bank["carry.skip.0"].config.in_mean is not None
    # the checkpoint records the layout, so it rebuilds the bank without the data
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    module = CodecBankModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    assert isinstance(module.codec, SeedCodecBank) and module.codec.layout() == bank.layout()
    assert isinstance(module.codec["latents"], SeedCodec)


def _bank(seed=0):
    torch.manual_seed(seed)
    return SeedCodecBank.for_layout({"latents": (4, 8, 8), "carry.skip.0": (8, 4, 4)}, **SMALL).eval()


def _small_payload():
    g = torch.Generator().manual_seed(5)
    return Payload({"latents": torch.randn(2, 4, 8, 8, generator=g), "carry.skip.0": torch.randn(2, 8, 4, 4, generator=g)},
                   primary=("latents", "carry.skip.0"))


def _through(bank):
    return Link([bank, AWGN(snr_db=5.0)])(_small_payload(), generator=torch.Generator().manual_seed(3))


def test_bank_is_a_diffusers_model_with_one_config_and_one_weights_file(tmp_path):
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin

    bank = _bank()
    bank["latents"].default_snr_db = 4.0
    assert isinstance(bank, ModelMixin) and isinstance(bank, ConfigMixin)
    bank.save_pretrained(tmp_path / "b")
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"config.json", "model.safetensors"}
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["_class_name"] == "SeedCodecBank" and [n for n, _ in cfg["codecs"]] == ["latents", "carry.skip.0"]
    assert cfg["codecs"][0][1]["default_snr_db"] == 4.0
    loaded = SeedCodecBank.from_pretrained(tmp_path / "b")
    assert loaded.names == bank.names and not loaded.training and loaded["latents"].default_snr_db == 4.0
    one, two = _through(bank), _through(loaded)
    assert all(torch.equal(one.tensors[n], two.tensors[n]) for n in bank.names)
    fresh = SeedCodecBank.from_config(loaded.config)  # same layout, fresh weights
    assert fresh.layout() == bank.layout()
    with pytest.warns(DeprecationWarning, match="from_pretrained"):
        old = SeedCodecBank.load(tmp_path / "b")
    assert old.names == bank.names
    with pytest.warns(DeprecationWarning, match="save_pretrained"):
        bank.save(tmp_path / "c")
    (tmp_path / "b" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SeedCodecBank.from_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="safe_serialization"):
        bank.save_pretrained(tmp_path / "d", safe_serialization=False)


def _legacy_folder(bank, path):
    """The 0.1 layout: bank.json + one SeedCodec folder per tensor."""
    path.mkdir()
    folders = {}
    for i, (name, codec) in enumerate(bank.items()):
        folders[name] = f"codec-{i}"
        codec.save_pretrained(path / folders[name])
    (path / "bank.json").write_text(json.dumps({"_class_name": "SeedCodecBank", "codecs": folders}))
    return path


def test_01_bank_folders_still_load_and_never_leave_their_folder(tmp_path):
    bank = _bank()
    legacy = _legacy_folder(bank, tmp_path / "legacy")
    loaded = SeedCodecBank.from_pretrained(legacy)
    one, two = _through(bank), _through(loaded)
    assert all(torch.equal(one.tensors[n], two.tensors[n]) for n in bank.names)
    # a subfolder that is a symlink out of the bank's folder is refused (and so is a linked weights file)
    outside = tmp_path / "elsewhere"
    bank["latents"].save_pretrained(outside)
    (legacy / "codec-0").rename(tmp_path / "moved")
    (legacy / "codec-0").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        SeedCodecBank.from_pretrained(legacy)
    (legacy / "codec-0").unlink()
    (tmp_path / "moved").rename(legacy / "codec-0")
    (legacy / "codec-0" / "model.safetensors").unlink()
    (legacy / "codec-0" / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(ValueError, match="outside"):
        SeedCodecBank.from_pretrained(legacy)
    for bad in ({"codecs": {"x": "/abs"}}, {"codecs": {"x": "a/../../b"}}):
        (legacy / "bank.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="outside"):
            SeedCodecBank.from_pretrained(legacy)
