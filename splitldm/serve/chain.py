"""Multi-hop chains of ES processes (LEARN-GDM): each node runs a block of denoising steps and forwards.

A chain is several ``splitldm serve-edge`` processes. The first one, the *access node*, talks to the
UE exactly as a single ES does (``POST /v1/generate``, the same record stream and frame, so the UE
client is unchanged); for a request whose `ChainChoice` names further hops it runs text encoding and
its block ``[0, a)``, then sends the payload to the next node (``POST /v1/hop``), which runs
``[a, b)`` with `SplitPipeline.relay` and forwards again, ... The *last* node applies the link send
half (`EdgeRunner.forward`: merge, codec and the emulated channel, with the access node's handshake
and the request's link seed) and answers with the compact frame, which travels back along the chain
to the access node and on to the UE. The UE runs steps ``[k, T)`` and the VAE (``k``: the choice's
split step, the end of the last block).

The hop message (`pack_hop` / `unpack_hop`, nothing unpickled)::

    b"SLDHOP" | version u8 | header length u32 | header (UTF-8 JSON) | payload length u32
             | payload (`Payload.to_bytes`: v2, safetensors + its own CRC32) | CRC32 u32 of all before

The header holds the request (`EdgeRequest` fields, validated again), the choice (split step, merge
ratio, power offset / split, steps), the access node's handshake (its bytes, base64), this node's
``stop`` and the hops after it (``[[url, stop], ...]``). A node checks the CRCs, that the handshake
names its own models, scheduler and codec (409 naming the field otherwise), the payload against its
pipeline (`check_split_payload`, model fingerprint) and the stops (``payload step <= stop <= ... <=
k``) before accepting it; refused hops never enter its ledger, accepted ones end exactly once.

Errors: a hop that fails (next node down or timing out, a refusal, a relay error) ends the request on
every node upstream with an error naming the node (`HopError`, field ``hop``); the UE gets an ``E``
record, the servers stay up.

Placement (which nodes, how many steps each) is a policy, as for the single ES:

* `ExplicitChain`: fixed blocks, ``serve-edge --chain URL1,URL2 --chain-blocks 2,1,1`` (the access node
  runs 2 steps, URL1 1, URL2 1; the split step is their sum).
* `D3QLPlacement`: a trained `D3QL` agent on `ChainPlacement` (node 0 the access node, node i the
  i-th ``--chain`` URL) picks a node chain and a step reduction per request; its steps are cut into
  blocks proportional to the nodes' FLOP/s (`ChainPlacement.split_blocks`) and the whole schedule
  runs on the chain (``k = T``: the UE only decodes). ``serve-edge --chain ... --placement d3ql-placement``.

Relay nodes run each hop alone (no cross-request batching) with a batch of the request's rows, so a
chain gives the single-process images bit for bit when the access node does not pad its batches
(``--no-pad`` or ``--max-batch 1``) and every node runs the same torch thread count. The sending
node's worker waits for the rest of the chain (a hop is synchronous), so a chain never visits a node
twice (refused).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import struct
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from splitldm.link.payload import Payload, PayloadError
from splitldm.pipeline.payload_schema import check_split_payload
from splitldm.serve.app import EdgeService, ServeConfig, _HTTPError, create_app
from splitldm.serve.edge import EdgeRunner, Job
from splitldm.serve.policy import Choice, FixedRule, Policy
from splitldm.serve.session import EdgeRequest, settings_for
from splitldm.serve.wire import MAX_SPLIT_STEP, Handshake, WireError, peek_header

__all__ = ["ChainChoice", "HopError", "ExplicitChain", "D3QLPlacement", "ChainRunner", "ChainService",
           "create_chain_app", "pack_hop", "unpack_hop", "check_url", "save_placement", "PLACEMENT_ENV",
           "HOP_VERSION"]

logger = logging.getLogger(__name__)

HOP_VERSION = 1
_MAGIC = b"SLDHOP"
#: Handshake fields every node of a chain must share with the access node.
SHARED_FIELDS = ("family", "model", "latent_space", "scheduler", "scheduler_config", "dtype")
#: `ChainPlacement` arguments of the shipped ``d3ql-placement`` policy: 3 nodes (access + 2 relays).
PLACEMENT_ENV: dict[str, Any] = {"flops_per_s": [40e12, 25e12, 15e12], "memory_gb": [24.0, 16.0, 16.0],
                                 "max_chain": 3, "reductions": [0, 2, 4], "num_users": [1, 3, 5, 8],
                                 "ask_steps": [4, 12], "max_slack": 4}
PLACEMENT_FILE = "placement.json"


class HopError(RuntimeError):
    """A hop of the chain failed (the message names the node); ``field`` is ``"hop"``."""

    field = "hop"


@dataclass(frozen=True)
class ChainChoice(Choice):
    """A `Choice` placed on a chain: the access node runs steps ``[0, first_stop)``, then each hop
    ``(url, stop)`` runs ``[previous stop, stop)``; the last stop is ``split_step`` (k).

    ``num_steps``: the step count the service runs (a placement's reduction; None: the request's);
    ``power_split``: per-block transmit power, applied by the last node (`splitldm.serve.policy.block_power`).
    """

    num_steps: int | None = None
    power_split: tuple[float, ...] | None = None
    first_stop: int = 0
    hops: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        stops = [self.first_stop] + [s for _, s in self.hops]
        if any(isinstance(s, bool) or not isinstance(s, int) for s in stops) or stops != sorted(stops) \
                or stops[0] < 0 or stops[-1] != self.split_step:
            raise ValueError(f"hops: block ends {stops} must be ints, non-decreasing from >= 0, the last equal to "
                             f"split_step {self.split_step}")


def check_url(url: str, name: str = "url") -> str:
    """``url`` (an ``http(s)://host:port`` base URL) without a trailing slash, or ValueError naming ``name``."""
    from urllib.parse import urlsplit

    ok = isinstance(url, str) and len(url) <= 200 and not any(c.isspace() for c in url)
    if ok:
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/") \
                and not parts.query and not parts.fragment and parts.port is not None
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"{name}: expected an http(s)://host:port URL, got {url!r}")
    return url.rstrip("/")


