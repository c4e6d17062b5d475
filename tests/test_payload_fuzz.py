"""Property-based fuzzing (Hypothesis) of every decoder of untrusted bytes in the library but the network
wire format (tests/test_wire.py): `Payload.from_bytes`, `MergePlan.decode`, `TokenMerge.receive` and
`SplitPipeline.device`. Bounded (derandomised examples, no deadline) so the file runs in well under a minute.

Property everywhere: bad input raises the documented error (`PayloadError` / ValueError / TypeError,
naming what failed), never another exception from inside, and is never decoded into something different.
"""

import copy
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitldm import SplitPipeline, with_scheduler
from splitldm.link.merge import TokenMerge
from splitldm.link.payload import CHECKSUM_BITS, FORMAT_VERSION, Payload, PayloadError, payload_equal
from splitldm.tome import INDEX_CHECK_BITS, MergePlan, plan_merge

#: One bounded profile for every property here: fixed examples (reproducible), no per-example deadline.
settings.register_profile("splitldm-fuzz", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ = settings.get_profile("splitldm-fuzz")

#: The rows of the docs table (issue 12 item 6) these tests cover: (entry point, bad input, what the user gets).
CASES = [
    ("Payload.from_bytes", "random bytes, any length", "PayloadError 'data: ...' (crc32 or too short)"),
    ("Payload.from_bytes", "truncated at any length (empty, inside the length field, header, data, check)",
     "PayloadError 'data: ...'"),
    ("Payload.from_bytes", "1 to 16 flipped bits anywhere (header, metadata, tensor data, check)",
     "PayloadError 'data: crc32 check failed'"),
    ("Payload.from_bytes", "huge declared header length (up to 2**64 - 1), with a valid check",
     "PayloadError 'data: header length ... exceeds'"),
    ("Payload.from_bytes", "valid JSON of the wrong shape (list header, no metadata, meta a list, primary "
     "not names, tensor entries malformed), with a valid check", "PayloadError naming header/meta/primary"),
    ("Payload.from_bytes", "deeply nested JSON header", "PayloadError 'data: header is not valid JSON'"),
    ("Payload.from_bytes", "payload of format version 1 or any other version", "PayloadError 'data: payload format "
     "version ... is not supported'"),
    ("Payload.from_bytes", "not bytes (str, list)", "TypeError 'data: expected bytes'"),
    ("MergePlan.decode", "1 to 8 flipped bits in an index map", "ValueError 'data: index map check (CRC-16) failed'"),
    ("MergePlan.decode", "random bytes of the right length", "ValueError naming data, or a valid map that "
     "re-encodes to the same bytes (never a different plan)"),
    ("MergePlan.decode", "truncated or extended index map", "ValueError 'data: expected N bytes'"),
    ("MergePlan.decode", "r, size, window, batch out of range or of the wrong type", "ValueError/TypeError naming r, "
     "size, sx/sy, batch_size, random"),
    ("TokenMerge.receive", "flipped bit in the index map", "ValueError naming '<name>.merge_index'"),
    ("TokenMerge.receive", "merge record field of the wrong type or range (size, r, sx, sy, random, batch, "
     "side_info_bits, form)", "ValueError/TypeError naming payload.meta['token_merge'][name][field]"),
    ("SplitPipeline.device", "tampered metadata (list instead of dict, missing keys, float/negative/beyond-schedule "
     "step, NaN/negative scheduler fields, unknown scheduler attributes, finished-looking next_timestep, "
     "settings of another family or out of range, generator state of the wrong size)",
     "PayloadError naming meta[...] field (tests/test_payload_schema.py lists each)"),
    ("SplitPipeline.device", "tampered tensors (NaN/int/complex latents, scheduler history of the wrong shape, "
     "generator state short/garbage/missing)", "PayloadError naming tensors[...]"),
    ("SplitPipeline.device", "any metadata leaf replaced by a value of another type or out of range",
     "PayloadError, or (for a harmless value) the untampered image exactly"),
]


def _payload(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Payload(
        tensors={"latents": torch.randn(2, 4, 8, 8, generator=g), "ids": torch.arange(5, dtype=torch.int16),
                 "gen": torch.zeros(3, dtype=torch.uint8), "half": torch.randn(4, generator=g).half()},
        meta={"step": 3, "prompt": ["a red circle"], "nested": {"x": [1, 2.5, None]}},
        primary=("latents",),
    )


DATA = _payload().to_bytes()


def _seal(body: bytes) -> bytes:
    """``body`` with a valid CRC32: what only a deliberate forger (not a channel) produces."""
    return body + struct.pack("<I", zlib.crc32(body))


def _flip(data: bytes, bits) -> bytes:
    out = bytearray(data)
    for b in bits:
        out[b // 8] ^= 1 << (b % 8)
    return bytes(out)


# ------------------------------------------------------------------ Payload.from_bytes
def test_checksum_costs_32_bits():
    p = _payload()
    assert CHECKSUM_BITS == 32 and FORMAT_VERSION == 2
    assert p.num_bits() == 8 * len(DATA)
    assert len(DATA) - 4 == len(p.to_bytes()[:-4]) and zlib.crc32(DATA[:-4]) == struct.unpack("<I", DATA[-4:])[0]


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused(data):
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(data)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 11, 12, 16, 100, len(DATA) // 2, len(DATA) - 5, len(DATA) - 4,
                               len(DATA) - 1], ids=lambda n: f"len{n}")
def test_truncation_classes_are_refused(n):
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(DATA[:n])


@FUZZ
@given(st.integers(0, len(DATA) - 1))
def test_any_truncation_is_refused(n):
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(DATA[:n])


@FUZZ
@given(st.integers(0, 8 * len(DATA) - 1))
def test_any_single_bit_flip_is_refused(bit):
    with pytest.raises(PayloadError, match="crc32"):
        Payload.from_bytes(_flip(DATA, [bit]))


@FUZZ
@given(st.sets(st.integers(0, 8 * len(DATA) - 1), min_size=2, max_size=16))
def test_multiple_bit_flips_are_refused(bits):
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(_flip(DATA, bits))


def test_every_header_bit_flip_is_refused():
    """Exhaustive over the length field and the JSON header (where one flip turned step 2 into 3)."""
    (header_len,) = struct.unpack("<Q", DATA[:8])
    for bit in range(8 * (8 + header_len)):
        with pytest.raises(PayloadError, match="crc32"):
            Payload.from_bytes(_flip(DATA, [bit]))


@FUZZ
@given(st.one_of(st.integers(len(DATA), 2 ** 64 - 1), st.sampled_from([2 ** 64 - 1, 2 ** 63, 2 ** 32, 10 ** 9])))
def test_huge_declared_header_length_is_refused(length):
    forged = _seal(struct.pack("<Q", length) + DATA[8:-4])
    with pytest.raises(PayloadError, match="header length"):
        Payload.from_bytes(forged)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


def _forge(header) -> bytes:
    text = json.dumps(header).encode()
    return _seal(struct.pack("<Q", len(text)) + text)


@FUZZ
@given(_json)
def test_any_json_header_is_refused(header):
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(_forge(header))


@FUZZ
@given(_json)
def test_any_json_splitldm_record_is_refused(info):
    header = {"__metadata__": {"splitldm": json.dumps(info)}}
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(_forge(header))


@FUZZ
@given(st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "U8", "I64", "X", 3]),
                              "shape": st.lists(st.integers(-2, 2 ** 40), max_size=3),
                              "data_offsets": st.lists(st.integers(-1, 2 ** 40), max_size=3)}))
