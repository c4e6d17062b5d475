"""The seed-codec Lightning recipe: latent cache, 2-step fit on CPU, resume from checkpoint, export."""

import math

import pytest
import torch

from splitldm.link.codec import SeedCodec
from splitldm.recipes.codec import (CodecLatentData, CodecModule, MixedBlockChannel, main, make_channel, noised_latents,
                            trajectory_latents)


def _args(tmp_path, steps, extra=()):
    return [
        "fit", "--config", "configs/codec.yaml",
        "--model.pipeline", "tiny-random", "--data.pipeline", "tiny-random",
        "--data.num_train", "8", "--data.num_val", "4", "--data.split_steps", "[2]",
        "--data.num_inference_steps", "4", "--data.batch_size", "4",
        "--data.cache_dir", str(tmp_path / "cache"),
        "--model.codec.hidden_channels", "8", "--model.codec.num_blocks", "1",
        "--model.val_snr_db", "[5.0]", "--model.export_dir", str(tmp_path / "export"),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.callbacks.init_args.every_n_train_steps", "2",
        *extra,
    ]


def test_fit_two_steps_then_resume(tmp_path):
    cli = main(_args(tmp_path, 2))
    trainer = cli.trainer
    assert trainer.global_step == 2
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert "val/awgn_psnr_5dB" in trainer.callback_metrics
    assert "val/rayleigh_psnr_5dB" in trainer.callback_metrics
    # cache: one file per split, reused by the next run
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(caches) == 2 and all(c.endswith(".safetensors") for c in caches)
    ckpts = list((tmp_path / "runs").rglob("last.ckpt"))
    assert ckpts, "no last.ckpt written"
    # the exported codec loads and carries the data statistics it was trained with
    codec = SeedCodec.from_pretrained(tmp_path / "export")
    assert codec.config.in_mean is not None and len(codec.config.in_std) == 4
    w2 = codec.enc_out.weight.clone()

    cli2 = main(_args(tmp_path, 4, ["--ckpt_path", str(ckpts[0])]))
    assert cli2.trainer.global_step == 4
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == caches
    resumed = SeedCodec.from_pretrained(tmp_path / "export")
    torch.testing.assert_close(resumed.in_std, codec.in_std)  # stats survive the resume
    assert not torch.equal(resumed.enc_out.weight, w2)  # and training went on


def test_trajectory_latents_match_pipeline(tiny_pipe):
    g = torch.Generator().manual_seed(0)
    traj = trajectory_latents(tiny_pipe, ["a red circle", "a blue square"], 4, [0, 2], 2.0, g)
    assert set(traj) == {0, 2} and traj[0].shape == (2, 4, 8, 8)
    # after 2 steps the latents differ from the initial noise
    assert (traj[2] - traj[0]).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="split_steps"):
        trajectory_latents(tiny_pipe, ["x"], 4, [5], 2.0, g)


def test_channels_and_errors():
    ch = make_channel(["awgn", "rayleigh"])
    assert isinstance(ch, MixedBlockChannel)
    h = ch.draw_gains(400, 8, torch.Generator().manual_seed(0))
    ones = (h == 1).float().mean()
    assert 0.35 < ones < 0.65  # about half AWGN
    with pytest.raises(ValueError, match="channels"):
        make_channel(["optical"])
    with pytest.raises(ValueError, match="snr_range_db"):
        CodecModule(snr_range_db=[10.0, 0.0])
    dm = CodecLatentData(pipeline="tiny-random", cache_dir="/nonexistent-never-built")
    assert dm.cache_path("train") != dm.cache_path("test")


def test_noised_latents_proxy(tiny_pipe, tmp_path):
    x0 = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = noised_latents(tiny_pipe.scheduler, x0, 8, [0, 4, 8], torch.Generator().manual_seed(1))
    assert torch.equal(out[8], x0)  # after the last step: the clean latent
    corr = [float(torch.corrcoef(torch.stack([out[k].flatten(), x0.flatten()]))[0, 1]) for k in (0, 4)]
    assert corr[0] < corr[1] < 1.0  # more steps done -> less noise left
    # fine-tuning from a saved codec keeps its weights and statistics
    SeedCodec(hidden_channels=8, num_blocks=1, in_mean=[1.0, 0, 0, 0]).save_pretrained(tmp_path / "c")
    module = CodecModule(init_from=str(tmp_path / "c"))
    assert module.codec.config.hidden_channels == 8 and module.codec.in_mean.flatten()[0] == 1.0
    assert module.codec.training_snr_range_db == (0.0, 20.0) and module.codec.config.trained_snr_range_db is None
    # widening the SNR range while fine-tuning keeps the input normalisation and records the new range
    module = CodecModule(init_from=str(tmp_path / "c"), snr_range_db=[-5.0, 20.0])
    assert module.codec.config.snr_range_db == [0.0, 20.0] or tuple(module.codec.config.snr_range_db) == (0.0, 20.0)
    assert module.codec.training_snr_range_db == (-5.0, 20.0)
    module.codec.save_pretrained(tmp_path / "c2")
    assert SeedCodec.from_pretrained(tmp_path / "c2").training_snr_range_db == (-5.0, 20.0)


def test_init_from_accepts_the_zoo_name():
    from splitldm.zoo import resolve

    module = CodecModule(init_from="seed-codec", snr_range_db=[-10.0, 20.0])
    shipped = SeedCodec.from_pretrained(resolve("seed-codec"))
    assert module.codec.config.rho == shipped.config.rho
    assert all(torch.equal(a, b) for a, b in zip(module.codec.state_dict().values(), shipped.state_dict().values()))
