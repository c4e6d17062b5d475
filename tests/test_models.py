"""Offline components: tokenizer, seeded builds, save/load round trip of a pipeline folder."""

import json

import numpy as np
import pytest
import torch

from splitldm import build_clip_tokenizer, build_pipeline, build_unet, get_spec, load_pipeline, make_scheduler
from splitldm.pipeline.models import SCHEDULERS


def test_tokenizer_whole_words_and_unknown_words():
    tok = build_clip_tokenizer(["red", "circle", "a"], model_max_length=8)
    ids = tok("a red circle").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]
    # A word outside the vocabulary falls back to character pieces, as BPE does; never an error.
    pieces = tok.convert_ids_to_tokens(tok("zebra").input_ids)[1:-1]
    assert "".join(pieces).replace("</w>", "") == "zebra" and len(pieces) == 5
    padded = tok("a red circle", padding="max_length", max_length=8, truncation=True).input_ids
    assert len(padded) == 8
    with pytest.raises(ValueError, match="words"):
        build_clip_tokenizer(["Bad word!"])
    with pytest.raises(ValueError, match="words"):
        build_clip_tokenizer([])


def test_build_is_seeded_and_does_not_touch_global_rng():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a, b, c = build_unet("tiny", seed=1), build_unet("tiny", seed=1), build_unet("tiny", seed=2)
    assert torch.rand(1).item() == before.item()
    assert torch.equal(a.conv_in.weight, b.conv_in.weight)
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


def test_meta_build_has_no_storage():
    unet = build_unet("sd15", device="meta")
    assert all(p.device.type == "meta" for p in unet.parameters())
    assert 850e6 < sum(p.numel() for p in unet.parameters()) < 870e6


def test_pipeline_save_load_round_trip(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    loaded = load_pipeline(tmp_path / "pipe")
    kwargs = dict(num_inference_steps=3, output_type="np")
    a = tiny_pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    b = loaded("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(a, b)
    other = load_pipeline(tmp_path / "pipe", scheduler="euler")
    assert type(other.scheduler).__name__ == "EulerDiscreteScheduler"
    assert other.scheduler.config.beta_schedule == tiny_pipe.scheduler.config.beta_schedule


def test_load_errors(tmp_path, tiny_pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="name_or_path"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_pipeline("someone/some-model")
    tiny_pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    (tmp_path / "p" / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_pipeline(tmp_path / "p")
    tiny_pipe.save_pretrained(tmp_path / "q", safe_serialization=True)
    weights = next((tmp_path / "q" / "unet").glob("*.safetensors"))
    weights.write_bytes(b"corrupt" * 10)
    with pytest.raises(ValueError, match="name_or_path"):
        load_pipeline(tmp_path / "q")
    with pytest.raises(TypeError, match="name_or_path"):
        load_pipeline(3)
    monkeypatch.setenv("SPLITLDM_CHECKPOINTS", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="tiny-random"):
        load_pipeline("tiny")


def test_spec_and_scheduler_errors():
    assert get_spec("tiny-random").latent_size == 8
    assert get_spec("sd15").latent_size == 64
    with pytest.raises(ValueError, match="name"):
        get_spec("sd99")
    with pytest.raises(TypeError, match="name"):
        get_spec(None)
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("warp-drive")
    for name in SCHEDULERS:
        assert make_scheduler(name).config.num_train_timesteps == 1000


def test_random_pipeline_is_complete_and_deterministic():
    a, b = build_pipeline("tiny-random", seed=4), build_pipeline("tiny-random", seed=4)
    ia = a("a blue ring", num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np").images
    ib = b("a blue ring", num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert ia.shape == (1, 64, 64, 3) and np.array_equal(ia, ib)
    assert json.loads(json.dumps(dict(a.unet.config), default=str))["cross_attention_dim"] == a.text_encoder.config.hidden_size


def test_t5_tokenizer_whole_words_pieces_and_eos():
    from splitldm.pipeline.tokenizer import build_t5_tokenizer

    tok = build_t5_tokenizer(["red", "circle", "a"], model_max_length=8)
    assert tok.convert_ids_to_tokens(tok("A red circle").input_ids) == ["\u2581a", "\u2581red", "\u2581circle", "</s>"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    pieces = tok.convert_ids_to_tokens(tok("zebra").input_ids)[:-1]
    assert "".join(pieces).lstrip("\u2581") == "zebra" and len(pieces) == 5
    assert len(tok("a red", padding="max_length", max_length=8).input_ids) == 8
    with pytest.raises(ValueError, match="words"):
        build_t5_tokenizer(["Bad word!"])
    with pytest.raises(ValueError, match="model_max_length"):
        build_t5_tokenizer(["red"], model_max_length=1)


def test_tiny_family_builders_are_seeded_and_flow_schedulers_keep_the_shift():
    from splitldm.pipeline.models import FLOW_SCHEDULERS, TINY_FAMILIES

    assert {"sdxl-tiny-random", "sd3-tiny-random", "pixart-tiny-random", "flux-tiny-random"} <= set(TINY_FAMILIES)
    a, b = build_pipeline("sd3-tiny-random", seed=3), build_pipeline("sd3-tiny-random", seed=3)
    assert torch.equal(a.transformer.proj_out.weight, b.transformer.proj_out.weight)
    assert a.transformer.config.in_channels == a.vae.config.latent_channels == 16
    for name in FLOW_SCHEDULERS:
        sched = make_scheduler(name, dict(a.scheduler.config))
        assert sched.config.get("shift", sched.config.get("flow_shift")) == 3.0
    flux = build_pipeline("flux-tiny-random", scheduler="flow-dpm++")
    assert flux.scheduler.config.use_dynamic_shifting and flux.transformer.config.guidance_embeds
    assert not build_pipeline("flux-schnell-tiny-random").transformer.config.guidance_embeds
