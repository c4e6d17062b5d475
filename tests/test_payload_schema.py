"""The schema a SplitPipeline payload must meet on the UE: every tampered field is named, none is silent."""

import copy
import math

import numpy as np
import pytest
import torch

from splitldm import SplitPipeline, with_scheduler
from splitldm.link.payload import Payload, PayloadError
from splitldm.pipeline import payload_schema
from splitldm.pipeline.payload_schema import SETTINGS_FIELDS, apply_scheduler_state, scheduler_attributes

STEPS = 4


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def dpm(micro_pipe):
    """A DPM-Solver++ split after 2 of 4 steps (scheduler history + the generator state), and its image."""
    split = SplitPipeline(with_scheduler(micro_pipe, "dpm++"), split_step=2)
    payload = split.edge("a red circle", num_inference_steps=STEPS, generator=_gen())
    return split, payload, split.device(payload, output_type="np")


@pytest.fixture(scope="module")
def cut(micro_pipe):
    """A split inside the UNet pass of step 1 (a carry crosses)."""
    split = SplitPipeline(micro_pipe, split_step=1, split_stage=2)
    return split, split.edge("a red circle", num_inference_steps=STEPS, generator=_gen())


def _tamper(payload, path, value=None, delete=False):
    """A copy of ``payload`` with ``meta[path...]`` set to ``value`` (or deleted)."""
    meta = copy.deepcopy(payload.meta)
    node = meta
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return payload.replace(meta=meta)


def _tensors(payload, **changes):
    tensors = dict(payload.tensors)
    for name, value in changes.items():
        name = name.replace("__", ".")
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    return payload.replace(tensors=tensors, primary=[p for p in payload.primary if p in tensors])


SS = ("scheduler_state", "__dict__")
NAN = float("nan")

#: (id, how the metadata is tampered, what the error must name). Every case must raise PayloadError.
META_CASES = [
    ("kind", ("kind",), "splitldm.other", "SplitPipeline"),
    ("family", ("family",), "sd3", "sd3"),
    ("settings-list", ("settings",), ["a red circle"], "settings"),
    ("settings-missing-field", ("settings", "height"), "DELETE", "settings.*height"),
    ("settings-unknown-field", ("settings", "seed"), 7, "settings.*seed"),
    ("prompt-not-list", ("settings", "prompt"), "a red circle", "prompt"),
    ("prompt-empty", ("settings", "prompt"), [], "prompt"),
    ("prompt-not-str", ("settings", "prompt"), [7], "prompt"),
    ("negative-length", ("settings", "negative_prompt"), ["a", "b"], "negative_prompt"),
    ("steps-float", ("settings", "num_inference_steps"), 4.0, "num_inference_steps"),
    ("steps-huge", ("settings", "num_inference_steps"), 10 ** 9, "num_inference_steps"),
    ("steps-zero", ("settings", "num_inference_steps"), 0, "num_inference_steps"),
    ("guidance-nan", ("settings", "guidance_scale"), NAN, "guidance_scale"),
    ("guidance-str", ("settings", "guidance_scale"), "7.5", "guidance_scale"),
    ("eta-inf", ("settings", "eta"), float("inf"), "eta"),
    ("images-zero", ("settings", "num_images_per_prompt"), 0, "num_images_per_prompt"),
    ("images-huge", ("settings", "num_images_per_prompt"), 10 ** 6, "num_images_per_prompt"),
    ("height-zero", ("settings", "height"), 0, "height"),
    ("height-odd", ("settings", "height"), 33, "height"),
    ("height-float", ("settings", "height"), 32.0, "height"),
    ("width-huge", ("settings", "width"), 10 ** 9, "width"),
    ("options-list", ("settings", "options"), [], "options"),
    ("options-unknown", ("settings", "options"), {"true_cfg_scale": 2.0}, "options"),
    ("step-float", ("step",), 2.0, "step"),
    ("step-negative", ("step",), -1, "step"),
    ("step-beyond-schedule", ("step",), STEPS + 1, "step"),
    ("step-skipped", ("step",), 3, "next_timestep|_step_index"),
    ("step-bool", ("step",), True, "step"),
    ("num-steps-zero", ("num_steps",), 0, "num_steps"),
    ("num-steps-str", ("num_steps",), "4", "num_steps"),
    ("num-steps-huge", ("num_steps",), 10 ** 12, "num_steps"),
    ("next-timestep-finished", ("next_timestep",), -1, "next_timestep"),
    ("next-timestep-nan", ("next_timestep",), NAN, "next_timestep"),
    ("next-timestep-wrong", ("next_timestep",), 123, "next_timestep"),
    ("next-timestep-str", ("next_timestep",), "501", "next_timestep"),
    ("next-sigma", ("next_sigma",), 2.0, "next_sigma"),
    ("condition", ("condition",), "image", "condition"),
    ("dtype", ("dtype",), "complex64", "dtype"),
    ("model-not-str", ("model",), 12345, "model"),
    ("scheduler-not-str", ("scheduler",), ["DPMSolverMultistepScheduler"], "scheduler"),
    ("scheduler-state-list", ("scheduler_state",), [], "scheduler_state"),
    ("scheduler-state-flat", ("scheduler_state",), {"_step_index": 2}, "scheduler_state"),
    ("scheduler-attr-unknown", SS + ("steal",), 1, "steal"),
    ("scheduler-attr-dunder", SS + ("__class__",), 1, "__class__"),
    ("scheduler-attr-method", SS + ("step",), 1, "'step'"),
    ("scheduler-attr-config", SS + ("config",), {"__dict__": {}}, "config"),
    ("scheduler-schedule", SS + ("num_inference_steps",), 3, "num_inference_steps"),
    ("scheduler-order-negative", SS + ("lower_order_nums",), -1, "lower_order_nums"),
    ("scheduler-order-nan", SS + ("lower_order_nums",), NAN, "lower_order_nums"),
    ("scheduler-order-float", SS + ("lower_order_nums",), 1.5, "lower_order_nums"),
    ("scheduler-order-huge", SS + ("lower_order_nums",), 10 ** 6, "lower_order_nums"),
    ("scheduler-order-beyond-history", SS + ("lower_order_nums",), 3, "lower_order_nums"),
    ("scheduler-step-index", SS + ("_step_index",), 3, "_step_index"),
    ("scheduler-step-index-str", SS + ("_step_index",), "2", "_step_index"),
    ("scheduler-missing-tensor", SS + ("model_outputs", "__seq__", 0), {"__tensor__": "nowhere"}, "nowhere"),
    ("scheduler-bad-marker", SS + ("model_outputs",), {"__seq__": 5, "tuple": False}, "model_outputs"),
    ("scheduler-history-order", SS + ("model_outputs", "__seq__", 1), None, "model_outputs"),
    ("scheduler-deep", SS + ("model_outputs",), {"__seq__": [[[[[[[[[[1]]]]]]]]]], "tuple": False}, "model_outputs"),
    ("generator-list", ("generator",), [], "generator"),
    ("generator-devices-count", ("generator", "devices"), ["cpu", "cpu"], "devices"),
    ("generator-device-name", ("generator", "devices"), ["tpu:0"], "devices"),
    ("generator-device-unavailable", ("generator", "devices"), ["cuda:7"], "devices"),
    ("generator-list-flag", ("generator", "list"), "no", "list"),
    ("generator-seeds", ("generator", "seeds"), [-5], "seeds"),
    ("generator-seeds-huge", ("generator", "seeds"), [2 ** 64], "seeds"),
    ("cond-dtypes", ("cond_dtypes",), {"latents": "int64"}, "cond_dtypes"),
    ("cond-dtypes-module", ("cond_dtypes",), {"prompt_embeds": "nn"}, "cond_dtypes"),
] + [(f"missing-{key}", (key,), "DELETE", f"{key}|incomplete") for key in payload_schema._REQUIRED]


