"""SplitPipeline: bit-exact equivalence with the unsplit diffusers pipeline, and its errors."""

import numpy as np
import pytest
import torch

from splitldm import Link, SplitPipeline, build_pipeline, with_scheduler
from splitldm.link.stack import SerializeBytes
from splitldm.link.payload import Payload, PayloadError

STEPS = 4
SCHEDULERS = ["ddim", "euler", "dpm++", "lcm", "euler-a", "pndm"]


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


def _reference(pipe, prompts, cfg):
    return pipe(prompts, num_inference_steps=STEPS, guidance_scale=cfg, generator=_gen(), output_type="np").images


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("cfg", [1.0, 5.0], ids=["cfg-off", "cfg-on"])
@pytest.mark.parametrize("batch", [1, 3])
def test_step_split_equals_pipeline_for_every_k(micro_pipe, scheduler, cfg, batch):
    pipe = with_scheduler(micro_pipe, scheduler)
    prompts = ["a red circle", "a small blue square at the top left", "a green ring"][:batch]
    reference = _reference(pipe, prompts, cfg)
    for k in range(STEPS + 1):
        split = SplitPipeline(pipe, split_step=k, link=Link([SerializeBytes()]))
        out = split(prompts, num_inference_steps=STEPS, guidance_scale=cfg, generator=_gen(), output_type="np")
        assert out.images.shape == (batch, 32, 32, 3)
        np.testing.assert_array_equal(out.images, reference, err_msg=f"{scheduler} k={k}")


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "lcm"])
@pytest.mark.parametrize("cfg", [1.0, 5.0], ids=["cfg-off", "cfg-on"])
def test_cut_inside_unet_pass_equals_pipeline(micro_pipe, scheduler, cfg):
    pipe = with_scheduler(micro_pipe, scheduler)
    prompts = ["a red circle", "a green ring"]
    reference = _reference(pipe, prompts, cfg)
    n_stages = len(SplitPipeline(pipe).chain)
    for k in (0, 2):
        for stage in range(1, n_stages):
            split = SplitPipeline(pipe, split_step=k, split_stage=stage, link=Link([SerializeBytes()]))
            out = split(prompts, num_inference_steps=STEPS, guidance_scale=cfg, generator=_gen(), output_type="np")
            np.testing.assert_array_equal(out.images, reference, err_msg=f"{scheduler} k={k} stage={stage}")
            assert any(name.startswith("carry.") for name in out.sent.tensors)


def test_tiny_architecture_split_equals_pipeline(tiny_pipe):
    """The architecture of the shipped model, with a cut inside the pass and one between steps."""
    pipe = with_scheduler(tiny_pipe, "dpm++")
    reference = _reference(pipe, ["a red circle"], 4.0)
    for k, stage in ((1, 4),):
        out = SplitPipeline(pipe, split_step=k, split_stage=stage)(
            ["a red circle"], num_inference_steps=STEPS, guidance_scale=4.0, generator=_gen(), output_type="np")
        np.testing.assert_array_equal(out.images, reference)


def test_embeddings_condition_and_pil_output(micro_pipe):
    ref = micro_pipe("a red circle", num_inference_steps=STEPS, generator=_gen(), output_type="pil").images[0]
    split = SplitPipeline(micro_pipe, split_step=2, condition="embeddings")
    payload = split.edge("a red circle", num_inference_steps=STEPS, generator=_gen())
    assert "prompt_embeds" in payload.tensors and payload.meta["settings"]["prompt"] == [""]
    image = split.device(Payload.from_bytes(payload.to_bytes()))[0]
    assert np.array_equal(np.asarray(image), np.asarray(ref))
    # Sending embeddings costs more than sending the prompt text.
    text_split = SplitPipeline(micro_pipe, split_step=2, condition="prompt")
    assert text_split.edge("a red circle", num_inference_steps=STEPS, generator=_gen()).num_bits() < payload.num_bits()


def test_generator_list_and_num_images_per_prompt(micro_pipe):
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)]  # noqa: E731
    kwargs = dict(num_inference_steps=STEPS, num_images_per_prompt=2, guidance_scale=3.0, output_type="np")
    pipe = with_scheduler(micro_pipe, "euler-a")
    ref = pipe(["a red circle", "a blue ring"], generator=gens(), **kwargs).images
    out = SplitPipeline(pipe, split_step=1)(["a red circle", "a blue ring"], generator=gens(), **kwargs)
    np.testing.assert_array_equal(out.images, ref)


