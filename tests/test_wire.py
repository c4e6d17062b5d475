"""The compact wire format: round trips, exact sizes, and clean rejection of damaged or foreign bytes."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitldm.serve.session import EdgeRequest
from splitldm.serve.wire import (SIDE_INFO_BITS, FrameHeader, FrameLayout, Handshake, RecordReader, WireError,
                                 decode_frame, encode_frame, iter_records, pack_envelope, pack_record,
                                 unpack_envelope)

HS = Handshake(family="sd", model="0" * 16, latent_space="1" * 16, scheduler="DDIMScheduler", scheduler_config="2" * 16,
               condition="prompt", dtype="float32", codec={"class": "SeedCodec", "name": "seed-codec", "fingerprint": "3" * 16,
                                                          "rho": 0.125},
               merge={"ratios": [0.0, 0.25, 0.5, 0.75], "sx": 2, "sy": 2, "use_rand": False, "similarity": "euclidean",
                      "patch": 1}, channel={"kind": "rayleigh", "csi": "mmse", "blocks": 1})
LAYOUT = FrameLayout(images=2, symbols=16, index_bits=176 * 2, gains=1)
#: a block-faded session: 8 fading blocks per image, 8 per-block gains per image in the frame's CSI
LAYOUT8 = FrameLayout(images=2, symbols=16, index_bits=176 * 2, gains=8)


def _frame(request_id=5, seed=HS.session_seed, layout=LAYOUT, header=None) -> bytes:
    g = torch.Generator().manual_seed(0)
    sym = torch.randn(2, 16, generator=g, dtype=torch.complex64)
    index = torch.randint(0, 256, (layout.index_bytes,), generator=g, dtype=torch.uint8)
    return encode_frame(header or FrameHeader(request_id, 3, 2), layout, seed, sym, torch.tensor([10.0, 10.0]),
                        torch.randn(2, layout.gains, generator=g, dtype=torch.complex64), index)


def test_handshake_round_trip_and_session():
    data = HS.to_bytes()
    assert Handshake.from_bytes(data) == HS
    assert HS.bits == 8 * len(data)
    other = Handshake(**{**HS.to_dict(), "model": "f" * 16})
    assert other.session != HS.session and len(HS.session) == 16
    with pytest.raises(WireError, match="kind"):
        Handshake.from_bytes(pack_envelope("R", HS.to_dict()))
    with pytest.raises(WireError, match="merge.ratios"):
        Handshake(**{**HS.to_dict(), "merge": {**HS.merge, "ratios": [0.1] * 9}})


def test_header_is_16_bits_and_side_info_32():
    assert SIDE_INFO_BITS == 32
    for rid, step, ratio in [(0, 0, 0), (31, 63, 7), (5, 3, 2)]:
        h = FrameHeader(rid, step, ratio)
        assert 0 <= h.pack() < 2**16 and FrameHeader.unpack(h.pack()) == h
    with pytest.raises(ValueError, match="split_step"):
        FrameHeader(0, 64, 0).pack()


def test_frame_round_trip_and_exact_size():
    data = _frame()
    assert len(data) == LAYOUT.nbytes == 4 + 44 + 2 * 16 * 8 + 2 * 4 + 2 * 8 + 4
    f = decode_frame(data, LAYOUT, HS.session_seed, request_id=5 + 32 * 7)  # low 5 bits compared
    assert f.header == FrameHeader(5, 3, 2) and f.symbols.shape == (2, 16) and f.index_map.numel() == 44
    with pytest.raises(WireError, match="request_id"):
        decode_frame(data, LAYOUT, HS.session_seed, request_id=6)
    with pytest.raises(WireError, match="crc32"):  # a frame of another session
        decode_frame(data, LAYOUT, HS.session_seed ^ 1, request_id=5)


def test_air_check_catches_a_header_with_a_recomputed_frame_check():
    import zlib

    data = bytearray(_frame())
    data[1] ^= 0x01  # ratio index bit: the frame check is recomputed, the air CRC-16 is not
    body = bytes(data[:-4])
    data[-4:] = struct.pack(">I", zlib.crc32(body, HS.session_seed))
    with pytest.raises(WireError, match="air_crc16"):
        decode_frame(bytes(data), LAYOUT, HS.session_seed, request_id=5)


FRAME = _frame()
FRAME8 = _frame(layout=LAYOUT8)


def test_block_faded_frame_carries_m_gains_per_image_and_nothing_else():
    assert len(FRAME8) == LAYOUT8.nbytes == len(FRAME) + 2 * 7 * 8  # 7 more complex64 gains per image
    f = decode_frame(FRAME8, LAYOUT8, HS.session_seed, request_id=5)
    assert f.gains.shape == (2, 8) and f.air_bits(LAYOUT8)["side_info_bits"] == SIDE_INFO_BITS == 32
    with pytest.raises(WireError, match="length"):  # a UE expecting one gain per image refuses it
        decode_frame(FRAME8, LAYOUT, HS.session_seed, request_id=5)
    with pytest.raises(WireError, match="length"):
        decode_frame(FRAME, LAYOUT8, HS.session_seed, request_id=5)
    old = _frame(layout=LAYOUT8, header=FrameHeader(5, 3, 2, version=1))  # a version-1 ES's frame
    with pytest.raises(WireError, match="version"):
        decode_frame(old, LAYOUT8, HS.session_seed, request_id=5)


def test_handshake_channel_blocks_is_checked():
    hs8 = Handshake(**{**HS.to_dict(), "channel": {**HS.channel, "blocks": 8}})
    assert Handshake.from_bytes(hs8.to_bytes()) == hs8 and hs8.session != HS.session
    for channel in ({"kind": "rayleigh", "csi": "mmse"}, {**HS.channel, "blocks": 0}, {**HS.channel, "blocks": 65},
                    {**HS.channel, "blocks": True}, {"kind": "awgn", "csi": "mmse", "blocks": 2}):
        with pytest.raises(WireError) as info:
            Handshake(**{**HS.to_dict(), "channel": channel})
        assert info.value.field == "channel.blocks"


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(FRAME8) * 8 - 1))
def test_any_single_bit_flip_of_a_block_faded_frame_is_rejected(bit):
    data = bytearray(FRAME8)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(WireError):
        decode_frame(bytes(data), LAYOUT8, HS.session_seed, request_id=5)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(FRAME) * 8 - 1))
def test_any_single_bit_flip_is_rejected(bit):
    data = bytearray(FRAME)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(WireError):
        decode_frame(bytes(data), LAYOUT, HS.session_seed, request_id=5)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(FRAME) - 1))
def test_truncated_frames_are_rejected(n):
    with pytest.raises(WireError, match="length"):
        decode_frame(FRAME[:n], LAYOUT, HS.session_seed, request_id=5)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=2 * LAYOUT.nbytes))
def test_random_bytes_never_decode(data):
    with pytest.raises(WireError):
        decode_frame(data, LAYOUT, HS.session_seed, request_id=5)
    with pytest.raises(WireError):
        unpack_envelope(data, "R")


ENVELOPE = pack_envelope("R", {"request_id": 1, "prompts": ["a red circle"]})


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(ENVELOPE) * 8 - 1))
def test_envelope_bit_flips_are_rejected(bit):
    data = bytearray(ENVELOPE)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(WireError) as info:
        unpack_envelope(bytes(data), "R")
    assert info.value.field in ("magic", "kind", "version", "length", "crc32")


@settings(max_examples=50, deadline=None)
@given(st.integers(14, 2**32 - 1))
def test_huge_declared_lengths_are_rejected_without_reading(length):
    data = ENVELOPE[:5] + struct.pack(">I", length) + ENVELOPE[9:]
    with pytest.raises(WireError, match="length"):
        unpack_envelope(data, "R")
    reader = RecordReader(max_record_bytes=1 << 20)
    if length > 1 << 20:
        with pytest.raises(WireError, match="length"):
            list(reader.feed(b"F" + struct.pack(">I", length)))


def test_records_round_trip_and_truncation():
    stream = pack_record(b"P", ENVELOPE[:0] + pack_envelope("P", {"event": "accepted"})) + pack_record(b"F", FRAME)
    kinds = [k for k, _ in iter_records(stream)]
    assert kinds == [b"P", b"F"]
    with pytest.raises(WireError, match="length"):
        iter_records(stream[:-1])
    with pytest.raises(WireError, match="record"):
        iter_records(b"X\x00\x00\x00\x00")


def test_request_validation_names_the_field():
    good = {"request_id": 1, "session": HS.session, "model": "0" * 16, "prompts": ["a"], "seed": 0, "link_seed": 0,
            "snr_db": 10.0, "steps": 4}
    assert EdgeRequest.from_dict(good).prompts == ["a"]
    assert EdgeRequest.from_dict({**good, "fading": [0.5, -0.5] * 8}).fading == [0.5, -0.5] * 8  # 8 block gains
    for patch, field in [({"steps": 0}, "steps"), ({"prompts": []}, "prompts"), ({"snr_db": float("nan")}, "snr_db"),
                         ({"seed": -1}, "seed"), ({"evil": 1}, "evil"), ({"split_step": 64}, "split_step"),
                         ({"prompts": ["a" * 2000]}, "prompts"), ({"fading": [1.0]}, "fading"),
                         ({"fading": [1.0, 0.0, 2.0]}, "fading"), ({"fading": [1.0, 0.0] * 65}, "fading"),
                         ({"fading": [True, 0.0]}, "fading"), ({"fading": [float("inf"), 0.0]}, "fading")]:
        with pytest.raises(WireError) as info:
            EdgeRequest.from_dict({**good, **patch})
        assert info.value.field == field
    with pytest.raises(WireError) as info:
        EdgeRequest.from_dict({k: v for k, v in good.items() if k != "model"})
    assert info.value.field == "model"
