"""The compact, versioned wire format between the ES service and the UE: bytes only, nothing unpickled.

Three kinds of message cross the socket:

* **Envelopes** (the session handshake, the UE's request, progress / done / error records): a UTF-8
  JSON object in a binary envelope::

      magic "SLD" + kind (1 byte) | version u8 | length u32 (big-endian) | JSON | CRC32 u32

  The CRC32 covers everything before it. Sent once per session (handshake) or once per request.
* **The per-request frame** (ES -> UE, one per request of ``P`` images): only what the UE lacks::

      air header   u16  version (2 bits) | request id (5) | split step (6) | merge ratio index (3)
      air check    u16  CRC-16/CCITT of the air header + merge index map, seeded by the session
      index map    ceil(bits / 8) bytes (only when the merge ratio is > 0; `splitldm.tome.side_info_bits`)
      symbols      P x k complex64, little-endian (the channel output y, emulated on the ES)
      emulated CSI P float32 SNR (dB) + P x M complex64 per-block fading gains (M = the handshake's
                   ``channel.blocks`` for Rayleigh block fading, 0 for AWGN)
      frame check  u32  CRC32 of everything before, seeded by the session

  Over the air the image costs the ``k`` channel symbols plus the digital side information: the 16-bit
  air header and its 16-bit check (**32 bits per request**, i.e. per image for the usual one-image
  request) and the merge index map. The emulated CSI stands for what a real receiver estimates from
  pilots (the `LinkContext` is "what both ends know", never transmitted in-process either): it crosses
  the socket because the channel is emulated on the ES, and it is counted in the socket bits, not in
  the side information. With a per-block transmit power ``p_m`` (`splitldm.serve.control`) the CSI is
  the effective gain ``sqrt(p_m) h_m`` of each block, what the UE estimates from pilots sent at the
  block's power: the UE equalises with it and never needs ``p``, so the power split does not cross
  (it costs no air bits; the ES reports it in the stream's ``accepted`` record, socket only). The frame check is the socket's integrity check (the emulated air link has its
  own, the air check). No field of the frame carries a length: every size follows from the handshake,
  the request and the air header, and a frame of any other length is refused.
* **The stream** the ES answers a request with: records ``type (1 byte) | length u32 | body``; type
  ``F`` carries a frame, ``P`` / ``D`` / ``E`` an envelope (progress, done, error).

Every check that fails raises `WireError` (a ``ValueError``) naming the field (``crc32``, ``length``,
``version``, ``request_id`` ...); a damaged or foreign message is refused, never decoded into a wrong
image. Both CRCs are seeded with the session id, so a frame from another session fails its check.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["WIRE_VERSION", "WireError", "Handshake", "FrameHeader", "FrameLayout", "Frame", "pack_envelope",
           "unpack_envelope", "encode_frame", "decode_frame", "pack_record", "iter_records", "RecordReader",
           "AIR_HEADER_BITS", "AIR_CHECK_BITS", "SIDE_INFO_BITS", "MAX_ENVELOPE_BYTES", "MAX_BLOCKS"]

#: Version of this format (2 bits in the air header: 1..3). 2: ``channel.blocks`` in the handshake and
#: M per-block gains per image in the frame's emulated CSI (1: one gain per image).
WIRE_VERSION = 2
#: Most fading blocks per image a session may declare (``Handshake.channel["blocks"]``).
MAX_BLOCKS = 64
#: Bits of the per-request air header and of its CRC-16: together the side information other than the
#: merge index map.
AIR_HEADER_BITS = 16
AIR_CHECK_BITS = 16
SIDE_INFO_BITS = AIR_HEADER_BITS + AIR_CHECK_BITS
#: Field widths of the air header (MSB first).
VERSION_BITS, REQUEST_ID_BITS, STEP_BITS, RATIO_BITS = 2, 5, 6, 3
MAX_SPLIT_STEP = (1 << STEP_BITS) - 1
MAX_RATIOS = 1 << RATIO_BITS
#: Largest JSON envelope accepted (bytes), whatever its declared length.
MAX_ENVELOPE_BYTES = 1 << 20
_MAGIC = b"SLD"
_ENVELOPE_KINDS = {"H": "handshake", "R": "request", "P": "progress", "D": "done", "E": "error"}
_RECORD_TYPES = (b"F", b"P", b"D", b"E")


class WireError(ValueError):
    """A message that fails a check of the wire format. ``field`` names the field that failed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


