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
    with pytest.raises(SystemExit):
        build_parser().parse_args(["teleport"])


def test_every_subcommand_is_registered():
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"generate", "profile", "demo", "evaluate", "quality-table", "rl"} <= names
