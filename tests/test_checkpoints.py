"""The shipped checkpoints load offline, generate, and bad checkpoints / prompts fail clearly."""

import json
import shutil

import pytest
import torch

from splitldm.eval.metrics import load_classifier, prompt_adherence
from splitldm.pipeline.models import load_pipeline
from splitldm.zoo import checkpoints_dir


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


def test_shipped_teacher_generates_right_shape(tiny):
    assert type(tiny.scheduler).__name__ == "DDIMScheduler"
    assert tiny.unet.dtype == torch.float32  # fp16 on disk, fp32 after loading
    out = tiny(["a large red circle at the center on a black background"], num_inference_steps=2,
               guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_shipped_student_generates_in_one_step():
    lcm = load_pipeline("tiny-lcm")
    assert type(lcm.scheduler).__name__ == "LCMScheduler"
    assert lcm.unet.config.time_cond_proj_dim is not None
    out = lcm(["a small blue square at the top left on a white background"] * 2, num_inference_steps=1,
              guidance_scale=4.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()


def test_shipped_teacher_and_student_follow_their_prompts(tiny):
    """Measured on 256 held-out prompts: teacher 97% at 8 DDIM steps, student 94% at 4 LCM steps."""
    from splitldm.eval.data import prompts_for

    prompts = prompts_for(16, "test", seed=0)
    clf = load_classifier()
    teacher = tiny(prompts, num_inference_steps=8, guidance_scale=4.0, output_type="pt",
                   generator=torch.Generator().manual_seed(0)).images
    assert prompt_adherence(teacher, prompts, clf) >= 0.8
    student = load_pipeline("tiny-lcm")(prompts, num_inference_steps=4, guidance_scale=4.0, output_type="pt",
                                        generator=torch.Generator().manual_seed(0)).images
    assert prompt_adherence(student, prompts, clf) >= 0.75


def test_shipped_merge_decoder_beats_the_stock_decoder_on_merged_latents(tiny):
    from splitldm.eval.data import render_batch
    from splitldm.recipes.merge_decoder import load_merge_decoder, psnr_table

    images = render_batch(range(16), split="test")[0]
    with pytest.warns(DeprecationWarning):  # the old name, kept for one release
        tuned = load_merge_decoder(tiny.vae, checkpoints_dir() / "merge-decoder")
    rows = psnr_table({"stock": tiny.vae, "tuned": tuned}, images, ratios=(0.0, 0.7), noise_levels=(0.0, 0.3))
    for row in rows:  # shipped metrics.json (256 images): +0.7 to +1.7 dB
        assert row["psnr_tuned_db"] > row["psnr_stock_db"] + 0.3, row


def test_shipped_classifier_loads():
    clf = load_classifier()
    assert clf.config["feature_dim"] == 128


def test_shipped_folders_are_safetensors_only_and_small():
    total = 0
    for name in ("tiny", "tiny-lcm", "classifier"):
        folder = checkpoints_dir() / name
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
        assert (folder / "README.md").exists()
        total += sum(p.stat().st_size for p in files)
    assert total < 20 * 2 ** 20
    everything = sum(p.stat().st_size for p in checkpoints_dir().rglob("*") if p.is_file())
    assert everything < 25 * 2 ** 20  # + seed codec, merge-aware decoder, quality table


def test_unknown_name_and_broken_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="name_or_path"):
        load_pipeline("no-such-checkpoint")
    src = checkpoints_dir() / "tiny"
    missing = tmp_path / "missing"
    shutil.copytree(src, missing)
    (missing / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_pipeline(missing)
    no_config = tmp_path / "no_config"
    shutil.copytree(src, no_config)
    (no_config / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        load_pipeline(no_config)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(src, corrupt)
    (corrupt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x80\x04 not safetensors, maybe a pickle")
    with pytest.raises(ValueError, match="could not load"):
        load_pipeline(corrupt)


def test_out_of_vocabulary_prompts_use_word_pieces_and_unknown_token(tiny):
    tok = tiny.tokenizer
    assert tok.tokenize("red zebra") == ["red</w>", "z", "e", "b", "r", "a</w>"]  # unknown word -> pieces
    ids = tok("red ü").input_ids  # character outside the alphabet -> the unknown token, as in CLIP
    assert ids[-2] == tok.unk_token_id
    long = " ".join(["red"] * 40)  # longer than the 16-token context: truncated like CLIP's 77
    assert len(tok(long, truncation=True, max_length=tok.model_max_length).input_ids) == 16
    out = tiny(["a purple zebra, ü!"], num_inference_steps=1, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (1, 3, 64, 64)


def test_empty_prompt_lists_raise_value_error(tiny):
    from splitldm.pipeline.sampling import make_settings

    with pytest.raises(ValueError, match="prompt"):
        make_settings(tiny, [])
    for name in ("height", "width"):  # 0 / True are refused by name, not read as "the default size"
        for bad in (0, True):
            with pytest.raises(ValueError, match=f"{name}: must be a positive multiple of 8, got {bad!r}"):
                make_settings(tiny, ["a"], **{name: bad})
    assert make_settings(tiny, ["a"], height=None).height == 64
    with pytest.raises(ValueError, match="prompts"):
        prompt_adherence(torch.zeros(0, 3, 64, 64), [], load_classifier())


def test_readmes_record_command_and_figures():
    for name in ("tiny", "tiny-lcm", "classifier", "seed-codec", "merge-decoder"):
        text = (checkpoints_dir() / name / "README.md").read_text()
        assert "python -m splitldm.recipes." in text
    cfg = json.loads((checkpoints_dir() / "tiny" / "unet" / "config.json").read_text())
    assert cfg["in_channels"] == 4 and cfg["cross_attention_dim"] == 64


def test_merge_aware_decoder_zoo_name_matches_the_deprecated_loader(tiny, tmp_path):
    from splitldm.pipeline.merge_decoder import MergeAwareDecoder, load_merge_decoder

    decoder = MergeAwareDecoder.from_pretrained("merge-decoder")
    assert decoder.config.pipeline == "tiny" and decoder.config.training["steps"] == 4000
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    vae = decoder.apply_to(tiny.vae)
    assert vae is not tiny.vae and not torch.equal(vae.decoder.conv_in.weight, tiny.vae.decoder.conv_in.weight)
    with torch.no_grad():
        images = vae.decode(z).sample
        assert torch.equal(decoder.decode(z), images)  # standalone decode = the patched VAE's decode
    # before the port (recipes.merge_decoder.load_merge_decoder on the same latents): sum -752.2635
    assert float(images.sum()) == pytest.approx(-752.2635, abs=1e-2)
    with pytest.warns(DeprecationWarning, match="MergeAwareDecoder.from_pretrained"):
        old = load_merge_decoder(tiny.vae, checkpoints_dir() / "merge-decoder")
    with torch.no_grad():
        assert torch.equal(old.decode(z).sample, images)
    decoder.save_pretrained(tmp_path / "md")
    assert sorted(p.name for p in (tmp_path / "md").iterdir()) == ["config.json", "decoder.safetensors"]
    again = MergeAwareDecoder.from_pretrained(tmp_path / "md")
    with torch.no_grad():
        assert torch.equal(again.decode(z), images)


def test_merge_aware_decoder_bad_input(tiny, tmp_path, monkeypatch):
    from splitldm.pipeline.merge_decoder import MergeAwareDecoder, load_merge_decoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        MergeAwareDecoder.from_pretrained(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        MergeAwareDecoder.from_pretrained("someone/decoder")
    with pytest.warns(DeprecationWarning), pytest.raises(FileNotFoundError, match="folder"):
        load_merge_decoder(tiny.vae, tmp_path / "none")
    decoder = MergeAwareDecoder.from_pretrained("merge-decoder")
    small = MergeAwareDecoder(block_out_channels=(8,), norm_num_groups=4)
    with pytest.raises(ValueError, match="vae"):
        small.apply_to(tiny.vae)
    with pytest.raises(TypeError, match="vae"):
        decoder.apply_to(object())
    with pytest.raises(ValueError, match="z"):
        decoder.decode(torch.zeros(1, 3, 8, 8))
    small.save_pretrained(tmp_path / "small")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="folder"):
        load_merge_decoder(tiny.vae, tmp_path / "small")