def test_malformed_tensor_entries_are_refused(entry):
    info = {"version": FORMAT_VERSION, "meta": {}, "primary": []}
    header = {"__metadata__": {"splitldm": json.dumps(info)}, "x": entry}
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(_forge(header))


@pytest.mark.parametrize("info, match", [
    ({"version": FORMAT_VERSION, "meta": [], "primary": []}, "meta"),
    ({"version": FORMAT_VERSION, "meta": "x", "primary": []}, "meta"),
    ({"version": FORMAT_VERSION, "meta": {}, "primary": "latents"}, "primary"),
    ({"version": FORMAT_VERSION, "meta": {}, "primary": [1]}, "primary"),
    ({"version": FORMAT_VERSION, "meta": {}, "primary": ["absent"]}, "primary"),
    ({"meta": {}, "primary": []}, "version"),
    ({"version": 3, "meta": {}, "primary": []}, "version 3"),
    ({"version": "2", "meta": {}, "primary": []}, "version"),
    ([], "splitldm"),
])
def test_wrong_shapes_of_valid_json(info, match):
    with pytest.raises(PayloadError, match=match):
        Payload.from_bytes(_forge({"__metadata__": {"splitldm": json.dumps(info)}}))


@pytest.mark.parametrize("header", [[], "x", {"__metadata__": []}, {"__metadata__": {"splitldm": 5}},
                                    {"__metadata__": {"splitldm": "{not json"}}, {"__metadata__": {}}])
def test_wrong_header_shapes(header):
    with pytest.raises(PayloadError, match="data"):
        Payload.from_bytes(_forge(header))


