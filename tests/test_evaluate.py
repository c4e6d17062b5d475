"""splitldm.eval.evaluate: a 2-point sweep on tiny-random (codec + baselines + OPTA), JSON + PNG, CLI, errors."""

import json

import pytest
import torch

from splitldm.link.codec import SeedCodec
from splitldm.cli import evaluate as evaluate_cmd
from splitldm.eval.evaluate import EvalConfig, evaluate, latent_psnr, sweep


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
                num_prompts=3, split_step=1, num_inference_steps=2, repeats=1, covariance_samples=16,
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
    assert {r["scheme"] for r in data["rows"]} == {"codec", "opta"}
