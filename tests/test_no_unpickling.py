"""Nothing is ever unpickled: every entry point that reads a weights or checkpoint file is handed a file
whose unpickling would create a marker file, and must refuse it (a clear error) with the marker absent.

The payload itself is checked first: a plain ``pickle.load`` / ``torch.load(weights_only=False)`` of the
same bytes does create the marker, so "no marker" really means "not unpickled".
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

#: (entry point, kind of bad input, what the user gets): collected into docs/guides/bad-inputs.md by
#: scripts/bad_inputs_table.py (tests/test_bad_inputs_cli.py checks the page is up to date).
CASES = [
    ("`InceptionFeatures(weights_path)`", "crafted pickle (`torch.save` zip) as `.pth`",
     "ValueError naming `weights_path`; nothing runs"),
    ("`InceptionFeatures(weights_path)`", "crafted raw pickle as `.pth`", "ValueError naming `weights_path`; nothing runs"),
    ("`InceptionFeatures(weights_path)`", "crafted pickle named `.safetensors`", "ValueError naming `weights_path`; nothing runs"),
    ("`InceptionFeatures(weights_path)`", "state dict of the wrong network", "ValueError naming `weights_path`"),
    ("`splitldm evaluate` (config `fid: <file>`)", "crafted pickle as the Inception weights",
     "one line `splitldm evaluate: error: weights_path: ...`, exit 2; nothing runs"),
    ("`splitldm.recipes.codec.export_checkpoint`", "crafted Lightning checkpoint",
     "ValueError naming `ckpt_path`; nothing runs"),
    ("`splitldm.recipes.codec.export_checkpoint`", "missing checkpoint", "FileNotFoundError naming `ckpt_path`"),
    ("Lightning resume (`--ckpt_path`, recipes)", "crafted checkpoint", "UnpicklingError from torch; nothing runs"),
    ("`SeedCodec.from_pretrained`", "crafted pickle as `model.safetensors`",
     "ValueError (corrupt weights file); nothing runs"),
    ("`AttributeClassifier.from_pretrained`", "crafted pickle as `model.safetensors`",
     "ValueError naming the folder; nothing runs"),
    ("`MergeAwareDecoder.from_pretrained`", "crafted pickle as `decoder.safetensors`",
     "ValueError naming the folder; nothing runs"),
    ("`PPO.from_pretrained` (every policy)", "crafted pickle as `model.safetensors`",
     "ValueError (corrupt weights file); nothing runs"),
    ("`load_pipeline(folder)`", "crafted pickle as `unet/diffusion_pytorch_model.bin`, no safetensors",
     "ValueError naming `name_or_path`; nothing runs"),
]


class _Evil:
    """Unpickling this opens (creates) ``marker``: stands for any code a crafted file would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """``(make, marker)``: ``make(path, fmt)`` writes a crafted file (``"torch"``: torch.save's zip format,
    ``"raw"``: a plain pickle) whose unpickling would create ``marker``."""
    marker = tmp_path / "PWNED"

    def make(path: Path, fmt: str = "torch") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = {"weight": _Evil(marker), "bias": torch.zeros(2)}
        if fmt == "torch":
            torch.save(obj, path)
        else:
            path.write_bytes(pickle.dumps(obj))
        return path

    return make, marker


