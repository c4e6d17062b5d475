"""Every pipeline family splits exactly: SD, SDXL, SD3, PixArt-alpha/sigma, Flux (tiny seeded configs).

With an ideal link (the payload crossing as bytes) the images equal the family's own diffusers
pipeline output bit for bit, at every split step, for every scheduler the family supports, CFG on
and off, several prompts x num_images_per_prompt, both condition modes.
"""

import numpy as np
import pytest
import torch

from splitldm import Link, SplitPipeline, build_pipeline, load_pipeline, with_scheduler
from splitldm.link.payload import Payload, PayloadError
from splitldm.link.stack import SerializeBytes
from splitldm.pipeline.families import FAMILIES, family_of, supported_pipelines
from splitldm.pipeline.sampling import make_settings
from splitldm.pipeline.split import latent_space_fingerprint

STEPS = 3
PROMPTS = ["a red circle", "a small blue square"]
DDPM = ["ddim", "euler", "euler-a", "dpm++", "pndm", "lcm"]
FLOW = ["flow-euler", "flow-dpm++", "flow-unipc"]

#: family -> (build_pipeline name, schedulers, call kwargs, CFG kwargs (on), CFG kwargs (off))
CASES = {
    "sdxl": ("sdxl-tiny-random", DDPM, {}, dict(guidance_scale=5.0), dict(guidance_scale=1.0)),
    "sd3": ("sd3-tiny-random", FLOW, dict(max_sequence_length=8), dict(guidance_scale=5.0), dict(guidance_scale=1.0)),
    "pixart": ("pixart-tiny-random", DDPM, dict(max_sequence_length=8, use_resolution_binning=False, height=64, width=64),
               dict(guidance_scale=4.5), dict(guidance_scale=1.0)),
    "flux": ("flux-tiny-random", FLOW, dict(max_sequence_length=8, height=64, width=64),
             dict(true_cfg_scale=3.0, negative_prompt=["blurry", "dark"]), dict(guidance_scale=3.5)),
    "flux-schnell": ("flux-schnell-tiny-random", ["flow-euler"], dict(max_sequence_length=8, height=64, width=64),
                     dict(true_cfg_scale=2.0, negative_prompt=["blurry", "dark"]), dict()),
}
_PIPES: dict[str, object] = {}


def _pipe(name):
    if name not in _PIPES:
        _PIPES[name] = build_pipeline(name, seed=0)
    return _PIPES[name]


def _gen():
    return torch.Generator().manual_seed(7)


def _check_all_steps(pipe, kwargs, condition="prompt", steps=STEPS, per_prompt=1):
    kwargs = dict(kwargs, num_inference_steps=steps, num_images_per_prompt=per_prompt, output_type="np")
    reference = pipe(PROMPTS, generator=_gen(), **kwargs).images
    for k in range(steps + 1):
        split = SplitPipeline(pipe, split_step=k, condition=condition, link=Link([SerializeBytes()]))
        out = split(PROMPTS, generator=_gen(), **kwargs)
        assert out.images.shape == reference.shape
        np.testing.assert_array_equal(out.images, reference, err_msg=f"k={k} {condition}")
    return out


@pytest.mark.parametrize("cfg", ["cfg-on", "cfg-off"])
@pytest.mark.parametrize("family,scheduler", [(f, s) for f, case in CASES.items() for s in case[1]])
def test_step_split_equals_family_pipeline(family, scheduler, cfg):
    name, _, kwargs, on, off = CASES[family]
    pipe = with_scheduler(_pipe(name), scheduler)
    _check_all_steps(pipe, dict(kwargs, **(on if cfg == "cfg-on" else off)))


@pytest.mark.parametrize("family", list(CASES) + ["sd"])
def test_embeddings_condition_equals_family_pipeline(family):
    name, _, kwargs, on, _ = CASES.get(family, ("micro-random", None, {}, dict(guidance_scale=5.0), None))
    out = _check_all_steps(_pipe(name), dict(kwargs, **on), condition="embeddings", per_prompt=2)
    assert "prompt_embeds" in out.sent.tensors and out.sent.meta["settings"]["prompt"] == ["", ""]


@pytest.mark.parametrize("name", ["pixart-tiny-random", "pixart-sigma-tiny-random"])
def test_pixart_resolution_binning_on(name):
    """Binning on (the default): 256 x 192 is generated at its aspect-ratio bin and resized back."""
    pipe = _pipe(name)
    kwargs = dict(max_sequence_length=8, height=192, width=256, guidance_scale=4.5, num_inference_steps=2,
                  output_type="np")
    reference = pipe(PROMPTS[:1], generator=_gen(), **kwargs).images
    assert reference.shape == (1, 192, 256, 3)
    for k in (0, 1, 2):
        out = SplitPipeline(pipe, split_step=k, link=Link([SerializeBytes()]))(PROMPTS[:1], generator=_gen(), **kwargs)
        np.testing.assert_array_equal(out.images, reference)
    h, w = out.sent.tensors["latents"].shape[-2:]
    assert (h * 8, w * 8) != (192, 256)  # the latents crossed at the bin size, not the requested one


