"""What crosses the link from the edge server to the device, with its exact size.

A `Payload` holds named tensors and the JSON metadata the device needs. Real-valued tensors are the
*digital* part (counted in bits); complex64 tensors are channel symbols (counted in channel uses).
It serialises to bytes and back losslessly with safetensors, followed by an integrity check::

    safetensors bytes (u64 header length | JSON header | tensor data) | CRC32 u32 (little-endian)

The CRC32 (``zlib.crc32``, IEEE 802.3 polynomial) covers every byte before it: header, metadata and
tensor data. It is checked by `Payload.from_bytes` before anything else is parsed, so a flipped bit
anywhere is refused with a `PayloadError`, never decoded into a different payload. Why a CRC32 and not
a cryptographic hash: the threat it answers is accidental corruption (a storage or transport error),
for which CRC32 detects every burst of up to 32 bits, every 1- and 2-bit error in any message shorter
than 2**32 bits (Hamming distance 3; every 3-bit error too up to 91,607 bits, Koopman's tables) and
misses a random corruption with probability 2**-32, at 32 bits instead of a hash's 256. It is not an
authenticity check (anyone can recompute it); what a crafted payload may contain is bounded by the
schema checks of its receiver (`splitldm.pipeline.payload_schema` for `SplitPipeline`). `num_bits`
counts the CRC: 32 bits more than the bare safetensors bytes (format version 2; version 1 had none).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

_META_KEY = "splitldm"
#: Version of the byte format (2: safetensors + CRC32 trailer; 1, without a check, is refused).
FORMAT_VERSION = 2
#: Bits of the integrity check appended to the serialised payload (counted in `Payload.num_bits`).
CHECKSUM_BITS = 32
#: Largest JSON header accepted, bytes (as safetensors' own limit): checked before it is read.
MAX_HEADER_BYTES = 100_000_000
_CRC_BYTES = CHECKSUM_BITS // 8


@dataclass(frozen=True)
class StageRecord:
    """What one link stage left behind: ``direction`` is ``send`` or ``receive``.

    ``bits`` is the exact serialised size of the digital part after the stage; ``channel_uses`` the
    number of complex symbols; ``note`` anything the stage wants to report (e.g. merge ratio).
    """

    stage: str
    direction: str
    bits: int
    channel_uses: int
    note: dict[str, Any] = field(default_factory=dict)


class PayloadError(ValueError):
    """Raised for payload bytes that cannot be decoded, or a payload that does not fit its receiver."""


def _check_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors: expected a mapping of name -> Tensor, got {type(tensors).__name__}")
    out = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensors: names must be non-empty str, got {name!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{name!r}]: expected a Tensor, got {type(value).__name__}")
        out[name] = value
    return out


@dataclass
class Payload:
    """Tensors and metadata sent from the ES to the UE.

    Attributes:
        tensors: name -> tensor. Real tensors are sent digitally; complex64 tensors are channel symbols.
        meta: JSON-serialisable metadata (step index, scheduler name, model fingerprint, ...).
        primary: names of the tensors a lossy link stage may compress (e.g. ``("latents",)``); all
            other tensors are side information and must cross losslessly.
        history: what each link stage did (simulation bookkeeping: never transmitted).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    primary: tuple[str, ...] = ()
    history: list[StageRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tensors = _check_tensors(self.tensors)
        if isinstance(self.primary, str):
            raise TypeError("primary: expected a tuple of tensor names, got a str")
        self.primary = tuple(self.primary)
        if not all(isinstance(p, str) for p in self.primary):
            raise TypeError(f"primary: expected tensor names (str), got {list(self.primary)!r}")
        missing = [p for p in self.primary if p not in self.tensors]
        if missing:
            raise ValueError(f"primary: names {missing} are not among the payload tensors {sorted(self.tensors)}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta: expected a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"meta: must be JSON-serialisable ({exc})") from exc

    # ----------------------------------------------------------------- size
    def digital_tensors(self) -> dict[str, torch.Tensor]:
        """The real-valued tensors (sent as bits)."""
        return {k: v for k, v in self.tensors.items() if not v.is_complex()}

    def symbol_tensors(self) -> dict[str, torch.Tensor]:
        """The complex tensors (sent as channel symbols)."""
        return {k: v for k, v in self.tensors.items() if v.is_complex()}

    def tensor_bits(self, names: Iterable[str] | None = None) -> int:
        """Raw data bits of the digital tensors named (all digital ones by default), no header."""
        digital = self.digital_tensors()
        names = list(digital) if names is None else list(names)
        return sum(digital[n].numel() * digital[n].element_size() * 8 for n in names if n in digital)

    def num_bits(self) -> int:
        """Exact size in bits of the serialised digital part: tensor data + header + metadata + the
        32-bit CRC (`CHECKSUM_BITS`)."""
        return 8 * len(self._serialize(self.digital_tensors()))

    def channel_uses(self) -> int:
        """Complex channel symbols held (one complex64 element = one channel use)."""
        return sum(v.numel() for v in self.symbol_tensors().values())

    # ------------------------------------------------------------ transform
    def replace(self, *, tensors: Mapping[str, torch.Tensor] | None = None, meta: dict | None = None,
                primary: Iterable[str] | None = None) -> "Payload":
        """A new payload with some fields replaced (the tensor dict and history are copied)."""
        return Payload(
            tensors=dict(self.tensors if tensors is None else tensors),
            meta=dict(self.meta if meta is None else meta),
            primary=tuple(self.primary if primary is None else primary),
            history=list(self.history),
        )

    def to(self, device: torch.device | str) -> "Payload":
        return self.replace(tensors={k: v.to(device) for k, v in self.tensors.items()})

    # -------------------------------------------------------- serialisation
    def _serialize(self, tensors: Mapping[str, torch.Tensor]) -> bytes:
        header = {"version": FORMAT_VERSION, "meta": self.meta, "primary": list(self.primary)}
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        body = _st_save(contiguous, metadata={_META_KEY: json.dumps(header, sort_keys=True)})
        return body + struct.pack("<I", zlib.crc32(body))

    def to_bytes(self) -> bytes:
        """All tensors (symbols included) and metadata as safetensors bytes + CRC32; `from_bytes` inverts it."""
        return self._serialize(self.tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Payload":
        """Decode `to_bytes` output. Damaged, foreign or malformed bytes raise `PayloadError` (a
        ValueError) naming what failed: ``crc32`` (checked first, over all bytes), ``version``, the
        ``header`` length or JSON, or a ``meta`` / ``primary`` / tensor entry of the wrong shape."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < 8 + 2 + _CRC_BYTES:  # length field, "{}", check
            raise PayloadError(f"data: {len(data)} bytes is too short for a splitldm payload")
        body, (crc,) = data[:-_CRC_BYTES], struct.unpack("<I", data[-_CRC_BYTES:])
        if zlib.crc32(body) != crc:
            version = _peek_version(data)  # a payload of another format version has no (or another) check
            if version is not None and version != FORMAT_VERSION:
                raise PayloadError(f"data: payload format version {version!r} is not supported (this library "
                                   f"reads version {FORMAT_VERSION})")
            raise PayloadError("data: crc32 check failed: the payload bytes are damaged (integrity check mismatch)")
        header = _read_header(body)
        info = _header_field(header)
        version = info.get("version")
        if version != FORMAT_VERSION:
            raise PayloadError(f"data: payload format version {version!r} is not supported (this library "
                               f"reads version {FORMAT_VERSION})")
        meta, primary = info.get("meta"), info.get("primary")
        if not isinstance(meta, dict):
            raise PayloadError(f"data: header field 'meta' must be a JSON object, got {type(meta).__name__}")
        if not isinstance(primary, list) or not all(isinstance(p, str) for p in primary):
            raise PayloadError(f"data: header field 'primary' must be a list of tensor names, got {primary!r}")
        try:
            tensors = _st_load(body)
        except Exception as exc:  # safetensors raises its own error types
            raise PayloadError(f"data: tensor data does not match the header ({type(exc).__name__}: {exc})") from exc
        try:
            return cls(tensors=dict(tensors), meta=meta, primary=tuple(primary))
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"data: {exc}") from exc

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in self.tensors.items())
        return (f"Payload({shapes}; primary={list(self.primary)}; {self.num_bits()} bits, "
                f"{self.channel_uses()} channel uses)")


def _read_header(body: bytes) -> dict[str, Any]:
    """The safetensors JSON header of ``body`` (length checked before anything is read)."""
    (header_len,) = struct.unpack("<Q", body[:8])
    if header_len > min(len(body) - 8, MAX_HEADER_BYTES):
        raise PayloadError(f"data: header length {header_len} exceeds the {len(body) - 8} bytes that follow "
                           f"(or the {MAX_HEADER_BYTES}-byte limit)")
    try:
        header = json.loads(body[8:8 + header_len])
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PayloadError(f"data: header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise PayloadError(f"data: header must be a JSON object, got {type(header).__name__}")
    return header


def _header_field(header: dict[str, Any]) -> dict[str, Any]:
    """The splitldm record of a safetensors header: ``{"version", "meta", "primary"}``."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(_META_KEY), str):
        raise PayloadError(f"data: header has no {_META_KEY!r} metadata string: not a splitldm payload")
    try:
        info = json.loads(metadata[_META_KEY])
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"data: {_META_KEY!r} metadata is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(info, dict):
        raise PayloadError(f"data: {_META_KEY!r} metadata must be a JSON object, got {type(info).__name__}")
    return info


def _peek_version(data: bytes) -> Any:
    """The format version of ``data`` if it is laid out as a check-less (version 1) payload, else None.

    Only bytes whose safetensors layout covers them exactly (no trailing check) qualify, so a damaged
    version 2 payload (whose version field a flipped bit may have changed) reports its failed check."""
    try:
        header = _read_header(data)
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        (header_len,) = struct.unpack("<Q", data[:8])
        if 8 + header_len + max(ends, default=0) != len(data):
            return None
        return _header_field(header).get("version")
    except (PayloadError, struct.error, TypeError, KeyError, IndexError):
        return None


def payload_equal(a: Payload, b: Payload) -> bool:
    """True when two payloads hold bit-identical tensors, equal metadata and the same primary names."""
    if a.meta != b.meta or a.primary != b.primary or a.tensors.keys() != b.tensors.keys():
        return False
    return all(a.tensors[k].dtype == b.tensors[k].dtype and torch.equal(a.tensors[k].cpu(), b.tensors[k].cpu())
               for k in a.tensors)


def primary_real_names(payload: Payload, who: str) -> list[str]:
    """Names of the payload's real floating primary tensors ``(B, ...)``; ``who`` names the caller in errors."""
    if not isinstance(payload, Payload):
        raise TypeError(f"payload: expected a Payload, got {type(payload).__name__}")
    names = [k for k in payload.primary if not payload.tensors[k].is_complex()]
    if not names:
        raise ValueError(f"payload: {who} needs real primary tensors, got primary={list(payload.primary)}")
    for k in names:
        t = payload.tensors[k]
        if not t.is_floating_point() or t.dim() < 2 or t[0].numel() == 0:
            raise ValueError(f"payload: primary tensor {k!r} must be float (B, ...) with values, got {t.dtype} {tuple(t.shape)}")
    return names