def _check_urls(urls: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(urls, str) or not isinstance(urls, Sequence) or not urls:
        raise ValueError(f"{name}: expected one or more URLs, got {urls!r}")
    out = tuple(check_url(u, name) for u in urls)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: a chain visits each node once, got {list(out)}")
    return out


# ------------------------------------------------------------------ the hop message
def pack_hop(header: dict[str, Any], payload: bytes) -> bytes:
    """The hop message of ``header`` (JSON-able) and ``payload`` (`Payload.to_bytes`); see the module doc."""
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    body = _MAGIC + struct.pack("<BI", HOP_VERSION, len(head)) + head + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def unpack_hop(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Inverse of `pack_hop`: (header, payload bytes); damaged or foreign bytes raise `WireError`."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    n = len(_MAGIC) + 5
    if len(data) < n + 8 or data[:len(_MAGIC)] != _MAGIC:
        raise WireError("hop", "not a hop message (bad magic or too short)")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise WireError("crc32", "the hop message is damaged (CRC32 mismatch)")
    version, head_len = struct.unpack("<BI", data[len(_MAGIC):n])
    if version != HOP_VERSION:
        raise WireError("version", f"hop message version {version}, this node reads {HOP_VERSION}")
    if n + head_len + 4 > len(data) - 4:
        raise WireError("hop", f"header length {head_len} exceeds the message")
    try:
        header = json.loads(data[n:n + head_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("hop", f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise WireError("hop", "header is not a JSON object")
    (pay_len,) = struct.unpack("<I", data[n + head_len:n + head_len + 4])
    start = n + head_len + 4
    if start + pay_len != len(data) - 4:
        raise WireError("hop", f"payload length {pay_len} does not match the message")
    return header, bytes(data[start:start + pay_len])


def _choice_dict(choice: Choice) -> dict[str, Any]:
    split = getattr(choice, "power_split", None)
    return {"split_step": choice.split_step, "merge_ratio": choice.merge_ratio, "power_db": choice.power_db,
            "num_steps": getattr(choice, "num_steps", None), "power_split": None if split is None else list(split)}


def _choice_from(obj: Any, request: EdgeRequest, hs: Handshake) -> ChainChoice:
    if not isinstance(obj, dict) or set(obj) != {"split_step", "merge_ratio", "power_db", "num_steps", "power_split"}:
        raise WireError("choice", f"expected the fields split_step, merge_ratio, power_db, num_steps, power_split, got {obj!r}")
    k = obj["split_step"]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= min(request.steps, MAX_SPLIT_STEP):
        raise WireError("split_step", f"{k!r} not in [0, {min(request.steps, MAX_SPLIT_STEP)}]")
    for name in ("merge_ratio", "power_db"):
        v = obj[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 100:
            raise WireError(name, f"expected a finite number, got {v!r}")
    try:
        hs.ratio_index(obj["merge_ratio"])
    except ValueError as exc:
        raise WireError("merge_ratio", str(exc)) from None
    if obj["num_steps"] is not None and obj["num_steps"] != request.steps:
        raise WireError("num_steps", f"{obj['num_steps']!r} differs from the request's {request.steps} steps")
    split = obj["power_split"]
    if split is not None and (not isinstance(split, list) or not 1 <= len(split) <= 64 or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p >= 0 for p in split)):
        raise WireError("power_split", f"expected 1..64 finite powers >= 0, got {split!r}")
    return ChainChoice(split_step=k, merge_ratio=float(obj["merge_ratio"]), power_db=float(obj["power_db"]),
                       num_steps=obj["num_steps"], power_split=None if split is None else tuple(float(p) for p in split),
                       first_stop=k)


def _hops_from(obj: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(obj, list) or len(obj) > 16:
        raise WireError("hops", f"expected a list of at most 16 [url, stop] pairs, got {obj!r}")
    out = []
    for h in obj:
        if not isinstance(h, list) or len(h) != 2 or isinstance(h[1], bool) or not isinstance(h[1], int):
            raise WireError("hops", f"expected [url, stop], got {h!r}")
        try:
            out.append((check_url(h[0], "hops"), h[1]))
        except ValueError as exc:
            raise WireError("hops", str(exc).split(": ", 1)[1]) from None
    return tuple(out)


# ------------------------------------------------------------------ placement policies
class ExplicitChain:
    """Fixed placement: ``blocks[0]`` steps on the access node, ``blocks[i]`` on ``urls[i - 1]``.

    The split step is ``sum(blocks)`` (a request with fewer steps is refused, 400 ``split_step``);
    the merge ratio, power and step count come from ``base`` (default `FixedRule`: the UE's merge
    ratio or 0). ``blocks`` may hold zeros (a node that only forwards).
    """

    def __init__(self, urls: Sequence[str], blocks: Sequence[int], base: Policy | None = None):
        self.urls = _check_urls(urls, "urls")
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or len(blocks) != len(self.urls) + 1 \
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks):
            raise ValueError(f"blocks: expected {len(self.urls) + 1} ints >= 0 (the access node, then one per URL), "
                             f"got {blocks!r}")
        if not 0 < sum(blocks) <= MAX_SPLIT_STEP:
            raise ValueError(f"blocks: their sum (the split step) must be in [1, {MAX_SPLIT_STEP}], got {sum(blocks)}")
        self.blocks = tuple(int(b) for b in blocks)
        self.base = base or FixedRule(sum(self.blocks))

    def __call__(self, request: EdgeRequest, handshake: Handshake) -> ChainChoice:
        c = self.base(request, handshake)
        stops = np.cumsum(self.blocks).tolist()
        return ChainChoice(split_step=int(stops[-1]), merge_ratio=c.merge_ratio, power_db=c.power_db,
                           num_steps=getattr(c, "num_steps", None), power_split=getattr(c, "power_split", None),
                           first_stop=int(stops[0]), hops=tuple(zip(self.urls, (int(s) for s in stops[1:]))))


def save_placement(agent, path: str | Path, env_kwargs: dict[str, Any] | None = None) -> Path:
    """Save a `D3QL` placement agent (``save_pretrained``) and its ``placement.json`` (the
    `ChainPlacement` arguments, default `PLACEMENT_ENV`) into ``path``; returns the folder."""
    d = agent.save_pretrained(path)
    (d / PLACEMENT_FILE).write_text(json.dumps({"env": dict(env_kwargs or PLACEMENT_ENV)}, indent=1, sort_keys=True))
    return d


class D3QLPlacement:
    """Placement by a trained `D3QL` agent on `ChainPlacement` (LEARN-GDM), as a serving policy.

    Node 0 of the environment is the access node, node ``i`` is ``urls[i - 1]``. Per request the
    environment is set to that one request (`ChainPlacement.request_frame`: its steps, ``deadline_s``,
    its wireless rate from the reported SNR, the nodes' ``backlog_s``) and the agent picks ``(chain, d)`` among the
    allowed actions that start at the access node or avoid it (the access node cannot be revisited);
    rejecting is not offered (the service does not drop requests). The request runs ``n = max(min_steps,
    T - d)`` steps, all on the chain (``k = n``), in blocks `ChainPlacement.split_blocks`.

    Args:
        agent: a `D3QL` whose observation / action sizes match the environment.
        env_kwargs: `ChainPlacement` arguments (``N = len(flops_per_s) = len(urls) + 1``).
        urls: the relay nodes.
        deadline_s: the deadline the observation assumes, s. slack: steps the quality floor allows dropping.
        merge_ratio: the merge ratio of every request (one of the handshake's; the UE's own if it asks).
        backlog_s: seconds each node is busy, (N,) or a callable returning them per request; None: idle
            (then the shipped policy keeps every request on the access node, the fastest).
    """

    def __init__(self, agent, env_kwargs: dict[str, Any], urls: Sequence[str], deadline_s: float = 2.0,
                 slack: int = 0, merge_ratio: float = 0.0, backlog_s=None):
        from splitldm.rl.envs.placement import ChainPlacement

        self.urls = _check_urls(urls, "urls")
        self.env = ChainPlacement(**env_kwargs)
        if self.env.N != len(self.urls) + 1:
            raise ValueError(f"urls: the placement model has {self.env.N} nodes (the access node + {self.env.N - 1}), "
                             f"got {len(self.urls)} URLs")
        if (agent.obs_dim, agent.n_actions) != (self.env.observation_space.shape[0], self.env.action_space.n):
            raise ValueError(f"agent: observation / action sizes {(agent.obs_dim, agent.n_actions)} do not match the "
                             f"placement environment's {(self.env.observation_space.shape[0], self.env.action_space.n)}")
        if not isinstance(deadline_s, (int, float)) or not 0 < deadline_s < 3600:
            raise ValueError(f"deadline_s: expected seconds in (0, 3600), got {deadline_s!r}")
        self.agent, self.deadline_s, self.slack = agent, float(deadline_s), slack
        self.merge_ratio = float(merge_ratio)
        if backlog_s is not None and not callable(backlog_s):
            backlog_s = tuple(float(b) for b in backlog_s)
            self.env.request_frame(self.env.min_steps, 1.0, 1.0, backlog_s=backlog_s)  # checks the shape and values
        self.backlog_s = backlog_s
        self.servable = np.array([a is not None and 0 not in a[0][1:] for a in self.env.actions], np.int8)

    @classmethod
    def from_pretrained(cls, path: str | Path, urls: Sequence[str], **kwargs) -> "D3QLPlacement":
        """Load a folder (or zoo name) written by `save_placement`; ``kwargs`` as the constructor."""
        from splitldm.rl.agents.common import resolve_pretrained
        from splitldm.rl.agents.d3ql import D3QL

        d = resolve_pretrained(path)
        f = d / PLACEMENT_FILE
        if not f.is_file():
            raise FileNotFoundError(f"path: {d} has no {PLACEMENT_FILE} (save the policy with save_placement)")
        try:
            env = json.loads(f.read_text())["env"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"path: {f} is not a placement file ({exc})") from None
        if not isinstance(env, dict):
            raise ValueError(f"path: {f}: 'env' is not a JSON object")
        return cls(D3QL.from_pretrained(d), env, urls, **kwargs)

    def place(self, steps: int, snr_db: float) -> dict[str, Any]:
        """The placement of a request of ``steps`` steps at ``snr_db``: action, node chain, steps, blocks."""
        from splitldm.analysis.limits import awgn_capacity

        env = self.env
        rate = env.bandwidth_hz * float(awgn_capacity(float(snr_db)))
        backlog = self.backlog_s() if callable(self.backlog_s) else self.backlog_s
        obs, mask = env.request_frame(int(steps), self.deadline_s, max(rate, 1.0), slack=self.slack, backlog_s=backlog)
        mask = mask & self.servable
        if not mask.any():
            raise WireError("placement", "no chain of the placement model is allowed now")
        action = self.agent.act(obs, mask)
        chain, d = env.actions[action]
        n = max(env.min_steps, int(steps) - d)
        return {"action": int(action), "chain": tuple(int(c) for c in chain), "steps": n,
                "blocks": env.split_blocks(chain, n)}

    def __call__(self, request: EdgeRequest, handshake: Handshake) -> ChainChoice:
        try:
            p = self.place(request.steps, request.snr_db)
        except ValueError as exc:
            raise WireError("steps", str(exc).split(": ", 1)[-1]) from None
        chain, blocks, n = p["chain"], p["blocks"], p["steps"]
        if n > MAX_SPLIT_STEP:
            raise WireError("steps", f"{n} steps exceed the frame's split step limit {MAX_SPLIT_STEP}")
        stops = np.cumsum(blocks).tolist()
        first = int(stops[0]) if chain[0] == 0 else 0
        hops = tuple((self.urls[node - 1], int(s)) for node, s in zip(chain, stops) if node != 0)
        ratio = self.merge_ratio if request.merge_ratio is None else request.merge_ratio
        try:
            handshake.ratio_index(ratio)
        except ValueError as exc:
            raise WireError("merge_ratio", str(exc).split(": ", 1)[1]) from None
        return ChainChoice(split_step=n, merge_ratio=float(ratio), num_steps=n, first_stop=first, hops=hops)


# ------------------------------------------------------------------ the node's work
@dataclass
class HopJob(Job):
    """A received hop: relay ``payload`` to ``stop``, then forward along ``hops`` (or finish)."""

    payload: Payload | None = None
    stop: int = 0
    hops: tuple[tuple[str, int], ...] = ()
    handshake: Handshake | None = None

    @property
    def key(self) -> tuple:
        return ("hop", id(self))  # never batched with another job


class ChainRunner(EdgeRunner):
    """`EdgeRunner` of a chain node: ``denoise`` runs each job's first block, ``forward`` sends the
    payload to the next hop (or applies the link when none is left); hop jobs run `SplitPipeline.relay`.

    Args (besides `EdgeRunner`'s): ``token`` for the next nodes (the chain shares one), ``hop_timeout_s``.
    """

    def __init__(self, pipe, codec, handshake, pad_to: int | None = None, token: str | None = None,
                 hop_timeout_s: float = 120.0):
        super().__init__(pipe, codec, handshake, pad_to=pad_to)
        if not isinstance(hop_timeout_s, (int, float)) or not 0 < hop_timeout_s <= 3600:
            raise ValueError(f"hop_timeout_s: expected seconds in (0, 3600], got {hop_timeout_s!r}")
        self.token, self.hop_timeout_s = token, float(hop_timeout_s)
        self._client = None
        self._finishers: dict[str, EdgeRunner] = {}

    @property
    def client(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.hop_timeout_s)
        return self._client

    def denoise(self, jobs: list[Job]) -> list[Payload]:
        """Text encoding + each job's first block ``[0, first_stop)`` (jobs grouped by it)."""
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(getattr(job.choice, "first_stop", job.choice.split_step), []).append(i)
        out: list[Payload | None] = [None] * len(jobs)
        for stop, idx in groups.items():
            shadow = [dataclasses.replace(jobs[i], choice=Choice(split_step=stop)) for i in idx]
            for i, payload in zip(idx, super().denoise(shadow)):
                out[i] = payload
        return out

    def forward(self, job: Job, payload: Payload) -> bytes:
        """The frame: from the next hop if the choice names one, else the link send half here."""
        hops = getattr(job.choice, "hops", ())
        if hops:
            return self.send(job, payload, hops, self.handshake)
        return super().forward(job, payload)

    def finish(self, job: Job, payload: Payload, handshake: Handshake) -> bytes:
        """The last node: the link send half and frame under the access node's ``handshake``."""
        if handshake.session == self.handshake.session:
            return super().forward(job, payload)
        if handshake.session not in self._finishers:
            self._finishers[handshake.session] = EdgeRunner(self.pipe, self.codec, handshake)
        return self._finishers[handshake.session].forward(job, payload)

    def send(self, job: Job, payload: Payload, hops: Sequence[tuple[str, int]], handshake: Handshake) -> bytes:
        """POST the payload to ``hops[0]`` (it runs up to its stop and goes on); returns the frame."""
        import httpx

        url, stop = hops[0]
        header = {"request": dataclasses.asdict(job.request), "choice": _choice_dict(job.choice),
                  "handshake": base64.b64encode(handshake.to_bytes()).decode(), "stop": int(stop),
                  "hops": [[u, int(s)] for u, s in hops[1:]]}
        body = pack_hop(header, payload.to_bytes())
        auth = {} if self.token is None else {"authorization": f"Bearer {self.token}"}
        try:
            r = self.client.post(url + "/v1/hop", content=body,
                                 headers={**auth, "content-type": "application/octet-stream"})
        except httpx.HTTPError as exc:
            raise HopError(f"hop: the next node {url} did not answer ({type(exc).__name__}: {exc})") from None
        if r.status_code != 200:
            try:
                message = r.json().get("error", r.text[:300])
            except ValueError:
                message = r.text[:300]
            raise HopError(f"hop: the next node {url} answered HTTP {r.status_code}: {message}")
        try:
            header_back = peek_header(r.content)
        except WireError as exc:
            raise HopError(f"hop: the next node {url} answered with no frame ({exc})") from None
        if header_back.split_step != job.choice.split_step:
            raise HopError(f"hop: the next node {url} answered a frame of split step {header_back.split_step}, "
                           f"expected {job.choice.split_step}")
        return r.content

    def run(self, jobs: list[Job]) -> list[bytes | Exception]:
        if not isinstance(jobs[0], HopJob):
            return super().run(jobs)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        out: list[bytes | Exception] = []
        for job in jobs:
            try:
                payload = self.split(0).relay(job.payload, job.stop)
                out.append(self.send(job, payload, job.hops, job.handshake) if job.hops
                           else self.finish(job, payload, job.handshake))
            except Exception as exc:
                logger.info("chain: hop %d failed: %s", job.seq, exc)
                out.append(exc)
        return out


class ChainService(EdgeService):
    """An `EdgeService` that can be a chain node: access node (``policy``: `ExplicitChain`,
    `D3QLPlacement`, or any policy returning plain choices) and relay (``POST /v1/hop``, `hop`).

    Args (besides `EdgeService`'s): ``hop_timeout_s`` (a hop's whole downstream time, s) and
    ``max_hop_bytes`` (largest hop message accepted, HTTP 413 above).
    """

    def __init__(self, pipe, codec, config: ServeConfig | None = None, *, codec_name: str = "seed-codec",
                 policy: Policy | None = None, hop_timeout_s: float = 120.0, max_hop_bytes: int = 64 << 20):
        config = config or ServeConfig()
        if isinstance(max_hop_bytes, bool) or not isinstance(max_hop_bytes, int) or max_hop_bytes < 1024:
            raise ValueError(f"max_hop_bytes: expected an int >= 1024, got {max_hop_bytes!r}")
        self.max_hop_bytes = max_hop_bytes
        pad = config.max_batch if config.pad_batches and config.max_batch > 1 else None
        runner = ChainRunner(pipe, codec, None, pad_to=pad, token=config.token, hop_timeout_s=hop_timeout_s)
        super().__init__(pipe, codec, config, codec_name=codec_name, policy=policy, runner=runner)
        runner.handshake = self.handshake

    def hop_job(self, body: bytes) -> HopJob:
        """A hop message -> a validated `HopJob` (errors: `_HTTPError` naming the field)."""
        mine = self.handshake
        try:
            header, data = unpack_hop(body)
            missing = {"request", "choice", "handshake", "stop", "hops"} - set(header)
            if missing:
                raise WireError(sorted(missing)[0], "missing from the hop header")
            try:
                hs = Handshake.from_bytes(base64.b64decode(header["handshake"], validate=True))
            except (binascii.Error, TypeError, ValueError) as exc:
                if isinstance(exc, WireError):
                    raise
                raise WireError("handshake", f"not base64 ({exc})") from None
            for name in SHARED_FIELDS:
                if getattr(hs, name) != getattr(mine, name):
                    raise _HTTPError(409, name, f"{name}: the access node's {getattr(hs, name)!r} differs from this "
                                                f"node's {getattr(mine, name)!r} (wrong fingerprint)")
            if hs.codec.get("fingerprint") != mine.codec["fingerprint"]:
                raise _HTTPError(409, "codec", f"codec: the access node's codec {hs.codec.get('fingerprint')!r} "
                                               f"differs from this node's {mine.codec['fingerprint']!r}")
            if not isinstance(header["request"], dict):
                raise WireError("request", "expected a JSON object")
            request = EdgeRequest.from_dict(header["request"], max_prompts=self.config.max_batch)
            if request.session != hs.session:
                raise WireError("session", f"the request names session {request.session!r}, the handshake is "
                                           f"{hs.session!r}")
            choice = _choice_from(header["choice"], request, hs)
            hops = _hops_from(header["hops"])
            stop = header["stop"]
            settings = settings_for(self.pipe, request)
            payload = Payload.from_bytes(data)
            check_split_payload(payload, self.pipe)
            if payload.meta["model"] != mine.model:
                raise _HTTPError(409, "model", f"model: the payload's fingerprint {payload.meta['model']!r} differs "
                                               f"from this node's {mine.model!r}")
            stops = [payload.meta["step"], stop] + [s for _, s in hops]
            if any(isinstance(s, bool) or not isinstance(s, int) for s in stops) or stops != sorted(stops) \
                    or stops[-1] != choice.split_step:
                raise WireError("stop", f"block ends {stops} (payload step, this node, the hops after it) must be "
                                        f"non-decreasing ints ending at the split step {choice.split_step}")
            if payload.meta["num_steps"] != request.steps:
                raise WireError("payload", f"the payload runs {payload.meta['num_steps']} steps, the request "
                                           f"{request.steps}")
        except WireError as exc:
            raise _HTTPError(400, exc.field, f"{exc.field}: {str(exc).split(': ', 1)[-1]}") from None
        except PayloadError as exc:
            raise _HTTPError(400, "payload", str(exc)) from None
        return HopJob(seq=-1, request=request, choice=choice, settings=settings, payload=payload, stop=stop,
                      hops=hops, handshake=hs)

    def _refuse(self, exc: _HTTPError) -> JSONResponse:
        if exc.status != 401:
            self.ledger.reject()
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)

    async def hop(self, request: Request):
        """``POST /v1/hop``: relay a payload (see the module docstring); 200 + the frame bytes, or JSON error."""
        try:
            job = self.hop_job(await self.admit(request, self.max_hop_bytes))
        except _HTTPError as exc:
            return self._refuse(exc)
        seq = job.seq = self.ledger.accept()
        self.inflight += 1
        ended, future = False, None
        try:
            future = self.batcher.submit(job)
            try:
                frame = await future
            except Exception as exc:
                ended = self.ledger.finish(seq, "error", str(exc)) or True
                field = getattr(exc, "field", "server")
                return JSONResponse({"error": str(exc), "field": field},
                                    status_code=502 if isinstance(exc, HopError) else 422)
            ended = self.ledger.finish(seq, "completed") or True
            return Response(frame, media_type="application/octet-stream")
        finally:
            self.inflight -= 1
            if not ended:
                if future is not None:
                    future.cancel()
                self.ledger.finish(seq, "error", "the previous node disconnected")


def create_chain_app(service: ChainService):
    """`create_app` plus ``POST /v1/hop`` (the inter-node hop) for a `ChainService`."""
    if not isinstance(service, ChainService):
        raise TypeError(f"service: expected a ChainService, got {type(service).__name__}")
    app = create_app(service)
    app.post("/v1/hop")(service.hop)
    return app
