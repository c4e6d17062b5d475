"""`splitldm demo`: outputs, accounting and honest notes when checkpoints are missing."""

import json
import math

import pytest

from splitldm.eval.demo import DemoConfig, run_demo
from splitldm.zoo import checkpoints_dir


def _config(**kw):
    base = dict(num_prompts=2, grid_prompts=2, steps=3, split_step=1, student_steps=2, snr_db=(5.0, 15.0),
                merge_ratios=(0.0, 0.5), draws=2)
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
    # statistics: every point is a mean over 2 prompts x 2 draws with its intervals around it
    for e in report["split"] + [r for r in report["references"] if r["psnr_db"] is not None]:
        for key, mean in (("psnr", e["psnr_db"]), ("ssim", e["ssim"])):
            ci, cp = e[f"{key}_ci"], e[f"{key}_ci_prompts"]
            assert ci["low"] <= mean <= ci["high"] and cp["low"] <= mean <= cp["high"]
            assert ci["method"] == "nested-draws" and cp["method"] == "nested-prompts"
        assert len(e["psnr_per_prompt"]) == 2 and sum(e["psnr_per_prompt"]) / 2 == pytest.approx(e["psnr_db"])
    assert all(e["psnr_ci"]["n"] == 4 for e in report["split"])
    # reference rows: ideal link (deterministic: zero-width draw interval), analog per SNR, download per SNR
    refs = {(r["scheme"], r["snr_db"]): r for r in report["references"]}
    assert refs[("ideal", None)]["psnr_ci"]["half_width"] == 0.0
    assert {("analog", 5.0), ("analog", 15.0), ("download", 5.0), ("download", 15.0)} <= set(refs)
    assert refs[("analog", 5.0)]["channel_uses_per_image"] == 128  # 256 real values, 1/2 use each
    assert refs[("download", 5.0)]["psnr_db"] is None
    assert refs[("download", 15.0)]["channel_uses_per_image"] < refs[("download", 5.0)]["channel_uses_per_image"]
    assert {"codec r=0", "codec r=0.5", "analog r=0"} <= set(report["monotone"])
    prov = saved["provenance"]
    assert {"versions", "seeds", "config", "feature_extractor", "git_commit", "models"} <= set(prov)
    assert prov["config"]["draws"] == 2 and prov["models"] == {}  # nothing of the zoo was used
    assert "| ideal link + tiny (no channel) |" in report["table"] and "generate-then-download" in report["table"]
    # side information counted at capacity: 32 bits of air header + CRC-16, plus the merge index map at r > 0
    from splitldm.analysis.limits import capacity
    from splitldm.serve.wire import SIDE_INFO_BITS
    from splitldm.tome import side_info_bits

    assert DemoConfig().air_side_info_bits == SIDE_INFO_BITS  # the demo counts what the served frame sends
    e0, e5 = by_ratio[0.0], by_ratio[0.5]
    assert e0["side_info_bits_per_image"] == SIDE_INFO_BITS
    assert e5["side_info_bits_per_image"] == SIDE_INFO_BITS + side_info_bits((8, 8), 32, batch_size=2) / 2
    for e in (e0, e5):
        assert e["total_channel_uses_per_image"] == pytest.approx(
            e["channel_uses_per_image"] + e["side_info_bits_per_image"] / capacity(5.0, "rayleigh"))
    assert f"128 + {e0['total_channel_uses_per_image'] - 128:.1f} = " in report["table"]


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
    for bad in (1, 0, 2.5, True, "4"):
        with pytest.raises(ValueError, match="draws"):
            run_demo(tmp_path, _config(draws=bad))
    with pytest.raises(ValueError, match="level"):
        run_demo(tmp_path, _config(level=0.0))
    with pytest.raises(ValueError, match="air_side_info_bits"):
        run_demo(tmp_path, _config(air_side_info_bits=-1))


def test_demo_same_seed_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITLDM_CHECKPOINTS", str(tmp_path / "empty"))
    cfg = _config(num_prompts=2, snr_db=(5.0,), merge_ratios=(0.0,), references=False)
    a = run_demo(tmp_path / "a", cfg, log=lambda s: None)
    b = run_demo(tmp_path / "b", cfg, log=lambda s: None)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(a["split"]) == strip(b["split"]) and strip(a["references"]) == strip(b["references"])


def test_library_plots_without_pyplot_or_backend_switch():
    """eval/ draws through the one plotting helper (object API): no matplotlib.use, no pyplot state."""
    from pathlib import Path

    import splitldm.eval as ev

    for path in Path(ev.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, path.name


def test_plotting_helper(tmp_path):
    import matplotlib

    from splitldm.eval.plotting import new_figure, save_figure

    backend = matplotlib.get_backend()
    fig, axes = new_figure(2, 3, figsize=(3, 2))
    assert axes.shape == (2, 3)
    axes[1][2].plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "f.png")
    assert out.stat().st_size > 500 and out.read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend
    with pytest.raises(TypeError, match="fig"):
        save_figure("not a figure", tmp_path / "x.png")
    with pytest.raises(ValueError, match="path"):
        save_figure(fig, tmp_path / "no_suffix")
    with pytest.raises(ValueError, match="nrows"):
        new_figure(0, 1)


def test_thread_rule_and_precedence(monkeypatch):
    from splitldm.eval import threads

    assert [threads.default_threads(n) for n in (1, 2, 3, 4, 9, 64)] == [1, 1, 2, 3, 8, 8]
    assert threads.default_threads() == max(1, min(threads.MAX_THREADS, threads.available_cpus() - 1))
    monkeypatch.delenv("SPLITLDM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.resolve_threads() == threads.default_threads()
    assert threads.resolve_threads(fallback=1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_threads() == 3
    monkeypatch.setenv("SPLITLDM_THREADS", "2")
    assert threads.resolve_threads() == 2 and threads.resolve_threads(5) == 5
    monkeypatch.setenv("SPLITLDM_THREADS", "many")
    with pytest.raises(ValueError, match="SPLITLDM_THREADS"):
        threads.resolve_threads()
    for bad in (0, -1, 1.5, True, "x"):
        with pytest.raises(ValueError, match="threads"):
            threads.resolve_threads(bad)
    with pytest.raises(ValueError, match="cpus"):
        threads.default_threads(0)


def test_cli_sets_threads_once_at_entry(tmp_path, monkeypatch, capsys):
    """`splitldm demo --threads N` sets torch's count before the work and records it in report.json."""
    import torch

    from splitldm.cli.main import main

    monkeypatch.setenv("SPLITLDM_CHECKPOINTS", str(tmp_path / "empty"))  # random tiny: fast
    before = torch.get_num_threads()
    try:
        assert main(["demo", "--out", str(tmp_path / "d"), "--num-prompts", "1", "--steps", "2", "--split-step", "1",
                     "--student-steps", "1", "--snr-db", "10", "--merge-ratios", "0", "--threads", "1",
                     "--draws", "2", "--no-references",
                     "--quiet", "--no-progress"]) == 0
        assert json.loads((tmp_path / "d" / "report.json").read_text())["threads"] == 1
        assert main(["demo", "--out", str(tmp_path / "e"), "--threads", "0", "--quiet"]) == 2  # one-line error
        capsys.readouterr()
        assert main(["demo", "--out", str(tmp_path / "e"), "--draws", "1", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("splitldm demo: error: --draws") and "\n" not in err
    finally:
        torch.set_num_threads(before)
