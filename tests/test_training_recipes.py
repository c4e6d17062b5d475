"""Each Lightning recipe runs 2 steps on CPU through LightningCLI, exports, and resumes."""

import json
from pathlib import Path

import pytest
import torch

from splitldm.recipes.classifier import ClassifierModule
from splitldm.recipes.cli import main
from splitldm.recipes.lcm import LCMDistillModule, boundary_scalings, guidance_scale_embedding
from splitldm.recipes.ldm import LDMModule
from splitldm.recipes.vae import VAEModule


def _args(tmp_path, config, extra):
    return ["fit", "--config", f"configs/{config}", "--trainer.max_steps", "2", "--trainer.max_time", "null",
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
            "--data.batch_size", "2", "--data.num_train", "4", "--data.num_val", "2", *extra]


def _resume(tmp_path, config, module, extra):
    """Resume the 2-step run from its last Lightning checkpoint for one more step."""
    ckpts = sorted((tmp_path / "run").rglob("*.ckpt"))
    assert ckpts, "the recipe saved no checkpoint"
    args = _args(tmp_path, config, extra)
    args[args.index("--trainer.max_steps") + 1] = "3"
    cli = main(module, args=args + ["--ckpt_path", str(ckpts[-1])])
    assert cli.trainer.global_step == 3


def test_vae_recipe(tmp_path):
    extra = ["--model.export_dir", str(tmp_path / "vae"), "--model.scale_examples", "8"]
    cli = main(VAEModule, args=_args(tmp_path, "vae.yaml", extra))
    assert cli.trainer.global_step == 2
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert cfg["latent_channels"] == 4 and cfg["scaling_factor"] > 0
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    _resume(tmp_path, "vae.yaml", VAEModule, extra)


def test_ldm_recipe_and_lcm_distillation(tmp_path):
    extra = ["--model.vae_path", "null", "--model.cache_size", "4", "--model.export_dir", str(tmp_path / "pipe")]
    cli = main(LDMModule, args=_args(tmp_path, "ldm.yaml", extra))
    assert cli.trainer.global_step == 2
    assert int(cli.model.cache.filled.sum()) == 4  # every training index's latent was cached
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None, requires_safety_checker=False,
                                                   feature_extractor=None, local_files_only=True)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    _resume(tmp_path, "ldm.yaml", LDMModule, extra)

    lcm_extra = ["--model.teacher_path", str(tmp_path / "pipe"), "--model.cache_size", "4",
                 "--model.export_dir", str(tmp_path / "lcm")]
    (tmp_path / "run").rename(tmp_path / "run_ldm")
    cli = main(LCMDistillModule, args=_args(tmp_path, "lcm.yaml", lcm_extra))
    assert cli.trainer.global_step == 2
    student = StableDiffusionPipeline.from_pretrained(tmp_path / "lcm", safety_checker=None, requires_safety_checker=False,
                                                      feature_extractor=None, local_files_only=True)
    assert student.unet.config.time_cond_proj_dim == 64
    assert type(student.scheduler).__name__ == "LCMScheduler"
    img = student("a red circle", num_inference_steps=1, guidance_scale=3.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("name, module", [("vae", VAEModule), ("ldm", LDMModule), ("lcm", LCMDistillModule)])
def test_gpu_configs_parse_and_build(name, module):
    """configs/gpu/*.yaml (the shipped models' recipes) are valid LightningCLI configs; built on CPU here."""
    from splitldm.zoo import checkpoints_dir

    extra = {"vae": [], "ldm": ["--model.vae_path", "null", "--model.cache_size", "4"],
             "lcm": ["--model.teacher_path", str(checkpoints_dir() / "tiny"), "--model.cache_size", "4"]}[name]
    cli = main(module, args=["--config", f"configs/gpu/{name}.yaml", "--trainer.accelerator", "cpu",
                             "--trainer.logger", "false", "--data.preload", "false", *extra], run=False)
    assert cli.trainer.max_steps > 0 and cli.datamodule.hparams.preload is False
    assert cli.datamodule.hparams.num_workers == 4


def test_preloaded_shapes_equal_rendered_on_the_fly():
    from splitldm.recipes.datamodule import ShapesDataset

    lazy, eager = ShapesDataset(5, "test", seed=3), ShapesDataset(5, "test", seed=3, preload=True)
    for i in range(5):
        a, b = lazy[i], eager[i]
        assert torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"]
        assert torch.equal(a["labels"], b["labels"]) and a["index"] == b["index"] == i


def test_classifier_recipe(tmp_path):
    extra = ["--model.export_dir", str(tmp_path / "clf"), "--model.width", "8", "--model.feature_dim", "16",
             "--model.schedule", "cosine"]
    cli = main(ClassifierModule, args=_args(tmp_path, "classifier.yaml", extra))
    assert cli.trainer.global_step == 2
    from splitldm.eval.metrics import load_classifier

    assert load_classifier(tmp_path / "clf").config["feature_dim"] == 16
    _resume(tmp_path, "classifier.yaml", ClassifierModule, extra)


def test_lcm_helpers_match_diffusers():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 2.5, 7.0])
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=64)
    assert torch.allclose(guidance_scale_embedding(w, 64), ref, atol=1e-5)
    c_skip, c_out = boundary_scalings(torch.tensor([0, 999]))
    assert c_skip[0] == pytest.approx(1.0) and c_out[0] == pytest.approx(0.0)  # x0 at t = 0: identity
    assert c_skip[1] < 1e-4 and c_out[1] == pytest.approx(1.0, abs=1e-4)