def test_deep_json_and_bad_utf8_are_refused():
    with pytest.raises(PayloadError, match="JSON"):
        Payload.from_bytes(_seal(struct.pack("<Q", 200_000) + b"[" * 200_000))
    with pytest.raises(PayloadError, match="JSON"):
        Payload.from_bytes(_seal(struct.pack("<Q", 4) + b"\xff\xfe{}"))


def test_other_format_versions_are_named():
    from safetensors.torch import save

    v1 = save({"a": torch.zeros(2)}, metadata={"splitldm": json.dumps({"version": 1, "meta": {}, "primary": []})})
    with pytest.raises(PayloadError, match="version 1 is not supported"):
        Payload.from_bytes(v1)
    with pytest.raises(TypeError, match="data"):
        Payload.from_bytes("not bytes")
    with pytest.raises(TypeError, match="data"):
        Payload.from_bytes([1, 2, 3])


# ------------------------------------------------------------------ MergePlan.decode
_plans = st.fixed_dictionaries({
    "h": st.integers(2, 9), "w": st.integers(2, 9), "sx": st.integers(1, 3), "sy": st.integers(1, 3),
    "ratio": st.floats(0, 0.95), "random": st.booleans(), "b": st.integers(1, 3), "seed": st.integers(0, 99)})


def _plan(spec):
    h, w = spec["h"], spec["w"]
    sx, sy = min(spec["sx"], w), min(spec["sy"], h)
    x = torch.randn(spec["b"], h * w, 3, generator=torch.Generator().manual_seed(spec["seed"]))
    g = torch.Generator().manual_seed(spec["seed"]) if spec["random"] else None
    plan = plan_merge(x, (h, w), spec["ratio"], sx=sx, sy=sy, generator=g)
    args = dict(size=(h, w), r=plan.r, sx=sx, sy=sy, random=plan.choice is not None, batch_size=spec["b"])
    return plan, args


@FUZZ
@given(_plans, st.data())
def test_merge_map_bit_flips_are_refused(spec, data):
    plan, args = _plan(spec)
    encoded = plan.encode()
    assert 8 * encoded.numel() - 7 <= plan.side_info_bits() <= 8 * encoded.numel()
    back = MergePlan.decode(encoded, **args)
    assert torch.equal(back.slot, plan.slot)
    bits = data.draw(st.sets(st.integers(0, 8 * encoded.numel() - 1), min_size=1, max_size=8))
    damaged = torch.tensor(list(_flip(bytes(encoded.numpy().tobytes()), bits)), dtype=torch.uint8)
    with pytest.raises(ValueError, match="data"):
        MergePlan.decode(damaged, **args)


@FUZZ
@given(_plans, st.data())
def test_merge_map_random_bytes_never_decode_wrongly(spec, data):
    plan, args = _plan(spec)
    n = plan.encode().numel()
    raw = data.draw(st.binary(min_size=n, max_size=n))
    candidate = torch.tensor(list(raw), dtype=torch.uint8)
    try:
        back = MergePlan.decode(candidate, **args)
    except ValueError as exc:
        assert str(exc).startswith("data")
    else:  # a valid map (its CRC and structure hold): then it is exactly what those bytes say
        assert torch.equal(back.encode(), candidate)


@FUZZ
@given(_plans, st.integers(-3, 3).filter(lambda d: d != 0))
def test_merge_map_wrong_length_is_refused(spec, delta):
    plan, args = _plan(spec)
    encoded = plan.encode()
    resized = encoded[:delta] if delta < 0 else torch.cat([encoded, torch.zeros(delta, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="data"):
        MergePlan.decode(resized, **args)


@pytest.mark.parametrize("change, error, match", [
    ({"r": -1}, ValueError, "r"), ({"r": 10 ** 6}, ValueError, "r"), ({"r": 2.0}, TypeError, "r"),
    ({"r": True}, TypeError, "r"), ({"size": (0, 8)}, ValueError, "size"), ({"size": (8,)}, TypeError, "size"),
    ({"size": (2 ** 20, 2 ** 20)}, ValueError, "size"), ({"sx": 9}, ValueError, "sx"), ({"sy": 0}, ValueError, "sy"),
    ({"batch_size": 0}, ValueError, "batch_size"), ({"batch_size": 3}, ValueError, "data"),
    ({"random": 1}, TypeError, "random"), ({"random": True}, ValueError, "data"),
])
def test_merge_map_arguments_are_checked(change, error, match):
    x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(0))
    plan = plan_merge(x, (8, 8), 0.5)
    args = dict(size=(8, 8), r=plan.r, sx=2, sy=2, random=False, batch_size=2)
    with pytest.raises(error, match=match):
        MergePlan.decode(plan.encode(), **{**args, **change})
    with pytest.raises(ValueError, match="data"):
        MergePlan.decode(plan.encode().float(), **args)


def test_index_check_bits_are_counted():
    x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(0))
    plan = plan_merge(x, (8, 8), 0.5)
    assert INDEX_CHECK_BITS == 16
    assert plan.side_info_bits() == 2 * (48 + 32 * 4) + INDEX_CHECK_BITS
    assert plan.encode().numel() == (plan.side_info_bits() + 7) // 8


