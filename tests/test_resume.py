"""Resuming a recipe continues the same run bit for bit, or refuses (splitldm.recipes.resume).

Before: a 2 + 2-step resume of the codec recipe ended away from a straight 4-step run (the training
loader restarted the epoch with a freshly seeded shuffle, so steps 3-4 saw batches 1-2 again), and
``--model.*`` values on a resume were silently replaced by the checkpoint's.
"""

import logging
import os
import subprocess
import sys

import pytest
import torch

from splitldm.recipes import classifier, codec, codec_bank
from splitldm.recipes.resume import (EpochSampler, ResumeMismatchError, check_resume, rng_state, set_rng_state)

# Bad resume inputs this file tries, for the docs table (entry point, kind of bad input, what the user gets).
_ENTRY = "python -m splitldm.recipes.<recipe> fit --ckpt_path"
CASES = [
    (_ENTRY, "a --model.* value that differs from the checkpoint's (lr, an architecture size)",
     "ResumeMismatchError (a ValueError) naming every differing key with both values, before any weight loads"),
    (_ENTRY, "a --data.* value that differs from the checkpoint's (batch_size)",
     "the same error, the key named data.batch_size"),
    (_ENTRY, "another --model.export_dir than the resumed run's (would export over another run's folder)",
     "refused like any other value; a matching resume logs where the export goes"),
    (f"{_ENTRY} last", "a differing value, the checkpoint found by Lightning ('last')",
     "the same error, raised when the checkpoint is loaded"),
    (_ENTRY + " (as a command)", "a differing value",
     "one line 'error: ckpt_path: ...' on stderr, exit status 2, no traceback"),
    ("splitldm.recipes.resume.check_resume", "a changed data.cache_dir / data.num_workers / data.preload",
     "allowed: a warning names the key with both values"),
    (_ENTRY, "a checkpoint saved without random states (an older run)",
     "resumes; a warning says the global generators start from the seed"),
    (_ENTRY, "a longer --trainer.max_steps than a one-cycle LR schedule was sized for",
     "ResumeMismatchError naming trainer.max_steps and the schedule's length (a warning for other schedules)"),
    ("splitldm.recipes.resume.read_checkpoint (the early check of --ckpt_path)", "a crafted pickle (zip or raw)",
     "pickle.UnpicklingError from torch (weights_only=True); nothing runs"),
    ("splitldm.recipes.resume.EpochSampler.load_state_dict", "a loader state of other data (size or seed)",
     "ResumeMismatchError naming num_examples / seed"),
]

FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2"]


def _codec_args(tmp_path, run, steps, extra=()):
    """The codec recipe, tiny: 8 images x (VAE + 1 trajectory step) = 16 latents, 4 per batch: 4 steps/epoch."""
    return ["fit", "--config", "configs/codec.yaml",
            "--model.pipeline", "tiny-random", "--data.pipeline", "tiny-random",
            "--data.num_train", "8", "--data.num_val", "4", "--data.split_steps", "[2]",
            "--data.num_inference_steps", "4", "--data.batch_size", "4", "--data.cache_dir", str(tmp_path / "cache"),
            "--model.codec.hidden_channels", "8", "--model.codec.num_blocks", "1", "--model.val_snr_db", "[5.0]",
            "--model.max_lr_steps", "6", "--model.export_dir", str(tmp_path / run / "export"),
            "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(tmp_path / run),
            "--trainer.callbacks.init_args.every_n_train_steps", "2",
            "--trainer.callbacks.init_args.dirpath", str(tmp_path / run / "ckpt"), *FAST, *extra]


def _state(cli):
    """Every parameter and buffer, and the optimizer's and LR scheduler's states, of a finished fit."""
    trainer = cli.trainer
    return {"model": {k: v.clone() for k, v in cli.model.state_dict().items()},
            "optimizer": trainer.optimizers[0].state_dict(),
            "scheduler": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]}


def _assert_bit_equal(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][name]), torch.as_tensor(sb[i][name])), (i, name)
    assert a["scheduler"] == b["scheduler"]


@pytest.fixture(scope="module")
def codec_runs(tmp_path_factory):
    """A straight 6-step codec run (checkpoints at 2, 4, 6) and a run stopped after 2 steps."""
    tmp = tmp_path_factory.mktemp("codec")
    straight = _state(codec.main(_codec_args(tmp, "straight", 6)))
    codec.main(_codec_args(tmp, "stopped", 2))
    return tmp, straight