def test_payload_accounts_scheduler_history_and_generator(micro_pipe):
    pipe = with_scheduler(micro_pipe, "dpm++")
    payload = SplitPipeline(pipe, split_step=2).edge("a red circle", num_inference_steps=STEPS, generator=_gen())
    # DPM-Solver++ (2nd order) needs its previous model output on the UE: it crosses and is counted.
    assert any(name.startswith("scheduler.model_outputs") for name in payload.tensors)
    assert "generator.0" in payload.tensors
    assert payload.primary == ("latents",)
    assert payload.num_bits() > payload.tensor_bits(["latents"]) == 4 * 4 * 4 * 32


def test_split_does_not_mutate_user_scheduler(micro_pipe):
    pipe = with_scheduler(micro_pipe, "dpm++")
    before = dict(vars(pipe.scheduler))
    SplitPipeline(pipe, split_step=2)("a red circle", num_inference_steps=STEPS, generator=_gen(), output_type="np")
    assert vars(pipe.scheduler).keys() == before.keys()
    assert pipe.scheduler.num_inference_steps is None


# ----------------------------------------------------------------------------- bad input
def test_bad_split_arguments(micro_pipe):
    with pytest.raises(ValueError, match="split_step"):
        SplitPipeline(micro_pipe, split_step=-1)
    with pytest.raises(ValueError, match="split_stage"):
        SplitPipeline(micro_pipe, split_step=1, split_stage=0)
    with pytest.raises(ValueError, match="split_stage"):
        SplitPipeline(micro_pipe, split_step=1, split_stage=99)
    with pytest.raises(ValueError, match="condition"):
        SplitPipeline(micro_pipe, condition="telepathy")
    with pytest.raises(TypeError, match="pipe"):
        SplitPipeline(micro_pipe.unet)
    with pytest.raises(TypeError, match="link"):
        SplitPipeline(micro_pipe, link=[SerializeBytes()])
    split = SplitPipeline(micro_pipe, split_step=STEPS + 1)
    with pytest.raises(ValueError, match="split_step"):
        split.edge("a red circle", num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="split_step"):
        SplitPipeline(micro_pipe, split_step=STEPS, split_stage=2).edge("a red circle", num_inference_steps=STEPS)