def test_analytic_vae_is_the_block_average_codec():
    import torch.nn.functional as F

    from splitldm.eval.data import render_batch
    from splitldm.recipes.vae import analytic_vae, block_average_latents

    vae = analytic_vae(scale_examples=32)
    x, _, _ = render_batch(range(4))
    with torch.no_grad():
        post = vae.encode(x * 2 - 1).latent_dist
        rec = vae.decode(post.mean).sample
    assert post.mean.shape == (4, 4, 8, 8)
    assert torch.allclose(post.mean, block_average_latents(x), atol=3e-3)
    blocks = F.interpolate(F.avg_pool2d(x * 2 - 1, 8), scale_factor=8, mode="nearest")
    assert torch.allclose(rec, blocks, atol=5e-3)


# Every recipe's own entry point (what `python -m splitldm.recipes.<name> fit --config configs/<x>.yaml` calls)
# parses its shipped config and builds; shipped models are named by zoo name; exports go under runs/.
_RECIPE_CONFIGS = [
    ("classifier", "classifier.yaml", []),
    ("classifier", "classifier_stage2.yaml", ["--model.init_from", "classifier"]),  # zoo name: the shipped one
    ("codec", "codec.yaml", []),
    ("codec_bank", "codec_bank.yaml", []),
    ("lcm", "lcm.yaml", ["--model.cache_size", "4"]),
    ("ldm", "ldm.yaml", ["--model.cache_size", "4"]),
    ("merge_decoder", "merge_decoder.yaml", []),
    ("vae", "vae.yaml", ["--model.scale_examples", "8"]),
    ("vae", "vae_scratch.yaml", []),
]


@pytest.mark.parametrize("recipe, config, extra", _RECIPE_CONFIGS, ids=[c for _, c, _ in _RECIPE_CONFIGS])
def test_every_recipe_entry_point_builds_its_config(recipe, config, extra):
    import importlib

    module = importlib.import_module(f"splitldm.recipes.{recipe}")
    cli = module.main(args=["--config", f"configs/{config}", "--trainer.logger", "false", *extra], run=False)
    export = cli.model.hparams.get("export_dir")
    assert export is None or export.startswith("runs/"), export  # never the shipped splitldm/checkpoints
    assert cli.trainer.max_steps > 0


def test_recipe_configs_name_shipped_models_by_zoo_name():
    import yaml

    from splitldm import zoo

    lcm = yaml.safe_load(open("configs/lcm.yaml"))
    assert zoo.is_zoo_name(lcm["model"]["teacher_path"])
    evaluate = yaml.safe_load(open("configs/evaluate.yaml"))
    assert all(zoo.is_zoo_name(c) for c in evaluate["codecs"])
    for path in sorted(Path("configs").glob("*.yaml")):
        text = path.read_text()
        assert "export_dir: checkpoints" not in text and ": checkpoints/" not in text, path


def test_classifier_recipe_two_cpu_processes_ddp(tmp_path):
    """The multi-process path: 2 CPU processes (DDP, gloo), 2 steps, then the export loads."""
    import os
    import subprocess
    import sys

    from splitldm.eval.metrics import AttributeClassifier

    cmd = [sys.executable, "-m", "splitldm.recipes.classifier", *_args(tmp_path, "classifier.yaml", [
        "--model.export_dir", str(tmp_path / "export"), "--model.width", "8", "--model.feature_dim", "16",
        "--model.schedule", "cosine", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp"])]
    cmd[cmd.index("--data.num_train") + 1] = "8"  # 2 batches of 2 per process
    env = {**os.environ, "SPLITLDM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    assert "GLOBAL_RANK: 1" in log
    assert [p.name for p in (tmp_path / "run").rglob("*.ckpt")] == ["epoch=0-step=2.ckpt"]
    clf = AttributeClassifier.from_pretrained(tmp_path / "export")
    assert clf.config.feature_dim == 16 and clf.config.width == 8
    from splitldm.eval.data import render_batch

    assert clf.predict(render_batch(range(2))[0]).shape == (2, 5)
