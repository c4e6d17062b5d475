"""The ES service: a FastAPI app served by uvicorn (HTTP/1.1), one process, one model.

Why HTTP with FastAPI/uvicorn rather than gRPC: the messages are already compact binary (the wire
format is ours, `splitldm.serve.wire`), so we need a byte transport with streaming, not an IDL;
HTTP/1.1 streaming responses give progress records without HTTP/2, any client (``httpx``, ``curl``)
can talk to it, and FastAPI/uvicorn/httpx are small, widely kept pure-Python dependencies (gRPC adds
protobuf code generation and a C++ core for no gain here).

Endpoints (all but ``/healthz`` need ``Authorization: Bearer <token>`` when a token is set):

* ``GET /v1/handshake``: the session handshake (`Handshake.to_bytes`).
* ``POST /v1/generate``: body = a request envelope (`EdgeRequest`); answer = a record stream
  (`splitldm.serve.wire`): ``P`` accepted, ``F`` the frame, ``D`` done, or ``E`` error.
* ``GET /v1/ledger``: the request ledger's counts (accepted, completed, errors, pending, duplicated).

Limits: request body bytes (413), a read time-out for the body (408: a slow client that never
finishes its request), concurrent requests (503), prompts per request (at most ``max_batch``).
Rejected requests never enter the ledger; every accepted one ends exactly once.

The replaceable pieces: ``EdgeService(policy=...)`` (the per-request choice, `splitldm.serve.policy`),
``EdgeService(runner=...)`` (the ES work, `splitldm.serve.edge.EdgeRunner`: ``denoise`` / ``forward``),
and `EdgeService.handle` (request envelope -> `Job`), the request handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from splitldm.link.codec import SeedCodec
from splitldm.serve.batcher import DynamicBatcher, Ledger
from splitldm.serve.edge import EdgeRunner, Job
from splitldm.serve.policy import FixedRule, Policy
from splitldm.serve.session import EdgeRequest, make_handshake, settings_for
from splitldm.serve.wire import MAX_SPLIT_STEP, WireError, pack_envelope, pack_record, unpack_envelope

__all__ = ["ServeConfig", "EdgeService", "create_app"]

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Limits and batching of the ES service.

    Attributes:
        max_batch: most images per batch (and per request), >= 1.
        max_wait_s: longest a batch waits for more requests after its oldest one, seconds.
        max_request_bytes: largest request body accepted (larger: HTTP 413).
        max_concurrency: most requests in flight (more: HTTP 503).
        read_timeout_s: time to receive a request body (slower: HTTP 408).
        token: shared secret; None: no authentication (bind to 127.0.0.1 then).
        channel, csi: the emulated channel (``"awgn"`` or ``"rayleigh"``) and the receiver's CSI mode.
        blocks: fading blocks M an image's channel symbols are spread over (Rayleigh: 1..64, each block
            its own gain; a controller's per-block power split applies when it has M blocks; AWGN: 1).
        ratios: merge ratio table (<= 8 values in [0, 1)).
        split_step, merge_ratio: the default rule's choice (`FixedRule`).
        pad_batches: pad every batch to ``max_batch`` images (when ``max_batch > 1``), so each image is
            bit-identical whichever requests shared its batch (`EdgeRunner`); costs compute at low load.
    """

    max_batch: int = 8
    max_wait_s: float = 0.01
    max_request_bytes: int = 64 * 1024
    max_concurrency: int = 64
    read_timeout_s: float = 10.0
    token: str | None = None
    channel: str = "rayleigh"
    csi: str = "mmse"
    blocks: int = 1
    ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    split_step: int = 2
    merge_ratio: float = 0.0
    pad_batches: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_request_bytes", "max_concurrency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        for name in ("max_wait_s", "read_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 3600:
                raise ValueError(f"{name}: expected seconds in [0, 3600], got {v!r}")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 8):
            raise ValueError("token: expected a string of at least 8 characters")
        if not isinstance(self.split_step, int) or not 0 <= self.split_step <= MAX_SPLIT_STEP:
            raise ValueError(f"split_step: expected an int in [0, {MAX_SPLIT_STEP}], got {self.split_step!r}")
        top = 64 if self.channel == "rayleigh" else 1
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or not 1 <= self.blocks <= top:
            raise ValueError(f"blocks: expected an int in [1, {top}] for a {self.channel} channel, got {self.blocks!r}")
        if self.merge_ratio not in self.ratios:
            raise ValueError(f"merge_ratio: {self.merge_ratio} is not in ratios {self.ratios}")

    def limits(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_request_bytes": self.max_request_bytes,
                "max_concurrency": self.max_concurrency, "read_timeout_s": self.read_timeout_s}


