"""The UE client: `RemoteEdge` asks an ES service for a request's frame and finishes the images locally.

::

    from splitldm.serve import remote
    edge = remote("http://127.0.0.1:8000", "tiny")          # fetches and checks the handshake
    out = edge.generate("a red circle", seed=0, link_seed=0, snr_db=10, steps=4, split_step=2)
    out.images[0].save("red.png")

The UE sends its request (prompts, seeds, its channel report, its model fingerprint), receives one
compact frame (`splitldm.serve.wire`), rebuilds the received payload and the receiver's context from
the handshake, its request and the frame's air header (`splitldm.serve.session`), runs the link's
receive half (equalise, decode, unmerge) and steps ``[k, T)`` + the VAE with `SplitPipeline.device`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from splitldm.analysis.limits import capacity
from splitldm.link.codec import SeedCodec
from splitldm.link.payload import Payload
from splitldm.link.stack import Link, LinkContext
from splitldm.pipeline.models import load_pipeline
from splitldm.pipeline.split import SplitPipeline, model_fingerprint
from splitldm.serve.session import (EdgeRequest, build_link, codec_fingerprint, expected_meta, frame_layout,
                                    received_payload, settings_for)
from splitldm.serve.wire import (SIDE_INFO_BITS, Handshake, RecordReader, WireError, decode_frame, pack_envelope,
                                 peek_header, unpack_envelope)

__all__ = ["RemoteError", "Received", "RemoteOutput", "RemoteEdge", "remote"]

logger = logging.getLogger(__name__)


class RemoteError(RuntimeError):
    """The ES refused or failed a request, or could not be reached. ``status``: HTTP status (0: no
    answer); ``field``: the field the ES named."""

    def __init__(self, message: str, status: int = 0, field: str = ""):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass
class Received:
    """What one request brought back, before the UE's receive half.

    ``payload`` / ``context``: the received payload and the receiver's `LinkContext`; ``split_step``,
    ``merge_ratio``: the ES's choice (air header); ``bits``: the accounting (see `RemoteEdge.request`).
    """

    request: EdgeRequest
    payload: Payload
    context: LinkContext
    split_step: int
    merge_ratio: float
    bits: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class RemoteOutput:
    """Images plus the `Received` record of their request."""

    images: Any
    received: Received


class RemoteEdge:
    """A UE talking to one ES service.

    Args:
        url: the service, e.g. ``"http://127.0.0.1:8000"``.
        pipe: the UE's pipeline or a model name for `load_pipeline` (its fingerprint must equal the ES's).
        codec: the UE's seed codec, or None to load the handshake's ``codec.name`` (zoo name / folder);
            its fingerprint must match the handshake's.
        token: shared token (``Authorization: Bearer``), or None.
        timeout_s: per-request time-out, seconds.
    """

    def __init__(self, url: str, pipe="tiny", codec: SeedCodec | None = None, token: str | None = None,
                 timeout_s: float = 60.0):
        import httpx

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http(s)://host:port, got {url!r}")
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
        self.url = url.rstrip("/")
        self.pipe = load_pipeline(pipe) if isinstance(pipe, str) else pipe
        self._codec = codec
        self.token = token
        self.timeout_s = float(timeout_s)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout_s)
        self._handshake: Handshake | None = None
        self._handshake_bytes = 0
        self._ids = itertools.count()
        self._splits: dict[int, SplitPipeline] = {}
        self._fingerprint = model_fingerprint(self.pipe)

    # ------------------------------------------------------------------ session
    def _get(self, path: str):
        import httpx

        try:
            return self._http.get(path)
        except httpx.HTTPError as exc:
            raise RemoteError(f"edge: cannot reach {self.url} ({type(exc).__name__}: {exc})") from None

    @property
    def handshake(self) -> Handshake:
        """The session handshake (fetched once; the model and codec fingerprints are checked)."""
        if self._handshake is None:
            r = self._get("/v1/handshake")
            if r.status_code != 200:
                raise _remote_error(r)
            hs = Handshake.from_bytes(r.content)
            if hs.model != self._fingerprint:
                raise WireError("model", f"the ES runs model {hs.model}, this UE {self._fingerprint}")
            if self._codec is None:
                self._codec = SeedCodec.from_pretrained(hs.codec["name"])
            if codec_fingerprint(self._codec) != hs.codec["fingerprint"]:
                raise WireError("codec", f"the UE's codec differs from the ES's ({hs.codec['fingerprint']})")
            self._codec.eval()
            self._handshake, self._handshake_bytes = hs, len(r.content)
        return self._handshake

    @property
    def codec(self) -> SeedCodec:
        self.handshake
        return self._codec

    def ledger(self) -> dict[str, Any]:
        """The server's ledger counts (`GET /v1/ledger`)."""
        r = self._get("/v1/ledger")
        if r.status_code != 200:
            raise _remote_error(r)
        return r.json()

    # ------------------------------------------------------------------ requests
    def make_request(self, prompt, *, seed: int = 0, link_seed: int = 0, snr_db: float = 10.0, steps: int = 4,
                     guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                     negative_prompt=None, split_step: int | None = None, merge_ratio: float | None = None,
                     fading: list[float] | None = None) -> EdgeRequest:
        """A validated `EdgeRequest` for this session (arguments as `generate`)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = None if negative_prompt is None else (
            [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt))
        obj = {"request_id": next(self._ids) % (2**31), "session": self.handshake.session, "model": self._fingerprint,
               "prompts": prompts, "seed": seed, "link_seed": link_seed, "snr_db": snr_db, "steps": steps,
               "guidance_scale": guidance_scale, "height": height, "width": width, "negative_prompt": negatives,
               "split_step": split_step, "merge_ratio": merge_ratio, "fading": fading}
        try:
            return EdgeRequest.from_dict({k: v for k, v in obj.items() if v is not None})
        except WireError as exc:
            raise ValueError(str(exc)) from None

    def send(self, request: EdgeRequest, body: bytes | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[bytes, list[dict[str, Any]], int]:
        """POST a request (``body``: its envelope, by default packed from ``request``); returns the raw
        frame, the progress/done events and the response bytes received. Errors: `RemoteError`."""
        import httpx

        body = pack_envelope("R", request.to_dict()) if body is None else body
        reader, events, frame = RecordReader(), [], None
        try:
            with self._http.stream("POST", "/v1/generate", content=body,
                                   headers={"content-type": "application/octet-stream"}) as r:
                if r.status_code != 200:
                    r.read()
                    raise _remote_error(r)
                for chunk in r.iter_bytes():
                    for kind, rec in reader.feed(chunk):
                        if kind == b"F":
                            frame = rec
                            continue
                        event = unpack_envelope(rec, kind.decode())
                        if kind == b"E":
                            raise RemoteError(f"edge: {event.get('error')}", 200, event.get("field", ""))
                        events.append(event)
                        if progress is not None:
                            progress(event)
                reader.close()
        except httpx.HTTPError as exc:
            raise RemoteError(f"edge: request failed ({type(exc).__name__}: {exc})") from None
        if frame is None or not events or events[-1].get("event") != "done":
            raise RemoteError("edge: the stream ended without a frame")
        return frame, events, reader.bytes_read

    def request(self, prompt, *, progress=None, **kwargs) -> Received:
        """Send one request and decode its frame into the received payload (no UE compute yet).

        ``bits`` holds: ``frame_bytes`` (the frame as sent on the socket), ``response_bytes`` (the whole
        record stream), ``side_info_bits`` (32: air header + check), ``index_map_bits``,
        ``channel_symbols``, ``capacity_bits_per_use`` (`splitldm.analysis.limits.capacity` of the
        session's channel at the SNR the UE got), ``channel_uses`` (symbols + digital side info at
        capacity) and ``handshake_bits``.
        """
        start = time.perf_counter()
        req = kwargs.pop("_request", None) or self.make_request(prompt, **kwargs)
        data, events, nbytes = self.send(req, progress=progress)
        steps = next((e for e in events if e.get("event") == "accepted"), {}).get("choice", {}).get("steps")
        if isinstance(steps, int) and steps != req.steps:  # the ES's controller chose N (accepted record)
            req = dataclasses.replace(req, steps=steps)
        received = self.decode(req, data)
        received.events, received.seconds = events, time.perf_counter() - start
        received.bits["response_bytes"] = nbytes
        return received

    def decode(self, request: EdgeRequest, data: bytes) -> Received:
        """Check and decode a frame for ``request`` (`WireError` naming the field on any mismatch)."""
        hs = self.handshake
        header = peek_header(data)
        ratios = hs.merge["ratios"]
        if header.ratio_index >= len(ratios):
            raise WireError("ratio_index", f"{header.ratio_index} is not an index of the ratio table {ratios}")
        if header.split_step > request.steps:
            raise WireError("split_step", f"{header.split_step} > the request's {request.steps} steps")
        ratio = float(ratios[header.ratio_index])
        settings = settings_for(self.pipe, request)
        layout = frame_layout(hs, self.codec, self.pipe, settings, ratio)
        frame = decode_frame(data, layout, hs.session_seed, request.request_id)
        meta = expected_meta(hs, self.pipe, settings, header.split_step, ratio)
        payload, context = received_payload(frame, meta)
        snr = float(frame.snr_db.mean())
        cap = float(capacity(snr, hs.channel["kind"]))
        digital = SIDE_INFO_BITS + layout.index_bits
        bits = {"frame_bytes": len(data), "side_info_bits": SIDE_INFO_BITS, "index_map_bits": layout.index_bits,
                "channel_symbols": layout.images * layout.symbols, "images": layout.images,
                "capacity_bits_per_use": cap,
                "channel_uses": layout.images * layout.symbols + (digital / cap if cap > 0 else math.inf),
                "handshake_bits": 8 * self._handshake_bytes}
        return Received(request, payload, context, header.split_step, ratio, bits)

    def finish(self, received: Received, output_type: str = "pil"):
        """UE: the link's receive half, then steps [k, T) and the VAE (`SplitPipeline.device`)."""
        link = build_link(self.handshake, self.codec, received.merge_ratio)
        payload = link.receive_half(received.payload, received.context)
        k = received.split_step
        if k not in self._splits:
            self._splits[k] = SplitPipeline(self.pipe, split_step=k, link=Link(), generator_state="none")
        return self._splits[k].device(payload, output_type=output_type)

    def generate(self, prompt, *, output_type: str = "pil", progress=None, **kwargs) -> RemoteOutput:
        """Request + finish: the images of ``prompt`` (a str or a list) generated across the service.

        Keyword arguments: ``seed`` (initial noise), ``link_seed`` (link randomness), ``snr_db`` (the
        UE's channel report), ``steps``, ``guidance_scale``, ``height``, ``width``, ``negative_prompt``,
        ``split_step`` / ``merge_ratio`` (None: the ES's rule), ``fading`` (the reported per-block gains
        ``[re_0, im_0, ..., re_{M-1}, im_{M-1}]``, e.g. `splitldm.serve.session.fading_report`).
        """
        received = self.request(prompt, progress=progress, **kwargs)
        return RemoteOutput(self.finish(received, output_type), received)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _remote_error(r) -> RemoteError:
    try:
        obj = r.json()
        return RemoteError(f"edge: HTTP {r.status_code}: {obj.get('error')}", r.status_code, obj.get("field", ""))
    except Exception:
        return RemoteError(f"edge: HTTP {r.status_code}", r.status_code)


def remote(url: str, pipe="tiny", **kwargs) -> RemoteEdge:
    """A `RemoteEdge` for ``url`` (see its arguments)."""
    return RemoteEdge(url, pipe, **kwargs)
