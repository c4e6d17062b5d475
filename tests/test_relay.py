"""`SplitPipeline.relay`: a middle node of a multi-hop chain (LEARN-GDM), in process.

ES(0..a) -> relay(a..b) -> relay(b..c) -> device, each payload crossing as Payload v2 bytes, gives
the unsplit pipeline's images bit for bit, for every 0 <= a <= b <= c <= T, with deterministic and
ancestral schedulers (the generator state rides along), a cut inside a pass, both condition modes,
and the DiT families (PixArt, Flux).
"""

import itertools

import numpy as np
import pytest
import torch

from splitldm import SplitPipeline, build_pipeline, load_pipeline, with_scheduler
from splitldm.link.payload import Payload, PayloadError

STEPS = 4


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


def _wire(payload: Payload) -> Payload:
    return Payload.from_bytes(payload.to_bytes())


def _chain(pipe, stops, prompts, condition="prompt", **kwargs):
    """ES runs [0, stops[0]), one relay per further stop, the device the rest: images (np)."""
    split = SplitPipeline(pipe, split_step=stops[0], condition=condition)
    payload = _wire(split.edge(prompts, generator=_gen(), **kwargs))
    for stop in stops[1:]:
        payload = _wire(split.relay(payload, stop))
        assert payload.meta["step"] == stop
    return split.device(payload, output_type="np")


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


def test_every_three_hop_chain_equals_the_pipeline(micro_pipe, tiny):
    prompts = ["a red circle", "a blue square"]
    pipe = with_scheduler(micro_pipe, "ddim")
    steps = 2
    reference = pipe(prompts, num_inference_steps=steps, generator=_gen(), output_type="np").images
    chains = list(itertools.combinations_with_replacement(range(steps + 1), 3))
    assert len(chains) == 10
    for stops in chains:
        out = _chain(pipe, stops, prompts, num_inference_steps=steps)
        assert np.array_equal(out, reference), stops
    # the shipped model (zoo name "tiny"), one uneven chain
    reference = tiny(prompts[:1], num_inference_steps=STEPS, generator=_gen(), output_type="np").images
    assert np.array_equal(_chain(tiny, (1, 3, 3), prompts[:1], num_inference_steps=STEPS), reference)


@pytest.mark.parametrize("scheduler", ["euler-a", "dpm++"])
def test_ancestral_and_multistep_schedulers_carry_their_state_across_hops(micro_pipe, scheduler):
    pipe = with_scheduler(micro_pipe, scheduler)
    reference = pipe(["a green ring"], num_inference_steps=STEPS, guidance_scale=5.0, generator=_gen(),
                     output_type="np").images
    out = _chain(pipe, (1, 2, 3), ["a green ring"], num_inference_steps=STEPS, guidance_scale=5.0)
    assert np.array_equal(out, reference), scheduler


def test_embeddings_condition_and_a_cut_inside_the_pass(micro_pipe):
    pipe = with_scheduler(micro_pipe, "ddim")
    reference = pipe(["a red circle"], num_inference_steps=STEPS, generator=_gen(), output_type="np").images
    assert np.array_equal(_chain(pipe, (1, 3), ["a red circle"], condition="embeddings",
                                 num_inference_steps=STEPS), reference)
    split = SplitPipeline(pipe, split_step=1)
    payload = _wire(split.relay(_wire(split.edge(["a red circle"], num_inference_steps=STEPS, generator=_gen())),
                                2, stop_stage=2))
    assert payload.meta["carry"]["stage"] == 2
    payload = _wire(split.relay(payload, 3))  # finishes the interrupted pass first
    assert "carry" not in payload.meta
    assert np.array_equal(split.device(payload, output_type="np"), reference)


@pytest.mark.parametrize("name,kwargs", [
    ("pixart-tiny-random", dict(max_sequence_length=8, use_resolution_binning=False, height=64, width=64)),
    ("flux-tiny-random", dict(max_sequence_length=8, height=64, width=64, guidance_scale=3.5)),
])
def test_dit_families_relay_exactly(name, kwargs):
    pipe = build_pipeline(name, seed=0)
    reference = pipe(["a red circle"], num_inference_steps=2, generator=_gen(), output_type="np", **kwargs).images
    assert np.array_equal(_chain(pipe, (1, 1, 2), ["a red circle"], num_inference_steps=2, **kwargs), reference)


def test_relay_rejects_bad_stops_and_foreign_payloads(micro_pipe, tiny):
    split = SplitPipeline(micro_pipe, split_step=2)
    payload = split.edge(["a red circle"], num_inference_steps=STEPS, generator=_gen())
    with pytest.raises(ValueError, match=r"stop: must be an int in \[2, 4\]"):
        split.relay(payload, 1)
    with pytest.raises(ValueError, match=r"stop: must be an int in \[2, 4\]"):
        split.relay(payload, 5)
    with pytest.raises(ValueError, match="stop: expected an int"):
        split.relay(payload, 3.0)
    with pytest.raises(ValueError, match="stop_stage: must be None or an int"):
        split.relay(payload, 3, stop_stage=0)
    with pytest.raises(TypeError, match="payload: expected a Payload"):
        split.relay(payload.to_bytes(), 3)
    with pytest.raises(PayloadError, match="different model"):
        SplitPipeline(tiny).relay(payload, 3)
    with pytest.raises(ValueError, match="device_steps"):
        SplitPipeline(micro_pipe, device_pipe=with_scheduler(micro_pipe, "lcm"), device_steps=2).relay(payload, 3)
