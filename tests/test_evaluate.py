"""splitldm.eval.evaluate: a 2-point sweep on tiny-random (codec + baselines + OPTA), JSON + PNG, CLI, errors."""

import json

import pytest
import torch

from splitldm.link.codec import SeedCodec
from splitldm.cli import evaluate as evaluate_cmd
from splitldm.analysis.limits import capacity
from splitldm.eval.evaluate import EvalConfig, evaluate, latent_psnr, monotone_within, summarize, sweep


class _MeanColour:
    """A tiny feature extractor: per-channel means and stds (stands in for Inception in tests)."""

    name = "test-features[mean/std per channel]"

    def __call__(self, images):
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1).double()


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("codec")
    torch.manual_seed(0)
    SeedCodec(rho=0.125, hidden_channels=8, num_blocks=1, condition="csi").save_pretrained(path)
    return path


def _cfg(tmp_path, codec_dir, **kw):
    base = dict(pipeline="tiny-random", codecs=[str(codec_dir)], snr_db=[0.0, 10.0], channels=["awgn", "rayleigh"],
                num_prompts=3, split_step=1, num_inference_steps=2, draws=2, covariance_samples=16,
                fid="none", fid_real=8, output=str(tmp_path / "eval"))
    base.update(kw)
    return EvalConfig(**base)


def test_two_point_sweep_writes_json_and_png(tmp_path, codec_dir, tiny_pipe):
    res = sweep(_cfg(tmp_path, codec_dir), pipe=tiny_pipe, log=None, extractor=_MeanColour())
    out = tmp_path / "eval"
    data = json.loads((out / "results.json").read_text())
    assert (out / "psnr_vs_snr.png").stat().st_size > 1000
    assert data["reference"]["fid_extractor"] == _MeanColour.name
    rows = res["rows"]
    schemes = {r["scheme"] for r in rows}
    assert {"codec", "analog", "separation", "opta"} <= schemes
    for ch in ("awgn", "rayleigh"):
        for snr in (0.0, 10.0):
            codec = [r for r in rows if r["scheme"] == "codec" and r["channel"] == ch and r["snr_db"] == snr]
            assert len(codec) == 1
            r = codec[0]
            assert r["channel_uses"] == 3 * 32  # 3 images x rho 1/8 of 256 values
            assert r["channel_uses_per_image"] == 32 and r["side_info_bits_per_image"] == 32  # served header + CRC
            assert r["total_channel_uses_per_image"] == pytest.approx(32 + 32 / float(capacity(snr, ch)))
            assert r["rho"] == 0.125 and r["latent_mse"] > 0
            assert -40 < r["image_psnr"] < 101 and -1 <= r["image_ssim"] <= 1 and r["fid"] >= 0
            analog = [x for x in rows if x["scheme"] == "analog" and x["channel"] == ch and x["snr_db"] == snr][0]
            assert analog["rho"] == 0.5 and analog["channel_uses"] == 3 * 128
    # OPTA improves with SNR and is reported on the same latent-PSNR scale
    opta = {(r["channel"], r["snr_db"]): r["latent_psnr"] for r in rows if r["scheme"] == "opta"}
    assert opta[("awgn", 10.0)] > opta[("awgn", 0.0)] > 0
    assert opta[("awgn", 10.0)] > opta[("rayleigh", 10.0)]
    # analog over AWGN with LMMSE: latent error shrinks with SNR
    an = {r["snr_db"]: r["latent_psnr"] for r in rows if r["scheme"] == "analog" and r["channel"] == "awgn"}
    assert an[10.0] > an[0.0]
    if "digital" in schemes:
        assert all("config" in r for r in rows if r["scheme"] == "digital")
    else:
        assert any("digital skipped" in n for n in res["notes"])
    # every image row: per-metric intervals (headline over draws, and over prompts) around the mean
    for r in rows:
        if r.get("image_psnr") is None:
            continue
        for m in ("image_psnr", "image_ssim", "latent_psnr"):
            ci, cp = r[f"{m}_ci"], r[f"{m}_ci_prompts"]
            assert ci["low"] <= r[m] <= ci["high"] and cp["low"] <= r[m] <= cp["high"], (r["scheme"], m)
            assert ci["method"] == "nested-draws" and cp["method"] == "nested-prompts" and ci["level"] == 0.95
            assert ci["mean"] == pytest.approx(r[m])
        assert len(r["image_psnr_per_prompt"]) == 3
        assert sum(r["image_psnr_per_prompt"]) / 3 == pytest.approx(r["image_psnr"])
        if r["scheme"] in ("analog", "codec"):
            assert r["draws"] == 2 and r["image_psnr_ci"]["n"] == 3 * 2
        if r["scheme"] == "separation":  # error-free: no channel randomness, zero-width draw interval
            assert r["image_psnr_ci"]["half_width"] == 0.0
            assert r["config"]["bits_per_value"] <= r["config"]["max_bits_per_value"]
    # reference rows: the ideal link (a same-model step split is exact: the 100 dB cap) and download
    ideal = [r for r in rows if r["scheme"] == "ideal"]
    assert len(ideal) == 1 and ideal[0]["image_psnr"] == 100.0 and ideal[0]["latent_mse"] == 0.0
    down = {(r["channel"], r["snr_db"]): r for r in rows if r["scheme"] == "download"}
    assert set(down) == {(c, s) for c in ("awgn", "rayleigh") for s in (0.0, 10.0)}
    for (ch, snr), r in down.items():
        assert r["bits"] == 64 * 64 * 3 * 8 and r["image_psnr"] is None
        assert r["channel_uses"] == pytest.approx(r["bits"] / float(capacity(snr, ch)))
    assert down[("awgn", 10.0)]["channel_uses"] < down[("awgn", 0.0)]["channel_uses"]
    prov = data["provenance"]
    assert {"versions", "seeds", "config", "feature_extractor", "git_commit", "threads"} <= set(prov)
    assert prov["config"]["draws"] == 2 and prov["feature_extractor"] == _MeanColour.name
    assert prov["seeds"]["channel_first_draw"] == 100
    assert data["statistics"]["draws"] == 2 and "nested-draws" in data["statistics"]["headline"]
    assert set(data["monotone"]) >= {"codec awgn rho=0.125", "analog rayleigh rho=0.5"}


