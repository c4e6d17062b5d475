"""What crosses the link from the edge server to the device, with its exact size.

A `Payload` holds named tensors and the JSON metadata the device needs. Real-valued tensors are the
*digital* part (counted in bits); complex64 tensors are channel symbols (counted in channel uses).
It serialises to bytes and back losslessly with safetensors.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

_META_KEY = "splitldm"
FORMAT_VERSION = 1


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
        missing = [p for p in self.primary if p not in self.tensors]
        if missing:
            raise ValueError(f"primary: names {missing} are not among the payload tensors {sorted(self.tensors)}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
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
        """Exact size in bits of the serialised digital part: tensor data + header + metadata."""
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
        return _st_save(contiguous, metadata={_META_KEY: json.dumps(header, sort_keys=True)})

    def to_bytes(self) -> bytes:
        """All tensors (symbols included) and metadata as safetensors bytes; `from_bytes` inverts it."""
        return self._serialize(self.tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Payload":
        """Decode `to_bytes` output. Corrupt or foreign bytes raise `PayloadError` (a ValueError)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        try:
            (header_len,) = struct.unpack("<Q", data[:8])
            if header_len > len(data) - 8:
                raise ValueError("header longer than the data")
            header = json.loads(data[8:8 + header_len])
            info = json.loads(header["__metadata__"][_META_KEY])
            tensors = _st_load(data)
        except Exception as exc:  # safetensors raises its own error types
            raise PayloadError(f"data: not a valid splitldm payload ({type(exc).__name__}: {exc})") from exc
        if info.get("version") != FORMAT_VERSION:
            raise PayloadError(f"data: payload format version {info.get('version')} != {FORMAT_VERSION}")
        return cls(tensors=dict(tensors), meta=info["meta"], primary=tuple(info["primary"]))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in self.tensors.items())
        return (f"Payload({shapes}; primary={list(self.primary)}; {self.num_bits()} bits, "
                f"{self.channel_uses()} channel uses)")


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