# ------------------------------------------------------------------------------------ envelopes
def pack_envelope(kind: str, obj: dict[str, Any]) -> bytes:
    """``obj`` (JSON-able dict) as an envelope of ``kind`` (one of ``H R P D E``)."""
    if kind not in _ENVELOPE_KINDS:
        raise ValueError(f"kind: expected one of {sorted(_ENVELOPE_KINDS)}, got {kind!r}")
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    head = _MAGIC + kind.encode() + struct.pack(">BI", WIRE_VERSION, len(body))
    data = head + body
    return data + struct.pack(">I", zlib.crc32(data))


def unpack_envelope(data: bytes, kind: str, max_bytes: int = MAX_ENVELOPE_BYTES) -> dict[str, Any]:
    """Check and decode an envelope of ``kind``: magic, version, declared length, CRC32, JSON object."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    what = _ENVELOPE_KINDS.get(kind, kind)
    if len(data) < 13:
        raise WireError("length", f"a {what} envelope needs at least 13 bytes, got {len(data)}")
    if data[:3] != _MAGIC:
        raise WireError("magic", f"not a splitldm {what} message (magic {data[:3]!r})")
    if data[3:4] != kind.encode():
        raise WireError("kind", f"expected a {what} message, got kind {data[3:4]!r}")
    version, length = struct.unpack(">BI", data[4:9])
    if version != WIRE_VERSION:
        raise WireError("version", f"wire format version {version} != {WIRE_VERSION}")
    if length > max_bytes:
        raise WireError("length", f"declared {length} bytes, more than the limit of {max_bytes}")
    if len(data) != 13 + length:
        raise WireError("length", f"declared {length} bytes of JSON but the message holds {len(data) - 13}")
    (crc,) = struct.unpack(">I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise WireError("crc32", f"the {what} message is damaged (CRC32 mismatch)")
    try:
        obj = json.loads(data[9:-4].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("json", f"the {what} body is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError("json", f"the {what} body must be a JSON object, got {type(obj).__name__}")
    return obj


# ------------------------------------------------------------------------------------ handshake
@dataclass(frozen=True)
class Handshake:
    """What the session fixes once: models, scheduler, link. Sent by the ES, checked by the UE.

    Attributes:
        family: pipeline family (``"sd"``, ...).
        model: `splitldm.pipeline.split.model_fingerprint` of the ES pipeline (the UE's must match).
        latent_space: `latent_space_fingerprint` of the ES pipeline.
        scheduler: scheduler class name; ``scheduler_config``: SHA-256 (16 hex) of its config.
        condition: ``"prompt"`` (the UE encodes its own prompt; the text never crosses back).
        dtype: latent dtype name (``"float32"``).
        codec: ``{"class", "name", "fingerprint", "rho"}`` of the seed codec.
        merge: ``{"ratios": [...], "sx", "sy", "use_rand", "similarity", "patch"}``: the merge ratio
            table the 3-bit index points into, and the `TokenMerge` settings.
        channel: ``{"kind": "awgn" | "rayleigh", "csi", "blocks"}``: the emulated channel; ``blocks``
            (1..`MAX_BLOCKS`, 1 for AWGN): the fading blocks M an image's symbols are spread over.
        limits: the server's limits (informative): max batch, request bytes, concurrency.
    """

    family: str
    model: str
    latent_space: str
    scheduler: str
    scheduler_config: str
    condition: str
    dtype: str
    codec: dict[str, Any]
    merge: dict[str, Any]
    channel: dict[str, Any]
    limits: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ratios = self.merge.get("ratios")
        if not isinstance(ratios, list) or not 1 <= len(ratios) <= MAX_RATIOS or \
                not all(isinstance(r, (int, float)) and 0 <= r < 1 for r in ratios):
            raise WireError("merge.ratios", f"expected 1..{MAX_RATIOS} ratios in [0, 1), got {ratios!r}")
        if self.channel.get("kind") not in ("awgn", "rayleigh"):
            raise WireError("channel.kind", f"expected 'awgn' or 'rayleigh', got {self.channel.get('kind')!r}")
        m = self.channel.get("blocks")
        top = MAX_BLOCKS if self.channel["kind"] == "rayleigh" else 1
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= top:
            raise WireError("channel.blocks", f"expected an int in [1, {top}] for a {self.channel['kind']} channel, "
                                              f"got {m!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        return pack_envelope("H", self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> "Handshake":
        obj = unpack_envelope(data, "H")
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names if n not in obj and n != "limits"]
        if missing:
            raise WireError(missing[0], "missing from the handshake")
        unknown = sorted(set(obj) - set(names))
        if unknown:
            raise WireError(unknown[0], "not a handshake field")
        for name in ("codec", "merge", "channel", "limits"):
            if not isinstance(obj.get(name, {}), dict):
                raise WireError(name, "expected a JSON object")
        return cls(**obj)

    @property
    def session(self) -> str:
        """Session id: SHA-256 (16 hex) of the handshake's content but its (informative) ``limits``; the
        request names it. An ES restarted with the same models and link keeps its session id."""
        content = {k: v for k, v in self.to_dict().items() if k != "limits"}
        body = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    @property
    def session_seed(self) -> int:
        """32-bit seed of both CRCs of a frame (a frame of another session fails its check)."""
        return int(self.session[:8], 16)

    def ratio_index(self, ratio: float) -> int:
        """Index of ``ratio`` in the table (ValueError naming ``merge_ratio`` if absent)."""
        for i, r in enumerate(self.merge["ratios"]):
            if abs(float(r) - float(ratio)) < 1e-9:
                return i
        raise ValueError(f"merge_ratio: {ratio!r} is not in the session's table {self.merge['ratios']}")

    @property
    def bits(self) -> int:
        """Size of the handshake on the socket, bits (envelope included)."""
        return 8 * len(self.to_bytes())


# ------------------------------------------------------------------------------------ frames
@dataclass(frozen=True)
class FrameHeader:
    """The 16-bit air header: ``request_id`` (5 bits: the low bits of the UE's request number),
    ``split_step`` (6 bits, 0..63), ``ratio_index`` (3 bits, into ``Handshake.merge["ratios"]``)."""

    request_id: int
    split_step: int
    ratio_index: int
    version: int = WIRE_VERSION

    def pack(self) -> int:
        for name, value, bits in (("version", self.version, VERSION_BITS), ("request_id", self.request_id, REQUEST_ID_BITS),
                                  ("split_step", self.split_step, STEP_BITS), ("ratio_index", self.ratio_index, RATIO_BITS)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
                raise ValueError(f"{name}: expected an int in [0, {(1 << bits) - 1}], got {value!r}")
        word = self.version
        word = (word << REQUEST_ID_BITS) | self.request_id
        word = (word << STEP_BITS) | self.split_step
        return (word << RATIO_BITS) | self.ratio_index

    @classmethod
    def unpack(cls, word: int) -> "FrameHeader":
        ratio = word & ((1 << RATIO_BITS) - 1)
        word >>= RATIO_BITS
        step = word & ((1 << STEP_BITS) - 1)
        word >>= STEP_BITS
        rid = word & ((1 << REQUEST_ID_BITS) - 1)
        return cls(rid, step, ratio, word >> REQUEST_ID_BITS)


@dataclass(frozen=True)
class FrameLayout:
    """The sizes a frame must have, known to the UE before it arrives (no length crosses).

    ``images``: P; ``symbols``: k per image; ``index_bits``: exact merge index map bits (0: none);
    ``gains``: fading gains per image in the emulated CSI (M blocks for block fading, 0 for AWGN).
    """

    images: int
    symbols: int
    index_bits: int
    gains: int

    @property
    def index_bytes(self) -> int:
        return -(-self.index_bits // 8)

    @property
    def nbytes(self) -> int:
        p = self.images
        return 4 + self.index_bytes + 8 * p * self.symbols + 4 * p + 8 * p * self.gains + 4


@dataclass
class Frame:
    """A decoded frame: header, ``index_map`` (uint8 ``(ceil(bits/8),)`` or None), ``symbols``
    complex64 ``(P, k)``, ``snr_db`` float32 ``(P,)``, ``gains`` complex64 ``(P, g)`` or None."""

    header: FrameHeader
    index_map: torch.Tensor | None
    symbols: torch.Tensor
    snr_db: torch.Tensor
    gains: torch.Tensor | None

    def air_bits(self, layout: FrameLayout) -> dict[str, int]:
        """Digital side information over the air, bits: header + check, index map (exact, unpadded)."""
        return {"side_info_bits": SIDE_INFO_BITS, "index_map_bits": layout.index_bits,
                "channel_symbols": layout.images * layout.symbols}


def _crc16(data: bytes, seed: int) -> int:
    return binascii.crc_hqx(data, seed & 0xFFFF)


def encode_frame(header: FrameHeader, layout: FrameLayout, session_seed: int, symbols: torch.Tensor,
                 snr_db: torch.Tensor, gains: torch.Tensor | None = None,
                 index_map: torch.Tensor | None = None) -> bytes:
    """Serialise one request's frame (see the module docstring); sizes are checked against ``layout``."""
    p, k = layout.images, layout.symbols
    symbols = symbols.detach().cpu()
    if symbols.dtype != torch.complex64 or tuple(symbols.shape) != (p, k):
        raise ValueError(f"symbols: expected complex64 ({p}, {k}), got {symbols.dtype} {tuple(symbols.shape)}")
    snr = snr_db.detach().cpu().to(torch.float32).reshape(-1)
    if snr.numel() != p:
        raise ValueError(f"snr_db: expected {p} values, got {snr.numel()}")
    if layout.gains:
        if gains is None:
            raise ValueError("gains: the channel fades but no gains were given")
        gains = gains.detach().cpu().to(torch.complex64).reshape(p, -1)
        if gains.shape[1] != layout.gains:
            raise ValueError(f"gains: expected ({p}, {layout.gains}), got {tuple(gains.shape)}")
    index = b""
    if layout.index_bits:
        if index_map is None or index_map.dtype != torch.uint8 or index_map.numel() != layout.index_bytes:
            raise ValueError(f"index_map: expected {layout.index_bytes} uint8 bytes")
        index = index_map.detach().cpu().contiguous().numpy().tobytes()
    air = struct.pack(">H", header.pack())
    check = struct.pack(">H", _crc16(air + index, session_seed))
    body = air + check + index + symbols.contiguous().numpy().astype("<c8").tobytes() \
        + snr.numpy().astype("<f4").tobytes()
    if layout.gains:
        body += gains.contiguous().numpy().astype("<c8").tobytes()
    return body + struct.pack(">I", zlib.crc32(body, session_seed & 0xFFFFFFFF))


def peek_header(data: bytes) -> FrameHeader:
    """The air header of a frame, unchecked (to find the layout before `decode_frame` checks all)."""
    if len(data) < 8:
        raise WireError("length", f"a frame needs at least 8 bytes, got {len(data)}")
    return FrameHeader.unpack(struct.unpack(">H", data[:2])[0])


def decode_frame(data: bytes, layout: FrameLayout, session_seed: int, request_id: int) -> Frame:
    """Check and decode a frame: length, frame CRC32, version, request id, air CRC-16; then the arrays.

    ``layout`` is what the UE expects for the air header's split step and ratio (see `peek_header`);
    ``request_id`` its own request number (compared on the low 5 bits).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) != layout.nbytes:
        raise WireError("length", f"expected a frame of {layout.nbytes} bytes, got {len(data)}")
    (crc,) = struct.unpack(">I", data[-4:])
    if zlib.crc32(data[:-4], session_seed & 0xFFFFFFFF) != crc:
        raise WireError("crc32", "frame check failed: the frame is damaged or belongs to another session")
    header = peek_header(data)
    if header.version != WIRE_VERSION:
        raise WireError("version", f"frame version {header.version} != {WIRE_VERSION}")
    if header.request_id != request_id % (1 << REQUEST_ID_BITS):
        raise WireError("request_id", f"frame of request {header.request_id}, expected "
                                      f"{request_id % (1 << REQUEST_ID_BITS)} (low {REQUEST_ID_BITS} bits)")
    pos = 4
    index = data[pos:pos + layout.index_bytes]
    pos += layout.index_bytes
    (check,) = struct.unpack(">H", data[2:4])
    if _crc16(data[:2] + index, session_seed) != check:
        raise WireError("air_crc16", "air header / index map check failed")
    p, k = layout.images, layout.symbols
    sym = np.frombuffer(data, dtype="<c8", count=p * k, offset=pos).astype(np.complex64)
    pos += 8 * p * k
    snr = np.frombuffer(data, dtype="<f4", count=p, offset=pos).astype(np.float32)
    pos += 4 * p
    gains = None
    if layout.gains:
        gains = torch.from_numpy(np.frombuffer(data, dtype="<c8", count=p * layout.gains, offset=pos)
                                 .astype(np.complex64).reshape(p, layout.gains))
    symbols = torch.from_numpy(sym.reshape(p, k))
    if not (torch.isfinite(symbols.real).all() and torch.isfinite(symbols.imag).all() and np.isfinite(snr).all()):
        raise WireError("symbols", "non-finite values")
    index_map = torch.frombuffer(bytearray(index), dtype=torch.uint8) if layout.index_bits else None
    return Frame(header, index_map, symbols, torch.from_numpy(snr), gains)


# ------------------------------------------------------------------------------------ stream records
def pack_record(kind: bytes, body: bytes) -> bytes:
    """One stream record: ``kind`` (``F P D E``) | length u32 | body."""
    if kind not in _RECORD_TYPES:
        raise ValueError(f"kind: expected one of {_RECORD_TYPES}, got {kind!r}")
    return kind + struct.pack(">I", len(body)) + body


class RecordReader:
    """Incremental parser of a record stream (feed it chunks as they arrive)."""

    def __init__(self, max_record_bytes: int = 64 << 20):
        self._buf = bytearray()
        self.max_record_bytes = max_record_bytes
        self.bytes_read = 0

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
        self._buf += chunk
        self.bytes_read += len(chunk)
        while len(self._buf) >= 5:
            kind = bytes(self._buf[:1])
            if kind not in _RECORD_TYPES:
                raise WireError("record", f"unknown record type {kind!r}")
            (n,) = struct.unpack(">I", self._buf[1:5])
            if n > self.max_record_bytes:
                raise WireError("length", f"record of {n} bytes, more than {self.max_record_bytes}")
            if len(self._buf) < 5 + n:
                return
            body = bytes(self._buf[5:5 + n])
            del self._buf[:5 + n]
            yield kind, body

    def close(self) -> None:
        if self._buf:
            raise WireError("length", f"the stream ended inside a record ({len(self._buf)} bytes left)")


def iter_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """All records of a complete stream."""
    reader = RecordReader()
    out = list(reader.feed(data))
    reader.close()
    return out


def channel_uses(symbols: int, digital_bits: int, capacity_bits_per_use: float) -> float:
    """Channel uses of ``symbols`` analog symbols plus ``digital_bits`` sent at ``capacity`` bits/use."""
    if not capacity_bits_per_use > 0 or not math.isfinite(capacity_bits_per_use):
        raise ValueError(f"capacity_bits_per_use: expected a positive number, got {capacity_bits_per_use!r}")
    return symbols + digital_bits / capacity_bits_per_use