@pytest.mark.parametrize("path, value, match", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_tampered_metadata_is_named(dpm, path, value, match):
    split, payload, _ = dpm
    bad = _tamper(payload, path, delete=value == "DELETE") if value == "DELETE" else _tamper(payload, path, value)
    with pytest.raises(PayloadError, match=match):
        split.device(bad, output_type="np")


def _state():
    return torch.Generator().manual_seed(1).get_state()


TENSOR_CASES = [
    ("latents-nan", {"latents": "nan"}, "NaN"),
    ("latents-int", {"latents": "int"}, "latents"),
    ("latents-complex", {"latents": "complex"}, "latents"),
    ("latents-missing", {"latents": None}, "latents"),
    ("generator-missing", {"generator.0": None}, "generator.0"),
    ("generator-short", {"generator.0": _state()[:-1]}, "generator.0"),
    ("generator-float", {"generator.0": _state().float()}, "generator.0"),
    ("generator-garbage", {"generator.0": torch.zeros(5056, dtype=torch.uint8)}, "generator.0"),
    ("history-nan", {"scheduler.model_outputs.1": "nan"}, "model_outputs"),
    ("history-shape", {"scheduler.model_outputs.1": torch.zeros(1, 4, 2, 2)}, "model_outputs"),
    ("history-dtype", {"scheduler.model_outputs.1": torch.zeros(1, 4, 4, 4, dtype=torch.complex64)}, "model_outputs"),
]


@pytest.mark.parametrize("changes, match", [c[1:] for c in TENSOR_CASES], ids=[c[0] for c in TENSOR_CASES])
def test_tampered_tensors_are_named(dpm, changes, match):
    split, payload, _ = dpm
    tensors = dict(payload.tensors)
    for name, value in changes.items():
        if value is None:
            tensors.pop(name)
        elif value == "nan":
            tensors[name] = tensors[name].clone()
            tensors[name].view(-1)[0] = float("nan")
        elif value == "int":
            tensors[name] = tensors[name].round().to(torch.int32)
        elif value == "complex":
            tensors[name] = tensors[name].to(torch.complex64)
        else:
            tensors[name] = value
    with pytest.raises(PayloadError, match=match):
        split.device(payload.replace(tensors=tensors, primary=[p for p in payload.primary if p in tensors]),
                     output_type="np")


def test_schedule_arrays_cannot_be_replaced(dpm):
    """A payload naming the schedule itself (timesteps, sigmas) is refused, even with the right shape."""
    split, payload, _ = dpm
    for name in ("timesteps", "sigmas", "alphas_cumprod"):
        fresh = getattr(split.pipe.scheduler, name)
        fresh = fresh if isinstance(fresh, torch.Tensor) else torch.as_tensor(fresh)
        bad = _tamper(payload, SS + (name,), {"__tensor__": f"scheduler.{name}"})
        bad = bad.replace(tensors={**bad.tensors, f"scheduler.{name}": (fresh.float() + 1).to(fresh.dtype)})
        with pytest.raises(PayloadError, match=name):
            split.device(bad, output_type="np")


CARRY_CASES = [
    ("carry-list", ("carry",), [], "carry"),
    ("carry-stage-zero", ("carry", "stage"), 0, "stage"),
    ("carry-stage-beyond", ("carry", "stage"), 99, "stage"),
    ("carry-stage-float", ("carry", "stage"), 2.0, "stage"),
    ("carry-layout-field", ("carry", "layout", "evil"), 1, "evil"),
    ("carry-num-skips", ("carry", "layout", "num_skips"), -1, "num_skips"),
    ("carry-flag", ("carry", "layout", "last_skip_is_hidden"), "yes", "last_skip_is_hidden"),
]


@pytest.mark.parametrize("path, value, match", [c[1:] for c in CARRY_CASES], ids=[c[0] for c in CARRY_CASES])
def test_tampered_carry_is_named(cut, path, value, match):
    split, payload = cut
    with pytest.raises(PayloadError, match=match):
        split.device(_tamper(payload, path, value), output_type="np")


def test_carry_without_hidden_state(cut):
    split, payload = cut
    with pytest.raises(PayloadError, match="carry.hidden"):
        split.device(_tensors(payload, carry__hidden=None), output_type="np")


def test_untampered_payloads_still_give_the_image(dpm, cut, micro_pipe):
    split, payload, image = dpm
    again = split.device(Payload.from_bytes(payload.to_bytes()), output_type="np")
    np.testing.assert_array_equal(again, image)
    split_cut, cut_payload = cut
    reference = micro_pipe("a red circle", num_inference_steps=STEPS, generator=_gen(), output_type="np").images
    np.testing.assert_array_equal(split_cut.device(cut_payload, output_type="np"), reference)


def test_handoff_refuses_a_finished_looking_next_timestep(micro_pipe):
    """With a student on the UE, next_timestep = -1 would skip every step: it must match the step."""
    from splitldm import build_pipeline

    student = build_pipeline("micro-random", seed=0, scheduler="lcm")
    split = SplitPipeline(micro_pipe, split_step=2, device_pipe=student, device_steps=2, generator_state="seed")
    payload = split.edge("a red circle", num_inference_steps=STEPS, generator=_gen())
    with pytest.raises(PayloadError, match="next_timestep"):
        split.device(_tamper(payload, ("next_timestep",), -1), output_type="np")
    with pytest.raises(PayloadError, match="next_timestep"):
        split.device(_tamper(payload, ("next_timestep",), 10 ** 6), output_type="np")
    with pytest.raises(PayloadError, match="step"):
        split.device(_tamper(payload, ("step",), STEPS), output_type="np")  # finished, but next_timestep says not


# ------------------------------------------------------------------ the scheduler whitelist
def test_scheduler_whitelist_comes_from_the_class():
    import diffusers

    stepping, setup = scheduler_attributes(diffusers.DPMSolverMultistepScheduler)
    assert {"_step_index", "model_outputs", "lower_order_nums"} <= stepping
    assert {"timesteps", "sigmas"} <= setup and not stepping & setup
    stepping, _ = scheduler_attributes(diffusers.PNDMScheduler)
    assert {"counter", "ets", "cur_sample"} <= stepping
    scheduler = diffusers.EulerDiscreteScheduler()
    scheduler.set_timesteps(4)
    with pytest.raises(PayloadError, match="'step'"):
        apply_scheduler_state(scheduler, {"step": 1})
    with pytest.raises(PayloadError, match="_step_index"):
        apply_scheduler_state(scheduler, {"_step_index": 99})
    with pytest.raises(PayloadError, match="is_scale_input_called"):
        apply_scheduler_state(scheduler, {"is_scale_input_called": 3})
    assert apply_scheduler_state(scheduler, {"_step_index": 2, "is_scale_input_called": True})._step_index == 2


def test_settings_schema_matches_generation_settings():
    import dataclasses

    from splitldm.pipeline.sampling import GenerationSettings

    assert tuple(f.name for f in dataclasses.fields(GenerationSettings)) == SETTINGS_FIELDS
    assert math.isfinite(payload_schema.MAX_BATCH) and payload_schema.MAX_SIDE >= 1024