def test_bad_generation_arguments(micro_pipe):
    split = SplitPipeline(micro_pipe, split_step=1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        split.edge("a red circle", num_inference_steps=0)
    with pytest.raises(ValueError, match="prompt"):
        split.edge([], num_inference_steps=2)
    with pytest.raises(TypeError, match="prompt"):
        split.edge(3, num_inference_steps=2)
    with pytest.raises(ValueError, match="negative_prompt"):
        split.edge(["a", "b", "c"], negative_prompt=["x", "y"], num_inference_steps=2)
    with pytest.raises(ValueError, match="generator"):
        split.edge(["a red circle", "a ring"], generator=[_gen()], num_inference_steps=2)
    with pytest.raises(ValueError, match="height"):
        split.edge("a red circle", height=30, num_inference_steps=2)
    with pytest.raises(ValueError, match="latents"):
        split.edge("a red circle", latents=torch.zeros(1, 4, 5, 5), num_inference_steps=2)
    with pytest.raises(ValueError, match="guidance_scale"):
        split.edge("a red circle", guidance_scale=float("nan"), num_inference_steps=2)


def test_payload_from_other_model_or_scheduler_is_rejected(micro_pipe):
    payload = SplitPipeline(micro_pipe, split_step=1).edge("a red circle", num_inference_steps=STEPS, generator=_gen())
    other = build_pipeline("micro-random", seed=123)
    with pytest.raises(PayloadError, match="different model"):
        SplitPipeline(other).device(payload)
    with pytest.raises(PayloadError, match="scheduler"):
        SplitPipeline(with_scheduler(micro_pipe, "euler")).device(payload)
    with pytest.raises(TypeError, match="payload"):
        SplitPipeline(micro_pipe).device(payload.to_bytes())


def test_mismatched_batch_and_non_finite_payload(micro_pipe):
    split = SplitPipeline(micro_pipe, split_step=1)
    payload = split.edge(["a red circle", "a ring"], num_inference_steps=STEPS, generator=_gen())
    cut = payload.replace(tensors=dict(payload.tensors, latents=payload.tensors["latents"][:1]))
    with pytest.raises(PayloadError, match="batch"):
        split.device(cut)
    nan = payload.tensors["latents"].clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(PayloadError, match="NaN"):
        split.device(payload.replace(tensors=dict(payload.tensors, latents=nan)))


def test_corrupted_payload_bytes(micro_pipe):
    data = SplitPipeline(micro_pipe, split_step=1).edge("a red circle", num_inference_steps=2).to_bytes()
    for broken in (data[:-7], b"\x00" * 16, data[:8] + b"X" + data[9:], data[:8] + b"{}" + data[10:]):
        with pytest.raises(PayloadError, match="data"):
            Payload.from_bytes(broken)
    with pytest.raises(TypeError, match="data"):
        Payload.from_bytes("not bytes")


def test_generator_state_modes(micro_pipe):
    pipe = with_scheduler(micro_pipe, "euler-a")  # ancestral: the UE draws noise
    kwargs = dict(num_inference_steps=STEPS, output_type="np")
    full = SplitPipeline(pipe, split_step=2, generator_state="full")
    seed = SplitPipeline(pipe, split_step=2, generator_state="seed")
    none = SplitPipeline(pipe, split_step=2, generator_state="none")
    p_full, p_seed, p_none = (s.edge("a red circle", num_inference_steps=STEPS, generator=_gen()) for s in (full, seed, none))
    assert p_full.num_bits() - p_seed.num_bits() > 5000 * 8  # the CPU generator state is 5,056 bytes
    assert "generator.0" not in p_seed.tensors and "generator" not in p_none.meta
    a = seed.device(p_seed, output_type="np")
    b = seed(["a red circle"], generator=_gen(), **kwargs).images
    np.testing.assert_array_equal(a, b)  # reproducible from the seed
    with pytest.raises(ValueError, match="generator_state"):
        SplitPipeline(pipe, generator_state="some")


def test_handoff_to_a_student_model(micro_pipe):
    """Dynamic diffusion: the ES runs k teacher steps, a different UE model finishes in its own steps."""
    student = build_pipeline("micro-random", seed=0, scheduler="lcm")
    student.unet = build_pipeline("micro-random", seed=9).unet  # same VAE/text encoder, another UNet
    split = SplitPipeline(micro_pipe, split_step=2, device_pipe=student, device_steps=2, generator_state="seed")
    out = split("a red circle", num_inference_steps=STEPS, generator=_gen(), output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
    state = split._unpack(out.received)
    assert state.num_steps == 2 and int(state.timesteps[0]) <= out.sent.meta["next_timestep"]
    # The plain (exact) mode refuses the other model; the handoff refuses another latent space.
    with pytest.raises(PayloadError, match="different model"):
        SplitPipeline(micro_pipe, device_pipe=student).device(out.sent)
    stranger = build_pipeline("micro-random", seed=77, scheduler="lcm")
    with pytest.raises(PayloadError, match="VAE"):
        SplitPipeline(micro_pipe, device_pipe=stranger, device_steps=2).device(out.sent)
    with pytest.raises(ValueError, match="device_steps"):
        SplitPipeline(micro_pipe, device_pipe=student, device_steps=0)
    with pytest.raises(ValueError, match="device_pipe"):
        SplitPipeline(micro_pipe, device_pipe=with_scheduler(student, "ddim"), device_steps=2)
    with pytest.raises(ValueError, match="split_stage"):
        SplitPipeline(micro_pipe, split_stage=2, device_pipe=student, device_steps=2)


def test_same_model_loaded_from_two_folders_is_accepted(tmp_path, micro_pipe):
    """ES and UE load the same weights from different paths: the fingerprint ignores the path."""
    from splitldm import load_pipeline

    micro_pipe.save_pretrained(tmp_path / "es", safe_serialization=True)
    micro_pipe.save_pretrained(tmp_path / "ue", safe_serialization=True)
    es, ue = load_pipeline(tmp_path / "es"), load_pipeline(tmp_path / "ue")
    ref = es("a red circle", num_inference_steps=STEPS, generator=_gen(), output_type="np").images
    out = SplitPipeline(es, split_step=2, device_pipe=ue)("a red circle", num_inference_steps=STEPS,
                                                          generator=_gen(), output_type="np")
    np.testing.assert_array_equal(out.images, ref)