def test_codec_resume_mid_epoch_and_at_epoch_end_is_bit_exact(codec_runs, caplog):
    tmp, straight = codec_runs
    stopped = tmp / "stopped" / "ckpt" / "epoch=0-step=2.ckpt"
    with caplog.at_level(logging.WARNING, logger="splitldm.recipes.resume"):
        resumed = codec.main(_codec_args(tmp, "stopped", 6, ["--ckpt_path", str(stopped)]))
    assert resumed.trainer.global_step == 6
    _assert_bit_equal(straight, _state(resumed))  # 2 + 4 (across the epoch end at step 4) == 6
    # the log says where the export goes: the resumed run's own folder
    assert any("the export goes to" in r.getMessage() and str(tmp / "stopped" / "export") in r.getMessage()
               for r in caplog.records)
    assert (tmp / "stopped" / "export" / "config.json").exists()

    at_epoch_end = tmp / "straight" / "ckpt" / "epoch=0-step=4.ckpt"  # the last batch of epoch 0
    resumed = codec.main(_codec_args(tmp, "from4", 6, ["--ckpt_path", str(at_epoch_end),
                                                       "--model.export_dir", str(tmp / "straight" / "export")]))
    _assert_bit_equal(straight, _state(resumed))


def test_codec_resume_refuses_values_that_differ(codec_runs):
    tmp, _ = codec_runs
    ckpt = str(tmp / "stopped" / "ckpt" / "epoch=0-step=2.ckpt")
    before = sorted(p.name for p in (tmp / "stopped" / "ckpt").iterdir())
    with pytest.raises(ResumeMismatchError) as err:
        codec.main(_codec_args(tmp, "stopped", 4, ["--ckpt_path", ckpt, "--model.lr", "0.01",
                                                  "--model.codec.hidden_channels", "16", "--data.batch_size", "2"]))
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and msg.startswith("ckpt_path:")
    assert "model.lr: checkpoint 0.001, now 0.01" in msg
    assert "model.codec.hidden_channels: checkpoint 8, now 16" in msg  # named, not a tensor size mismatch
    assert "data.batch_size: checkpoint 4, now 2" in msg
    assert sorted(p.name for p in (tmp / "stopped" / "ckpt").iterdir()) == before  # nothing ran

    # another export folder is refused too: a resume exports where the resumed run said
    with pytest.raises(ResumeMismatchError, match="model.export_dir: checkpoint .*stopped/export.*, now .*elsewhere"):
        codec.main(_codec_args(tmp, "stopped", 4, ["--ckpt_path", ckpt, "--model.export_dir", str(tmp / "elsewhere")]))
    assert not (tmp / "elsewhere").exists()

    # "last" (found by Lightning, not a file name) is checked as well, when the checkpoint is loaded
    with pytest.raises(ResumeMismatchError, match="model.lr: checkpoint 0.001, now 0.5"):
        codec.main(_codec_args(tmp, "straight", 8, ["--ckpt_path", "last", "--model.lr", "0.5"]))


