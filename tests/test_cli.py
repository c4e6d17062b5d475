"""The `splitldm` command: generate, profile, argument errors (run in-process)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from splitldm import build_pipeline
from splitldm.cli.main import build_parser, main


def test_generate_writes_the_image_the_pipeline_makes(tmp_path, capsys):
    out = tmp_path / "img.png"
    code = main(["generate", "a red circle", "--model", "micro-random", "--steps", "3", "--split-step", "1",
                 "--seed", "5", "--scheduler", "dpm++", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["payload_bits"] > report["payload_tensor_bits"] > 0
    pipe = build_pipeline("micro-random", scheduler="dpm++")
    ref = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(ref))


def test_profile_table_and_json(capsys):
    assert main(["profile", "--model", "tiny"]) == 0
    assert "fp16 KiB" in capsys.readouterr().out
    assert main(["profile", "--model", "sd15", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["bytes_fp16"] == 32768 and 0.7e12 < rows[0]["flops_ue"] < 0.9e12


@pytest.mark.parametrize("model, blocks, step_tflop, crossing_mib", [
    ("sdxl", None, (5.0, 7.0), None),         # UNet stages, 1024 px
    ("sd3", 24, (8.0, 10.0), (12.5, 13.5)),   # image (4096 x 1536) + text (333 x 1536) tokens
    ("pixart", 28, (6.0, 7.0), (9.0, 9.5)),   # image tokens (4096 x 1152) + T5 text (120 x 1152)
    ("flux", 57, (70.0, 80.0), (26.5, 27.5)), # 19 double + 38 single blocks: image (4096) + text (512) x 3072
])
def test_profile_every_family_without_weights(capsys, model, blocks, step_tflop, crossing_mib):
    assert main(["profile", "--model", model, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    total = rows[0]["flops_ue"]
    assert step_tflop[0] * 1e12 < total < step_tflop[1] * 1e12
    assert all(r["flops_es"] + r["flops_ue"] == total for r in rows)
    if blocks is not None:
        assert len(rows) == blocks + 3  # before input, after input, after each block, after output
        assert crossing_mib[0] * 2**20 < rows[2]["bytes_fp16"] < crossing_mib[1] * 2**20
        assert rows[2]["bytes_fp32"] == 2 * rows[2]["bytes_fp16"]
        latent = 16 if model in ("sd3", "flux") else 8  # PixArt predicts mean and variance: 8 channels
        assert rows[-1]["bytes_fp16"] == latent * 128 * 128 * 2  # Flux: packed (4096, 64), same values
    assert main(["profile", "--model", model, "--height", "512"]) == 0
    table = capsys.readouterr().out
    assert "fp16 KiB" in table and ("double.0" in table if model == "flux" else True)


def test_cli_errors_name_the_argument(tmp_path, capsys):
    assert main(["generate", "x", "--model", "micro-random", "--scheduler", "nope", "--out", str(tmp_path / "a.png")]) == 2
    assert "--scheduler" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "a.png")]) == 2
    assert "name_or_path" in capsys.readouterr().err
    assert main(["generate", "x", "--model", "micro-random", "--steps", "0", "--out", str(tmp_path / "a.png")]) == 2
    assert "num_inference_steps" in capsys.readouterr().err
    assert main(["generate", "x", "--model", "micro-random", "--steps", "2", "--split-step", "5",
                 "--out", str(tmp_path / "a.png")]) == 2
    assert "split_step" in capsys.readouterr().err
    assert main(["profile", "--model", "sd99"]) == 2
    assert main(["profile", "--model", "sd3", "--height", "1000"]) == 2
    assert "--height" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["teleport"])


def test_every_subcommand_is_registered():
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"generate", "profile", "demo", "evaluate", "quality-table", "rl"} <= names