def test_sd3_dynamic_shifting_schedule():
    """SD3.5-style scheduler with use_dynamic_shifting: mu from the image token count, on both sides."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = _pipe("sd3-tiny-random")
    pipe = type(base)(**dict(base.components, scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256)))
    pipe.set_progress_bar_config(disable=True)
    _check_all_steps(pipe, dict(max_sequence_length=8, guidance_scale=1.0))


def test_flux_payload_is_packed_and_dynamic_shift_follows_image_size():
    pipe = _pipe("flux-tiny-random")
    split = SplitPipeline(pipe, split_step=1)
    small = split.edge("a red circle", num_inference_steps=2, height=64, width=64, max_sequence_length=8)
    large = split.edge("a red circle", num_inference_steps=2, height=128, width=64, max_sequence_length=8)
    assert tuple(small.tensors["latents"].shape) == (1, 16, 64)  # (64/16)^2 tokens of 16 channels x 2 x 2
    assert tuple(large.tensors["latents"].shape) == (1, 32, 64)
    assert small.meta["next_sigma"] != large.meta["next_sigma"]  # mu grows with the image token count


# ------------------------------------------------------------------------------------ costs
@pytest.mark.parametrize("family", list(CASES) + ["sd"])
def test_condition_bits_match_the_payload(family):
    name, _, kwargs, on, _ = CASES.get(family, ("micro-random", None, {}, dict(guidance_scale=5.0), None))
    pipe = _pipe(name)
    kwargs = dict(kwargs, **on, num_inference_steps=2, num_images_per_prompt=2)
    split = SplitPipeline(pipe, split_step=1, condition="embeddings")
    bits = split.condition_bits(PROMPTS, **kwargs)
    payload = split.edge(PROMPTS, generator=_gen(), **kwargs)
    names = list(family_of(pipe).condition_shapes(pipe, make_settings(pipe, PROMPTS, **kwargs)))
    assert bits["embeddings"] == payload.tensor_bits(names) > 20 * bits["prompt"] > 0
    prompt_payload = SplitPipeline(pipe, split_step=1).edge(PROMPTS, generator=_gen(), **kwargs)
    assert payload.num_bits() - prompt_payload.num_bits() >= bits["embeddings"] - bits["prompt"] - 4096


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name", ["sdxl-tiny-random", "sd3-tiny-random", "pixart-tiny-random",
                                  "pixart-sigma-tiny-random", "flux-tiny-random"])
def test_save_load_round_trip(tmp_path, name):
    pipe = _pipe(name)
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    assert not list((tmp_path / "p").rglob("*.bin"))
    loaded = load_pipeline(tmp_path / "p")
    assert type(loaded) is type(pipe)
    kwargs = dict(CASES[family_of(pipe).name if name != "pixart-sigma-tiny-random" else "pixart"][2],
                  num_inference_steps=2, output_type="np")
    a = pipe(PROMPTS[0], generator=_gen(), **kwargs).images
    b = loaded(PROMPTS[0], generator=_gen(), **kwargs).images
    # Same weights; a loaded copy's tensors sit at other memory alignments, which can change a
    # BLAS reduction order (SDXL's pooled projection: 2.4e-7), so the copies agree to float noise ...
    np.testing.assert_allclose(a, b, atol=1e-5)
    # ... and the loaded pipeline splits exactly; ES and UE copies have the same fingerprint.
    out = SplitPipeline(loaded, split_step=1, link=Link([SerializeBytes()]))(PROMPTS[0], generator=_gen(), **kwargs)
    np.testing.assert_array_equal(out.images, b)
    out = SplitPipeline(pipe, split_step=1, device_pipe=loaded)(PROMPTS[0], generator=_gen(), **kwargs)
    np.testing.assert_allclose(out.images, a, atol=1e-5)


def test_load_refuses_folder_without_tokenizer_or_unsupported(tmp_path):
    import json
    import shutil

    pipe = _pipe("sd3-tiny-random")
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    shutil.rmtree(tmp_path / "p" / "tokenizer_3")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_pipeline(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="KandinskyPipeline.*FluxPipeline"):
        load_pipeline(tmp_path / "p")


# ------------------------------------------------------------------------------- errors
def test_unsupported_pipeline_and_family_arguments():
    with pytest.raises(TypeError, match=r"AutoencoderKL is not a supported pipeline.*StableDiffusionXLPipeline.*FluxPipeline"):
        SplitPipeline(_pipe("flux-tiny-random").vae)
    assert set(FAMILIES) == {"sd", "sdxl", "sd3", "pixart", "flux"} and len(supported_pipelines()) == 6
    flux = SplitPipeline(_pipe("flux-tiny-random"))
    with pytest.raises(TypeError, match="use_resolution_binning"):
        flux.edge("a red circle", num_inference_steps=1, use_resolution_binning=False)
    with pytest.raises(ValueError, match="max_sequence_length"):
        flux.edge("a red circle", num_inference_steps=1, max_sequence_length=0)
    with pytest.raises(ValueError, match="height"):
        flux.edge("a red circle", num_inference_steps=1, height=40, width=64)
    with pytest.raises(ValueError, match="eta"):
        flux.edge("a red circle", num_inference_steps=1, eta=0.5)
    with pytest.raises(TypeError, match="device_pipe"):
        SplitPipeline(_pipe("flux-tiny-random"), device_pipe=_pipe("sd3-tiny-random"))
    sd3_payload = SplitPipeline(_pipe("sd3-tiny-random"), split_step=1).edge(
        "a red circle", num_inference_steps=2, max_sequence_length=8)
    with pytest.raises(PayloadError, match="sd3"):
        SplitPipeline(_pipe("flux-tiny-random")).device(sd3_payload)
    emb = SplitPipeline(_pipe("sd3-tiny-random"), split_step=1, condition="embeddings")
    payload = emb.edge("a red circle", num_inference_steps=2, max_sequence_length=8)
    broken = payload.replace(tensors={k: v for k, v in payload.tensors.items() if k != "pooled_prompt_embeds"})
    with pytest.raises(PayloadError, match="pooled_prompt_embeds"):
        emb.device(broken)
    np.testing.assert_array_equal(emb.device(Payload.from_bytes(payload.to_bytes()), output_type="np"),
                                  emb.device(payload, output_type="np"))


# ------------------------------------------------------------------------------ handoff
def test_sdxl_handoff_to_an_lcm_student():
    """SDXL teacher on the ES, an LCM-style student (own UNet with a guidance embedding, same VAE and
    text encoders) on the UE."""
    from diffusers import UNet2DConditionModel

    teacher = _pipe("sdxl-tiny-random")
    student = build_pipeline("sdxl-tiny-random", seed=0, scheduler="lcm")
    with torch.random.fork_rng():
        torch.manual_seed(9)
        student.unet = UNet2DConditionModel.from_config(
            {k: v for k, v in teacher.unet.config.items() if not k.startswith("_")} | {"time_cond_proj_dim": 16}).eval()
    assert student.unet.config.time_cond_proj_dim == 16
    assert latent_space_fingerprint(student) == latent_space_fingerprint(teacher)
    split = SplitPipeline(teacher, split_step=2, device_pipe=student, device_steps=2, generator_state="seed")
    out = split(PROMPTS[0], num_inference_steps=4, guidance_scale=5.0, generator=_gen(), output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    state = split._unpack(out.received)
    assert state.num_steps == 2 and int(state.timesteps[0]) <= out.sent.meta["next_timestep"]
    assert state.timestep_cond is not None and "add_time_ids" in state.derived
    stranger = build_pipeline("sdxl-tiny-random", seed=5, scheduler="lcm")
    with pytest.raises(PayloadError, match="VAE"):
        SplitPipeline(teacher, device_pipe=stranger, device_steps=2).device(out.sent)


def test_flux_dev_handoff_to_schnell():
    """Flux-dev-like teacher (guidance embedding, dynamic shift) -> Flux-schnell-like student."""
    dev, schnell = _pipe("flux-tiny-random"), _pipe("flux-schnell-tiny-random")
    assert latent_space_fingerprint(dev) == latent_space_fingerprint(schnell)
    split = SplitPipeline(dev, split_step=2, device_pipe=schnell, device_steps=2)
    kwargs = dict(num_inference_steps=4, height=64, width=64, max_sequence_length=8, output_type="np")
    out = split(PROMPTS[0], generator=_gen(), **kwargs)
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    state = split._unpack(out.received)
    assert state.num_steps == 2 and state.derived["guidance"] is None  # schnell: no guidance input
    assert float(state.scheduler.sigmas[0]) == pytest.approx(out.sent.meta["next_sigma"], abs=1e-6)
    payload = SplitPipeline(schnell, split_step=1).edge(PROMPTS[0], num_inference_steps=2, height=64, width=64,
                                                        max_sequence_length=8)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):  # dev's shift depends on the image size
        SplitPipeline(schnell, split_step=1, device_pipe=dev, device_steps=2).device(payload)
