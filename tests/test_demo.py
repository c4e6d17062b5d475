"""`splitldm demo`: outputs, accounting and honest notes when checkpoints are missing."""

import json
import math

import pytest

from splitldm.eval.demo import DemoConfig, run_demo
from splitldm.zoo import checkpoints_dir


def _config(**kw):
    base = dict(num_prompts=2, grid_prompts=2, steps=3, split_step=1, student_steps=2, snr_db=(5.0, 15.0),
                merge_ratios=(0.0, 0.5))
    base.update(kw)
    return DemoConfig(**base)


def test_demo_without_checkpoints_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITLDM_CHECKPOINTS", str(tmp_path / "empty"))
    report = run_demo(tmp_path / "out", _config(), log=lambda s: None)
    for name in ("grid.png", "psnr_vs_snr.png", "report.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(saved["split"]) == 4
    notes = " ".join(report["notes"])
    assert "RANDOM weights" in notes and "student" in notes and "analog" in notes
    by_ratio = {e["merge_ratio"]: e for e in report["split"] if e["snr_db"] == 5.0}
    # Analog link: 4x8x8 real values -> 128 complex uses; merging 0.5 halves the tokens it sends.
    assert by_ratio[0.0]["channel_uses_per_image"] == 128
    assert by_ratio[0.5]["channel_uses_per_image"] == 64
    assert by_ratio[0.5]["digital_bits_per_image"] > by_ratio[0.0]["digital_bits_per_image"]  # the index map
    assert all(math.isfinite(e["psnr_db"]) for e in report["split"])
    assert report["central"]["bits_per_image"] == 64 * 64 * 3 * 8


@pytest.mark.skipif(not (checkpoints_dir() / "tiny" / "model_index.json").exists(), reason="no shipped tiny model")
def test_demo_on_shipped_checkpoints(tmp_path):
    report = run_demo(tmp_path, _config(snr_db=(20.0,), merge_ratios=(0.0,)), log=lambda s: None)
    assert not any("RANDOM" in n for n in report["notes"])
    assert report["split"][0]["psnr_db"] > 10


def test_demo_bad_config(tmp_path):
    with pytest.raises(ValueError, match="num_prompts"):
        run_demo(tmp_path, _config(num_prompts=0))
    with pytest.raises(ValueError, match="split_step"):
        run_demo(tmp_path, _config(split_step=9))
    with pytest.raises(ValueError, match="snr_db"):
        run_demo(tmp_path, _config(snr_db=(float("nan"),)))
