"""build_quality_table's statistics: channel draws, per-cell 95 % half-widths, interval method, provenance."""

import json

import numpy as np
import pytest

from splitldm.eval.quality import QualityTable, build_quality_table
from splitldm.eval.stats import nested_interval, t_interval
from splitldm.zoo import checkpoints_dir

PROMPTS = ["a", "bb"]


def value(steps, r, snr, channel, prompt, seed, draw=0):
    """A deterministic stand-in: the prompt and seed shift the level, the draw is the channel noise."""
    base = steps + 10 * r + len(prompt) + 0.5 * seed
    noise = 0.0 if channel == "none" else (0.3 * draw - 0.1 * draw ** 2 + 0.07 * seed * draw)
    return {"latent_mse": base + noise, "psnr": -base}


def test_draws_give_the_nested_interval_and_none_cells_are_measured_once():
    calls = []

    def fn(steps, r, snr, channel, prompt, seed, draw=0):
        calls.append((channel, draw))
        return value(steps, r, snr, channel, prompt, seed, draw)

    t = build_quality_table(fn, [4, 8], [0.0, 0.5], [0.0, 10.0], channels=["none", "awgn"], prompts=PROMPTS,
                            seeds=[0, 1], draws=3)
    g = len(PROMPTS) * 2
    # none: once per (steps, ratio, prompt, seed), draw 0 only; awgn: 3 draws per (cell, prompt, seed)
    assert sum(c == "none" for c, _ in calls) == 4 * g
    assert {d for c, d in calls if c == "none"} == {0}
    assert sum(c == "awgn" for c, _ in calls) == 8 * g * 3
    # the awgn cell (steps 8, r 0.5, 10 dB) by hand: the [G, D] table and its nested interval over draws
    x = np.array([[value(8, 0.5, 10.0, "awgn", p, s, d)["latent_mse"] for d in range(3)]
                  for p in PROMPTS for s in (0, 1)])
    iv = nested_interval(x, 0.95, "draws")
    ci, si, ri, qi = 1, 1, 1, 1
    assert t.metrics["latent_mse"][ci, si, ri, qi] == pytest.approx(x.mean(), abs=1e-12)
    assert t.half_widths["latent_mse"][ci, si, ri, qi] == pytest.approx(iv.half_width, rel=1e-12)
    assert iv.half_width > 0.05
    # psnr has no channel noise in the stand-in: zero spread over draws, half-width 0
    assert t.half_widths["psnr"][ci, si, ri, qi] == 0.0
    # none cells: deterministic, half-width 0, copied along the SNR axis
    assert np.all(t.half_widths["latent_mse"][0] == 0.0)
    assert np.array_equal(t.metrics["latent_mse"][0, :, :, 0], t.metrics["latent_mse"][0, :, :, 1])
    info = t.meta["interval"]
    assert (info["method"], info["level"], info["draws"], info["samples_per_cell"]) == (
        "nested-draws", 0.95, 3, {"noisy": 12, "none": 4})


def test_one_draw_uses_the_t_interval_over_prompts_and_a_six_argument_fn():
    def fn(steps, r, snr, channel, prompt, seed):  # no draw keyword: fine with draws=1
        return value(steps, r, snr, channel, prompt, seed)

    t = build_quality_table(fn, [4], [0.0], [0.0, 20.0], channels=["awgn"], prompts=PROMPTS, seeds=[0, 1, 2])
    per = [value(4, 0.0, 0.0, "awgn", p, s)["latent_mse"] for p in PROMPTS for s in (0, 1, 2)]
    iv = t_interval(per, 0.95)
    assert t.metrics["latent_mse"][0, 0, 0, 0] == pytest.approx(np.mean(per), abs=1e-12)
    assert t.half_widths["latent_mse"][0, 0, 0, 0] == pytest.approx(iv.half_width, rel=1e-12)
    assert t.meta["interval"]["method"] == "nested-prompts"
    # one (prompt, seed) pair: nothing to measure a spread with, half-width 0
    one = build_quality_table(fn, [4], [0.0], [0.0], channels=["awgn"])
    assert one.half_widths["latent_mse"][0, 0, 0, 0] == 0.0