def test_evaluate_split_link(tiny_pipe, codec_dir):
    from splitldm.link.channels import AWGN
    from splitldm.link.stack import Link
    from splitldm.pipeline.split import SplitPipeline

    split = SplitPipeline(tiny_pipe, split_step=1, link=Link([SeedCodec.from_pretrained(codec_dir), AWGN(csi="mmse")]))
    rows = evaluate(split, ["a red circle", "a blue square"], [0.0, 20.0], num_inference_steps=2,
                    guidance_scale=2.0)
    assert [r["snr_db"] for r in rows] == [0.0, 20.0]
    assert all(r["channel_uses"] == 2 * 32 and r["latent_mse"] > 0 for r in rows)
    with pytest.raises(ValueError, match="prompts"):
        evaluate(split, [], [0.0])
    with pytest.raises(ValueError, match="repeats"):
        evaluate(split, ["a red circle"], [0.0], repeats=0)


def test_more_draws_shrink_the_draw_interval_and_same_seed_same_numbers(tiny_pipe, codec_dir):
    from splitldm.link.channels import RayleighBlockFading
    from splitldm.link.stack import Link
    from splitldm.pipeline.split import SplitPipeline

    split = SplitPipeline(tiny_pipe, split_step=1,
                          link=Link([SeedCodec.from_pretrained(codec_dir), RayleighBlockFading(csi="mmse")]))
    kw = dict(num_inference_steps=2, guidance_scale=2.0)
    prompts = ["a red circle", "a blue square"]
    few = evaluate(split, prompts, [5.0], repeats=2, **kw)[0]
    many = evaluate(split, prompts, [5.0], repeats=8, **kw)[0]
    for m in ("image_psnr", "latent_mse"):
        assert many[f"{m}_ci"]["half_width"] < few[f"{m}_ci"]["half_width"], m
        assert many[f"{m}_ci"]["n"] == 16 and few[f"{m}_ci"]["n"] == 4
    again = evaluate(split, prompts, [5.0], repeats=2, **kw)[0]
    assert again == few  # same seed: the same numbers, intervals included


def test_summarize_and_monotone():
    import numpy as np

    x = np.array([[1.0, 3.0], [2.0, 6.0]])
    st = summarize(x)
    assert st["mean"] == 3.0 and st["per_prompt"] == [2.0, 4.0]
    assert st["ci"]["method"] == "nested-draws" and st["ci_prompts"]["method"] == "nested-prompts"
    one = summarize(x[:, :1], deterministic=True)
    assert one["ci"]["half_width"] == 0.0 and one["ci"]["mean"] == 1.5
    assert summarize(x[:, :1])["ci"] is None and summarize(x[:1])["ci_prompts"] is None
    m = monotone_within([1.0, 0.9, 2.0, 0.5], [0.8, 0.7, 1.9, 0.4], [1.2, 1.1, 2.1, 0.6])
    assert m == {"means_monotone": False, "monotone_within_intervals": False, "decreases": [1, 3],
                 "significant_decreases": [3]}
    assert monotone_within([1.0, 1.5], [0.5, 1.0], [1.5, 2.0])["means_monotone"] is True