# ------------------------------------------------------------------ TokenMerge.receive
def _merged():
    stage = TokenMerge(0.5, use_rand=True)
    g = torch.Generator().manual_seed(0)
    p = Payload({"latents": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))}, meta={"step": 3},
                primary=("latents",))
    return stage, stage.send(p, {}, g)


STAGE, SENT = _merged()
WANT = STAGE.receive(SENT, {}, None)


@FUZZ
@given(st.sets(st.integers(0, 8 * SENT.tensors["latents.merge_index"].numel() - 1), min_size=1, max_size=4))
def test_token_merge_refuses_a_damaged_index_map(bits):
    index = SENT.tensors["latents.merge_index"]
    damaged = torch.tensor(list(_flip(bytes(index.numpy().tobytes()), bits)), dtype=torch.uint8)
    with pytest.raises(ValueError, match="merge_index"):
        STAGE.receive(SENT.replace(tensors={**SENT.tensors, "latents.merge_index": damaged}), {}, None)


_bad_values = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6), st.floats(), st.text(max_size=4),
                        st.lists(st.integers(-3, 70), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                   max_size=2))


@FUZZ
@given(st.sampled_from(["size", "r", "sx", "sy", "random", "batch", "side_info_bits", "form", "extra"]), _bad_values)
def test_token_merge_record_fields_are_checked(key, value):
    meta = copy.deepcopy(SENT.meta)
    meta["token_merge"]["latents"][key] = value
    try:
        out = STAGE.receive(SENT.replace(meta=meta), {}, None)
    except (ValueError, TypeError) as exc:
        assert "token_merge" in str(exc) or "latents" in str(exc)
    else:  # accepted only where nothing changed (the same value, or a field the receiver does not read)
        assert payload_equal(out, WANT)


@pytest.mark.parametrize("info", [[], "x", 0, {"latents": []}, {"latents": None}, {"latents": {"size": [8, 8]}}])
def test_token_merge_record_shapes(info):
    with pytest.raises(ValueError, match="token_merge"):
        STAGE.receive(SENT.replace(meta={**SENT.meta, "token_merge": info}), {}, None)


# ------------------------------------------------------------------ SplitPipeline.device
@pytest.fixture(scope="module")
def split_case(micro_pipe):
    split = SplitPipeline(with_scheduler(micro_pipe, "dpm++"), split_step=2)
    payload = split.edge("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    return split, payload, split.device(payload, output_type="np")


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))
    yield path


#: Fields whose valid values legitimately change the image (what the ES asked for, not damage).
_CONTENT = {("settings", "prompt", 0), ("settings", "guidance_scale"), ("settings", "eta"),
            ("settings", "guidance_rescale")}
_wrong = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, -1), st.integers(2 ** 31, 2 ** 70),
                   st.floats(allow_nan=True).filter(lambda f: f != int(f) if f == f and abs(f) < 1e300 else True),
                   st.text(max_size=6), st.lists(st.integers(), max_size=2), st.just({}), st.just({"__dict__": 1}))


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_device_never_silently_accepts_a_tampered_field(split_case, data):
    split, payload, image = split_case
    paths = sorted((p for p in _leaves(payload.meta) if p), key=str)
    path = data.draw(st.sampled_from(paths))
    value = data.draw(_wrong)
    meta = copy.deepcopy(payload.meta)
    node = meta
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        out = split.device(payload.replace(meta=meta), output_type="np")
    except PayloadError as exc:
        assert str(exc).startswith("payload")
    else:
        if path not in _CONTENT:
            np.testing.assert_array_equal(out, image)


@settings(FUZZ, max_examples=20)
@given(st.integers(0, 10 ** 9))
def test_device_refuses_damaged_payload_bytes(split_case, where):
    _, payload, _ = split_case
    data = payload.to_bytes()
    with pytest.raises(PayloadError, match="crc32"):
        Payload.from_bytes(_flip(data, [where % (8 * len(data))]))