def test_the_crafted_files_do_run_code_when_unpickled(evil, tmp_path):
    """Control: the payload is live (so 'no marker' below means 'not unpickled')."""
    make, marker = evil
    torch.load(make(tmp_path / "a.pth"), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads((make(tmp_path / "b.pkl", "raw")).read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("fmt,name", [("torch", "w.pth"), ("raw", "w.pth"), ("torch", "w.safetensors")])
def test_inception_features_never_unpickle(evil, tmp_path, fmt, name):
    from splitldm.eval.metrics import InceptionFeatures

    make, marker = evil
    with pytest.raises(ValueError, match="weights_path"):
        InceptionFeatures(make(tmp_path / name, fmt))
    assert not marker.exists()


def test_inception_features_load_plain_tensors_safely(tmp_path):
    """The safe paths work: a .safetensors file and a plain-tensor .pth give the same network; the wrong
    tensors are a clear error."""
    from unittest import mock

    from safetensors.torch import save_file
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    from splitldm.eval.metrics import InceptionFeatures

    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in fe.FeatureExtractorInceptionV3("x", ["2048"]).state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    a, b = InceptionFeatures(tmp_path / "w.safetensors"), InceptionFeatures(tmp_path / "w.pth")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fa = a(x)
    assert fa.shape == (2, 2048) and torch.equal(fa, b(x))
    assert a.name.startswith("Inception-FID") and "w.safetensors" in a.name
    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="weights_path.*Inception"):
        InceptionFeatures(tmp_path / "bad.safetensors")


def test_evaluate_cli_refuses_a_crafted_inception_file(evil, tmp_path, capsys):
    from splitldm.cli.main import main

    make, marker = evil
    weights = make(tmp_path / "inception.pth")
    config = tmp_path / "eval.yaml"
    config.write_text(f"pipeline: tiny-random\nschemes: [analog]\nrhos: [0.5]\nsnr_db: [5]\nchannels: [awgn]\n"
                      f"num_prompts: 2\nfid: {weights}\noutput: {tmp_path / 'out'}\n")
    assert main(["evaluate", "--config", str(config), "--quiet", "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitldm evaluate: error:") and "weights_path" in err[0], err
    assert not marker.exists()


def test_export_checkpoint_never_unpickles(evil, tmp_path):
    from splitldm.recipes.codec import export_checkpoint

    make, marker = evil
    ckpt = make(tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="ckpt_path"):
        export_checkpoint(ckpt, tmp_path / "export")
    assert not marker.exists() and not (tmp_path / "export").exists()
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "export")


def test_export_checkpoint_still_exports_a_real_checkpoint(tmp_path):
    """A checkpoint as Lightning writes it (hparams, state dict, loops, optimizer) loads with weights_only."""
    import lightning as L

    from splitldm.link.codec import SeedCodec
    from splitldm.recipes.codec import CodecModule, export_checkpoint

    module = CodecModule(codec={"hidden_channels": 8, "num_blocks": 1}, pipeline="tiny-random")
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 2,
            "loops": {}, "optimizer_states": [torch.optim.AdamW(module.parameters()).state_dict()],
            "lr_schedulers": []}
    torch.save(ckpt, tmp_path / "last.ckpt")
    codec = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    back = SeedCodec.from_pretrained(tmp_path / "export")
    assert all(torch.equal(a, b) for a, b in zip(codec.state_dict().values(), back.state_dict().values()))


def test_lightning_resume_loader_refuses_a_crafted_checkpoint(evil, tmp_path):
    """``--ckpt_path`` goes through Lightning's loader, which leaves weights_only to torch (True by default)."""
    from lightning.fabric.utilities.cloud_io import _load

    make, marker = evil
    with pytest.raises(pickle.UnpicklingError):
        _load(make(tmp_path / "last.ckpt"))
    assert not marker.exists()


def _swap(folder: Path, name: str, make) -> None:
    (folder / name).unlink()
    make(folder / name)


def test_from_pretrained_loaders_read_only_safetensors(evil, tmp_path):
    from splitldm.eval.metrics import AttributeClassifier
    from splitldm.link.codec import SeedCodec
    from splitldm.pipeline.merge_decoder import MergeAwareDecoder
    from splitldm.rl.agents.ppo import PPO

    make, marker = evil
    SeedCodec(hidden_channels=8, num_blocks=1).save_pretrained(tmp_path / "codec")
    _swap(tmp_path / "codec", "model.safetensors", make)
    with pytest.raises(ValueError, match="corrupt"):
        SeedCodec.from_pretrained(tmp_path / "codec")
    AttributeClassifier(width=8, feature_dim=4).save_pretrained(tmp_path / "clf")
    _swap(tmp_path / "clf", "model.safetensors", make)
    with pytest.raises(ValueError, match="classifier"):
        AttributeClassifier.from_pretrained(tmp_path / "clf")
    MergeAwareDecoder(block_out_channels=(8,), norm_num_groups=4).save_pretrained(tmp_path / "dec")
    _swap(tmp_path / "dec", "decoder.safetensors", make)
    with pytest.raises(ValueError, match="merge-aware decoder"):
        MergeAwareDecoder.from_pretrained(tmp_path / "dec")
    PPO(3, 2).save_pretrained(tmp_path / "ppo")
    _swap(tmp_path / "ppo", "model.safetensors", make)
    with pytest.raises(ValueError, match="corrupt"):
        PPO.from_pretrained(tmp_path / "ppo")
    assert not marker.exists()


def test_load_pipeline_never_reads_a_pickled_bin(evil, tmp_path):
    from splitldm.pipeline.models import load_pipeline
    from splitldm.zoo import checkpoints_dir

    make, marker = evil
    folder = tmp_path / "pipe"
    shutil.copytree(checkpoints_dir() / "tiny", folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    make(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="name_or_path"):
        load_pipeline(folder)
    assert not marker.exists()
    assert json.loads((folder / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