def test_codec_resume_as_a_command_prints_one_line_and_exits_2(codec_runs):
    tmp, _ = codec_runs
    ckpt = str(tmp / "stopped" / "ckpt" / "epoch=0-step=2.ckpt")
    args = _codec_args(tmp, "stopped", 4, ["--ckpt_path", ckpt, "--model.lr", "0.5"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPLITLDM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "splitldm.recipes.codec", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ckpt_path: resuming")
    assert "model.lr: checkpoint 0.001, now 0.5" in proc.stderr


def test_codec_resume_without_saved_random_states_warns(codec_runs, caplog):
    tmp, _ = codec_runs
    ckpt = torch.load(tmp / "stopped" / "ckpt" / "epoch=0-step=2.ckpt", weights_only=True)
    del ckpt["callbacks"]["ResumeState"]
    old = tmp / "old.ckpt"
    torch.save(ckpt, old)
    with caplog.at_level(logging.WARNING, logger="splitldm.recipes.resume"):
        cli = codec.main(_codec_args(tmp, "old", 3, ["--ckpt_path", str(old),
                                                     "--model.export_dir", str(tmp / "stopped" / "export")]))
    assert cli.trainer.global_step == 3
    assert any("holds no random states" in r.getMessage() for r in caplog.records)


def _classifier_args(tmp_path, run, extra=()):
    """The classifier recipe (global-generator augmentation noise, one-cycle LR sized by max_steps = 4),
    8 images, 2 per batch (4 steps per epoch), a checkpoint every 2 steps."""
    return ["fit", "--config", "configs/classifier.yaml", "--trainer.max_steps", "4", "--trainer.max_time", "null",
            "--trainer.default_root_dir", str(tmp_path / run), "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps=2", "--trainer.callbacks.save_top_k=-1",
            f"--trainer.callbacks.dirpath={tmp_path / run / 'ckpt'}",
            "--data.batch_size", "2", "--data.num_train", "8", "--data.num_val", "2", "--model.schedule", "onecycle",
            "--model.width", "8", "--model.feature_dim", "16", "--model.export_dir", str(tmp_path / "export"),
            *FAST, *extra]


def test_classifier_resume_restores_the_global_generators(tmp_path):
    """Its training draws augmentation noise from torch's global generator, and validation runs at step 2
    of the straight run only (a resume skips it): exact only with the generators saved and validation forked."""
    straight = _state(classifier.main(_classifier_args(tmp_path, "straight")))
    ckpt = tmp_path / "straight" / "ckpt" / "epoch=0-step=2.ckpt"  # what a run killed after step 2 left
    resumed = classifier.main(_classifier_args(tmp_path, "resumed", ["--ckpt_path", str(ckpt)]))
    _assert_bit_equal(straight, _state(resumed))
    # the one-cycle schedule cannot be stretched on resume: a clear refusal, not torch's "Tried to step"
    with pytest.raises(ResumeMismatchError, match="trainer.max_steps: the checkpoint's one-cycle LR schedule is 4"):
        classifier.main(_classifier_args(tmp_path, "longer", ["--ckpt_path", str(ckpt), "--trainer.max_steps", "6"]))


def test_codec_bank_resume_is_bit_exact(tmp_path):
    def args(run, steps, extra=()):
        return ["fit", "--config", "configs/codec_bank_tiny.yaml", "--model.codec.hidden_channels", "8",
                "--model.codec.num_blocks", "1", "--model.val_snr_db", "[5.0]", "--model.max_lr_steps", "4",
                "--model.export_dir", str(tmp_path / run / "export"), "--data.pipeline", "tiny-random",
                "--data.num_train", "4", "--data.num_val", "2", "--data.num_inference_steps", "2",
                "--data.split_step", "1", "--data.batch_size", "2", "--data.cache_dir", str(tmp_path / "cache"),
                "--trainer.max_steps", str(steps), "--trainer.max_time", "null",
                "--trainer.default_root_dir", str(tmp_path / run),
                "--trainer.callbacks.init_args.every_n_train_steps", "2",
                "--trainer.callbacks.init_args.dirpath", str(tmp_path / run / "ckpt"), *FAST, *extra]

    straight = _state(codec_bank.main(args("straight", 4)))
    codec_bank.main(args("stopped", 2))
    resumed = codec_bank.main(args("stopped", 4, ["--ckpt_path", str(tmp_path / "stopped" / "ckpt" / "epoch=0-step=2.ckpt")]))
    _assert_bit_equal(straight, _state(resumed))


def test_check_resume_allows_and_logs_only_the_listed_keys(caplog):
    ckpt = {"hyper_parameters": {"lr": 1e-3, "codec": {"rho": 0.125}, "export_dir": "runs/a", "_instantiator": "x",
                                 "old_option": 3, "model": None},
            "datamodule_hyper_parameters": {"batch_size": 4, "num_workers": 0, "cache_dir": "c1"}, "global_step": 2}
    with caplog.at_level(logging.WARNING, logger="splitldm.recipes.resume"):
        check_resume(ckpt, {"lr": 0.001, "codec": {"rho": 0.125}, "export_dir": "runs/a", "new_option": 1, "model": None},
                     {"batch_size": 4, "num_workers": 2, "cache_dir": "c2"}, "x.ckpt")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "data.num_workers changed from 0 (checkpoint) to 2" in text
    assert "data.cache_dir changed from 'c1' (checkpoint) to 'c2'" in text
    assert "model.new_option is not recorded in x.ckpt (a parameter added since?): using 1" in text
    assert "model.old_option = 3 in x.ckpt is no parameter of this version: ignored" in text
    assert "the export goes to 'runs/a'" in text
    with pytest.raises(ResumeMismatchError, match=r"1 value\(s\).*model.codec.rho: checkpoint 0.125, now 0.25"):
        check_resume(ckpt, {"lr": 1e-3, "codec": {"rho": 0.25}, "export_dir": "runs/a", "model": None}, None, "x.ckpt")
    # a structure that changed (None -> a dict of settings) is a changed value, not a new parameter
    with pytest.raises(ResumeMismatchError, match=r"model.model: checkpoint None, now \{'lambdas': \[1.0\]\}"):
        check_resume(ckpt, {"lr": 1e-3, "codec": {"rho": 0.125}, "export_dir": "runs/a", "model": {"lambdas": [1.0]}})
    # the early check (before setup) leaves values a recipe fills in at setup (the codec bank's layout) to later
    bank = {"hyper_parameters": {"layout": {"latents": [4, 8, 8]}}}
    check_resume(bank, {"layout": None}, log=False, skip_unset=True)
    with pytest.raises(ResumeMismatchError, match="model.layout"):
        check_resume(bank, {"layout": None}, log=False)


def test_epoch_sampler_order_and_state():
    s = EpochSampler(10, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(10)) and list(s) == e0  # same epoch, same order
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and EpochSampler(10, seed=4).permutation(0).tolist() != e0
    # mid-epoch state: epoch 1, 2 batches of 3 consumed -> the rest of epoch 1, then epoch 2 as usual
    state = EpochSampler(10, seed=3, consumed_batches=lambda: 2)
    state.set_epoch(1)
    r = EpochSampler(10, seed=3)
    r.load_state_dict(state.state_dict(batch_size=3))
    assert list(r) == e1[6:] and list(r) == e1  # the offset applies to the first pass only
    r.set_epoch(2)
    assert list(r) == EpochSampler(10, seed=3).permutation(2).tolist()
    with pytest.raises(ResumeMismatchError, match="num_examples"):
        EpochSampler(11, seed=3).load_state_dict(state.state_dict(batch_size=3))
    with pytest.raises(ResumeMismatchError, match="seed"):
        EpochSampler(10, seed=0).load_state_dict(state.state_dict(batch_size=3))
    with pytest.raises(ValueError, match="num_examples"):
        EpochSampler(0)


def test_read_checkpoint_never_unpickles(tmp_path):
    import pickle

    from splitldm.recipes.resume import read_checkpoint

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "PWNED"), "w"))

    torch.save({"w": Evil()}, tmp_path / "zip.ckpt")
    (tmp_path / "raw.ckpt").write_bytes(pickle.dumps({"w": Evil()}))
    for name in ("zip.ckpt", "raw.ckpt"):
        with pytest.raises(pickle.UnpicklingError):
            read_checkpoint(tmp_path / name)
    assert not (tmp_path / "PWNED").exists()
    torch.save({"hyper_parameters": {"lr": 1.0}}, tmp_path / "ok.ckpt", _use_new_zipfile_serialization=False)
    assert read_checkpoint(tmp_path / "ok.ckpt")["hyper_parameters"] == {"lr": 1.0}  # legacy format: no mmap


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_merge_decoder_resume_restores_its_own_generator(tmp_path):
    """The merge-aware decoder recipe draws its merge ratios and latent noise from a generator the module
    owns; a resume continues that generator's stream (saved with the checkpoint)."""
    def args(run, extra=()):
        return ["fit", "--config", "configs/merge_decoder.yaml", "--model.pipeline", "tiny-random",
                "--model.eval_images", "2", "--model.export_dir", str(tmp_path / "export"),
                "--data.batch_size", "2", "--data.num_train", "8", "--data.num_val", "2",
                "--trainer.max_steps", "4", "--trainer.enable_checkpointing", "true",
                "--trainer.default_root_dir", str(tmp_path / run), "--trainer.callbacks+=ModelCheckpoint",
                "--trainer.callbacks.every_n_train_steps=2", "--trainer.callbacks.save_top_k=-1",
                f"--trainer.callbacks.dirpath={tmp_path / run / 'ckpt'}", *FAST, *extra]

    from splitldm.recipes import merge_decoder

    straight = _state(merge_decoder.main(args("straight")))
    ckpt = tmp_path / "straight" / "ckpt" / "epoch=0-step=2.ckpt"
    resumed = merge_decoder.main(args("resumed", ["--ckpt_path", str(ckpt)]))
    _assert_bit_equal(straight, _state(resumed))