class _HTTPError(Exception):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field = status, field


class EdgeService:
    """The ES: pipeline, codec, handshake, policy, runner, batcher and ledger (see the module docstring).

    Args:
        pipe: the ES pipeline (an SD-type diffusers pipeline, e.g. ``load_pipeline("tiny")``).
        codec: the `SeedCodec` of the link; ``codec_name``: how the UE loads it (a zoo name or folder).
        config: `ServeConfig`.
        policy: ``(request, handshake) -> Choice``; default `FixedRule` from the config.
        runner: the ES work; default `EdgeRunner`.
    """

    def __init__(self, pipe, codec: SeedCodec, config: ServeConfig | None = None, *, codec_name: str = "seed-codec",
                 policy: Policy | None = None, runner: EdgeRunner | None = None):
        self.config = config or ServeConfig()
        c = self.config
        self.pipe = pipe
        self.codec = codec.eval()
        self.handshake = make_handshake(pipe, codec, codec_name=codec_name, channel=c.channel, csi=c.csi,
                                        blocks=c.blocks,
                                        ratios=c.ratios, limits=c.limits())
        self.policy = policy or FixedRule(c.split_step, c.merge_ratio)
        self.runner = runner or EdgeRunner(pipe, codec, self.handshake,
                                           pad_to=c.max_batch if c.pad_batches and c.max_batch > 1 else None)
        self.ledger = Ledger()
        self.batcher = DynamicBatcher(self.runner.run, c.max_batch, c.max_wait_s)
        self.inflight = 0

    # ------------------------------------------------------------------ the request handler
    def handle(self, body: bytes, seq: int = -1) -> Job:
        """Request envelope bytes -> a `Job` (validated; the policy's choice made). Errors: `_HTTPError`."""
        hs = self.handshake
        try:
            obj = unpack_envelope(body, "R", max_bytes=self.config.max_request_bytes)
            request = EdgeRequest.from_dict(obj, max_prompts=self.config.max_batch)
        except WireError as exc:
            raise _HTTPError(400, exc.field, str(exc)) from None
        if request.session != hs.session:
            raise _HTTPError(409, "session", f"session: the request names session {request.session!r}, this server "
                                             f"runs {hs.session!r}; fetch the handshake again")
        if request.model != hs.model:
            raise _HTTPError(409, "model", f"model: the UE's model fingerprint {request.model!r} differs from the "
                                           f"ES's {hs.model!r}")
        try:
            settings = settings_for(self.pipe, request)
            choice = self.policy(request, hs)
            steps = getattr(choice, "num_steps", None)  # a controller may choose N (splitldm.serve.control)
            if steps is not None and steps != request.steps:
                request = dataclasses.replace(request, steps=steps)
                settings = settings_for(self.pipe, request)
            if not 0 <= choice.split_step <= min(request.steps, MAX_SPLIT_STEP):
                raise WireError("split_step", f"{choice.split_step} not in [0, {min(request.steps, MAX_SPLIT_STEP)}]")
            hs.ratio_index(choice.merge_ratio)
        except WireError as exc:
            raise _HTTPError(400, exc.field, str(exc)) from None
        except ValueError as exc:
            raise _HTTPError(400, "merge_ratio", str(exc)) from None
        return Job(seq=seq, request=request, choice=choice, settings=settings)

    async def admit(self, request, max_bytes: int) -> bytes:
        """A request's checks before any work: the token, the body (at most ``max_bytes``, read within
        ``read_timeout_s``) and the concurrency limit. Returns the body; raises `_HTTPError`."""
        c = self.config
        self.check_token(request.headers.get("authorization"))
        body = await _read_body(request, max_bytes, c.read_timeout_s)
        if self.inflight >= c.max_concurrency:
            raise _HTTPError(503, "concurrency", f"concurrency: {self.inflight} requests in flight, "
                                                 f"the limit is {c.max_concurrency}; retry later")
        return body

    def check_token(self, header: str | None) -> None:
        token = self.config.token
        if token is None:
            return
        given = (header or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _HTTPError(401, "authorization", "authorization: missing or wrong token")

    async def stream(self, job: Job) -> AsyncIterator[bytes]:
        """The record stream of one request; enters the ledger on start, ends it exactly once."""
        seq = job.seq = self.ledger.accept()
        self.inflight += 1
        ended, future = False, None
        try:
            yield pack_record(b"P", pack_envelope("P", {"event": "accepted", "seq": seq,
                                                        "queued": self.batcher.waiting,
                                                        "choice": {"steps": job.request.steps, **asdict(job.choice)}}))
            future = self.batcher.submit(job)
            try:
                frame = await future
            except Exception as exc:  # the ES failed this request: an error record, the ledger says error
                field = getattr(exc, "field", "server")
                ended = self.ledger.finish(seq, "error", str(exc)) or True
                yield pack_record(b"E", pack_envelope("E", {"error": str(exc), "field": field, "seq": seq}))
                return
            yield pack_record(b"F", frame)
            yield pack_record(b"D", pack_envelope("D", {"event": "done", "seq": seq, "frame_bytes": len(frame)}))
            ended = self.ledger.finish(seq, "completed") or True
        finally:
            self.inflight -= 1
            if not ended:
                if future is not None:
                    future.cancel()
                self.ledger.finish(seq, "error", "client disconnected")


async def _read_body(request, limit: int, timeout_s: float) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise _HTTPError(400, "content-length", "content-length: not a number")
        if int(length) > limit:
            raise _HTTPError(413, "length", f"length: request of {length} bytes, the limit is {limit}")
    body = bytearray()

    async def read():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise _HTTPError(413, "length", f"length: request larger than the limit of {limit} bytes")

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise _HTTPError(408, "timeout", f"timeout: the request body did not arrive within {timeout_s} s") from None
    return bytes(body)


def create_app(service: EdgeService):
    """The FastAPI app of ``service`` (run it with ``uvicorn.run(app, host="127.0.0.1", port=...)``)."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        logger.info("serve: session %s, model %s", service.handshake.session, service.handshake.model)
        yield
        await service.batcher.stop()

    app = FastAPI(title="splitldm edge server", lifespan=lifespan)

    def error(exc: _HTTPError) -> JSONResponse:
        if exc.status != 401:
            service.ledger.reject()
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.get("/v1/handshake")
    async def handshake(request: Request):
        try:
            service.check_token(request.headers.get("authorization"))
        except _HTTPError as exc:
            return error(exc)
        return Response(service.handshake.to_bytes(), media_type="application/octet-stream",
                        headers={"x-splitldm-session": service.handshake.session})

    @app.get("/v1/ledger")
    async def ledger(request: Request):
        try:
            service.check_token(request.headers.get("authorization"))
        except _HTTPError as exc:
            return error(exc)
        return {**service.ledger.stats(), "inflight": service.inflight, "batch_sizes": service.batcher.batch_sizes[-1000:]}

    @app.post("/v1/generate")
    async def generate(request: Request):
        try:
            job = service.handle(await service.admit(request, service.config.max_request_bytes))
        except _HTTPError as exc:
            return error(exc)
        return StreamingResponse(service.stream(job), media_type="application/x-splitldm-stream")

    return app


def config_dict(config: ServeConfig) -> dict[str, Any]:
    d = asdict(config)
    d["token"] = None if config.token is None else "***"
    return d