def test_round_trip_keeps_half_widths_and_provenance(tmp_path):
    t = build_quality_table(value, [4, 8], [0.0], [0.0, 10.0], channels=["awgn"], prompts=PROMPTS, seeds=[0, 5],
                            draws=2, meta={"source": "stand-in"})
    path = t.save(tmp_path / "q.json")
    raw = json.loads(path.read_text())
    assert set(raw["ci_half_width"]) == {"latent_mse", "psnr"}
    back = QualityTable.load(path)
    for k in t.metrics:
        assert np.array_equal(back.metrics[k], t.metrics[k])
        assert np.array_equal(back.half_widths[k], t.half_widths[k])
    prov = back.meta["provenance"]
    assert prov["seeds"] == {"generation[0]": 0, "generation[1]": 5}
    assert prov["config"]["draws"] == 2 and prov["config"]["interval"] == "draws"
    assert prov["config"]["meta"] == {"source": "stand-in"}
    assert {"torch", "numpy", "scipy"} <= set(prov["versions"])


def test_shipped_table_loads_with_or_without_half_widths():
    t = QualityTable.load(checkpoints_dir() / "quality" / "tiny.json")
    assert t.channels == ["none"] and t.steps == list(range(4, 13))
    if t.half_widths:  # rebuilt with intervals: one per metric, same grid, finite and >= 0
        assert set(t.half_widths) == set(t.metrics)
        assert all(np.all(np.isfinite(v)) and np.all(v >= 0) for v in t.half_widths.values())
        assert t.meta["interval"]["method"] == "nested-prompts"


@pytest.mark.parametrize("kwargs, match", [
    ({"draws": 0}, "draws: expected an int >= 1"),
    ({"draws": True}, "draws: expected an int >= 1"),
    ({"draws": 2.0}, "draws: expected an int >= 1"),
    ({"interval": "bogus"}, "interval: expected one of"),
    ({"interval": "draws"}, "interval: 'draws' needs draws >= 2"),
    ({"level": 1.5}, "level: expected a confidence level"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_quality_table(value, [4], [0.0], [0.0], **kwargs)


def test_half_widths_are_checked():
    mse = np.ones((1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"half_widths\['latent_mse'\]: expected shape \(1, 1, 1, 1\)"):
        QualityTable([4], [0.0], [0.0], ["none"], {"latent_mse": mse}, half_widths={"latent_mse": np.ones(2)})
    with pytest.raises(ValueError, match="half-widths must be >= 0"):
        QualityTable([4], [0.0], [0.0], ["none"], {"latent_mse": mse}, half_widths={"latent_mse": -mse})
    with pytest.raises(ValueError, match="'psnr' is not a metric"):
        QualityTable([4], [0.0], [0.0], ["none"], {"latent_mse": mse}, half_widths={"psnr": mse})


def test_cli_builds_a_table_with_draws_and_intervals(tmp_path):
    """`splitldm quality-table --draws 2 --channels awgn` on the shipped tiny model: every noisy cell has
    the nested-over-draws half-width, the provenance hashes the pipeline, the command is recorded."""
    if not (checkpoints_dir() / "tiny" / "model_index.json").exists():
        pytest.fail("the shipped tiny model is package data and must exist")
    from splitldm.cli.main import main

    out = tmp_path / "q.json"
    rc = main(["quality-table", "--output", str(out), "--steps", "2", "3", "--merge-ratios", "0.0",
               "--snr-db", "5.0", "--channels", "awgn", "--prompts", "a red circle", "--seeds", "0",
               "--reference-steps", "3", "--draws", "2", "--threads", "1", "--no-progress"])
    assert rc == 0
    table = QualityTable.load(out)
    assert table.meta["interval"]["method"] == "nested-draws" and table.meta["interval"]["draws"] == 2
    assert "--draws 2" in table.meta["command"]
    assert set(table.meta["provenance"]["models"]) == {"tiny"}
    half = np.asarray(table.half_widths["latent_mse"])
    assert half.shape == table.metrics["latent_mse"].shape and np.all(half > 0)  # two draws differ