def test_config_errors_and_yaml(tmp_path, codec_dir):
    with pytest.raises(ValueError, match="schemes"):
        EvalConfig(schemes=["telepathy"])
    with pytest.raises(ValueError, match="channels"):
        EvalConfig(channels=["fiber"])
    with pytest.raises(ValueError, match="snr_db"):
        EvalConfig(snr_db=[float("nan")])
    cfg_file = tmp_path / "e.yaml"
    cfg_file.write_text("pipeline: tiny-random\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        EvalConfig.from_yaml(cfg_file)
    cfg = EvalConfig.from_yaml("configs/evaluate.yaml", output=str(tmp_path / "x"))
    assert cfg.output == str(tmp_path / "x") and cfg.snr_db[0] == -5
    assert cfg.draws == cfg.repeats >= 2
    assert EvalConfig(repeats=3).draws == 3 and EvalConfig(draws=5).repeats == 5  # the old name still works
    assert EvalConfig().draws == 4
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="draws"):
            EvalConfig(draws=bad)
    with pytest.raises(ValueError, match="repeats"):
        EvalConfig(repeats=0)
    with pytest.raises(ValueError, match="draws"):
        EvalConfig(draws=2, repeats=3)
    with pytest.raises(ValueError, match="level"):
        EvalConfig(level=1.0)
    old = tmp_path / "old.yaml"
    old.write_text("repeats: 3\n")
    assert EvalConfig.from_yaml(old).draws == 3 and EvalConfig.from_yaml(old, draws=5).draws == 5
    assert latent_psnr(0.1, 1.0) == pytest.approx(10.0)


def test_cli_runs(tmp_path, codec_dir, tiny_pipe, monkeypatch):
    import splitldm.pipeline.models

    monkeypatch.setattr(splitldm.pipeline.models, "load_pipeline", lambda name, **kw: tiny_pipe)  # skip a rebuild
    cfg_file = tmp_path / "e.yaml"
    cfg_file.write_text(
        f"pipeline: tiny-random\ncodecs: ['{codec_dir}']\nsnr_db: [5.0]\nchannels: [awgn]\n"
        "schemes: [codec, opta]\nnum_prompts: 2\nsplit_step: 1\nnum_inference_steps: 2\nrepeats: 1\n"
        f"covariance_samples: 8\nfid: none\noutput: '{tmp_path / 'cli'}'\n")
    assert evaluate_cmd.main(["--config", str(cfg_file), "--quiet"]) == 0
    data = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert {r["scheme"] for r in data["rows"]} == {"codec", "opta", "ideal", "download"}
    assert data["config"]["draws"] == 1 and data["rows"][0]["image_psnr_ci"]["half_width"] == 0.0  # ideal
    # same config and seed: the same numbers (timings aside)
    assert evaluate_cmd.main(["--config", str(cfg_file), "--quiet", "--output", str(tmp_path / "cli2")]) == 0
    again = json.loads((tmp_path / "cli2" / "results.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(again["rows"]) == strip(data["rows"]) and again["reference"] == data["reference"]


def test_separation_picks_its_best_rate_at_or_under_capacity():
    from splitldm.eval.evaluate import best_separation_bits
    from splitldm.link.separation import Separation
    from splitldm.link.payload import Payload
    from splitldm.link.stack import LinkContext

    x = torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    p = Payload(tensors={"latents": x}, meta={}, primary=("latents",))

    def mse(b):
        return float((Separation(b).send(p, LinkContext(), torch.Generator()).tensors["latents"] - x).pow(2).mean())

    assert mse(1) > mse(0)  # 1 bit over [min, max] is worse than sending the mean: never chosen
    assert best_separation_bits(x, 1) == 0
    for b_max in (2, 3, 4):
        b = best_separation_bits(x, b_max)
        assert b <= b_max and mse(b) == min(mse(c) for c in range(b_max + 1))
    with pytest.raises(ValueError, match="max_bits"):
        best_separation_bits(x, -1)


def test_side_info_default_is_the_served_frames():
    from splitldm.serve.wire import SIDE_INFO_BITS

    assert EvalConfig().air_side_info_bits == SIDE_INFO_BITS
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="air_side_info_bits"):
            EvalConfig(air_side_info_bits=bad)


def test_cli_rejects_bad_draws(tmp_path, capsys):
    assert evaluate_cmd.main(["--config", "configs/evaluate.yaml", "--draws", "0", "--output",
                              str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "draws" in err and err.startswith("splitldm evaluate: error:")
