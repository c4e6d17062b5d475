"""The ES service in a real second process (uvicorn on a free loopback port) and the UE in this one.

Equivalence: with fixed seeds the images equal the in-process `SplitPipeline(...)(...)` bit for bit.
Batching: concurrent requests batch, and each image equals the one its request gives alone.
Faults: a UE that disconnects mid-transfer, an ES restarted between requests, oversized, truncated,
bit-flipped and foreign messages, a wrong model fingerprint, a slow client, a missing token: each gets
a clear error or time-out, the server stays up, and its ledger shows every accepted request ended once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import splitldm as sl  # noqa: E402
from splitldm.analysis.limits import capacity  # noqa: E402
from splitldm.link.stack import Link  # noqa: E402
from splitldm.serve.batcher import DynamicBatcher, Ledger  # noqa: E402
from splitldm.serve.client import RemoteEdge, RemoteError  # noqa: E402
from splitldm.serve.wire import WireError, pack_envelope  # noqa: E402
from splitldm.tome import side_info_bits  # noqa: E402

TOKEN = "test-token-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.proc = None

    def start(self, timeout_s: float = 90.0) -> "Server":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SPLITLDM_TEST_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "splitldm.cli.main", "serve-edge", "--port", str(self.port),
                                      "--token-env", "SPLITLDM_TEST_TOKEN",
                                      "--threads", "1", *self.args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError("server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alive(self) -> bool:
        return httpx.get(self.url + "/healthz", timeout=2).status_code == 200


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bit-identical across processes needs the same CPU kernels: one torch thread in both (with 2,
    the server's and this process's reductions were seen to differ by ~6e-6)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    return sl.load_pipeline("tiny")


@pytest.fixture(scope="module")
def codec():
    return sl.SeedCodec.from_pretrained("seed-codec")


@pytest.fixture(scope="module")
def server():
    s = Server("--max-batch", "2", "--no-pad", "--read-timeout", "1.5", "--max-request-bytes", "4096").start()
    yield s
    s.stop()


def _reference(pipe, codec, prompts, seed, link_seed, ratio, k=2, steps=4, snr_db=10.0):
    stages = [sl.TokenMerge(ratio)] if ratio else []
    link = Link(stages + [codec, sl.RayleighBlockFading(snr_db=snr_db, csi="mmse")])
    return sl.SplitPipeline(pipe, split_step=k, link=link)(
        prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
        link_generator=torch.Generator().manual_seed(link_seed), output_type="np").images


def _settled(edge: RemoteEdge, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = edge.ledger()
        if stats["pending"] == 0 or time.monotonic() > deadline:
            return stats


def test_two_processes_bit_identical_to_in_process(server, pipe, codec):
    with RemoteEdge(server.url, pipe, token=TOKEN) as edge:
        for prompts, seed, link_seed, ratio in [("a red circle", 1, 7, 0.5), (["a blue square", "a green triangle"], 2, 3, 0.0)]:
            events = []
            out = edge.generate(prompts, seed=seed, link_seed=link_seed, snr_db=10.0, steps=4, split_step=2,
                                merge_ratio=ratio, output_type="np", progress=events.append)
            ref = _reference(pipe, codec, prompts, seed, link_seed, ratio)
            assert np.array_equal(out.images, ref)
            assert [e["event"] for e in events] == ["accepted", "done"]
            bits = out.received.bits
            assert bits["side_info_bits"] == 32
            assert bits["index_map_bits"] == (side_info_bits((8, 8), 32, 2, 2, False, 1) if ratio else 0)
            assert bits["channel_symbols"] == out.images.shape[0] * (16 if ratio else 32)
            # the frame on the socket: 2 + 2 header/check, index map, 8 bytes a symbol, 4 + 8 emulated CSI, 4 CRC32
            p = out.images.shape[0]
            assert bits["frame_bytes"] == 8 + -(-bits["index_map_bits"] // 8) + 8 * bits["channel_symbols"] + 12 * p
            cap = capacity(10.0, "rayleigh")
            assert bits["channel_uses"] == pytest.approx(bits["channel_symbols"] + (32 + bits["index_map_bits"]) / cap)
        # the ES applied the channel: another link seed gives another image
        other = edge.generate("a red circle", seed=1, link_seed=8, snr_db=10.0, steps=4, split_step=2,
                              merge_ratio=0.5, output_type="np")
        assert not np.array_equal(other.images, _reference(pipe, codec, "a red circle", 1, 7, 0.5))
        stats = _settled(edge)
        assert stats["pending"] == 0 and stats["duplicated"] == 0


def test_cli_generate_edge(server, tmp_path, monkeypatch):
    from splitldm.cli.main import main

    monkeypatch.setenv("SPLITLDM_TEST_TOKEN", TOKEN)
    out = tmp_path / "remote.png"
    assert main(["generate", "a red circle", "--edge", server.url, "--steps", "4", "--split-step", "2",
                 "--token-env", "SPLITLDM_TEST_TOKEN", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["generate", "a red circle", "--edge", f"http://127.0.0.1:{_free_port()}", "--steps", "4",
                 "--out", str(out)]) == 2  # no server there: one line, exit 2


def _post(url: str, body: bytes, token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url + "/v1/generate", content=body, headers=headers, timeout=30)


def test_faults_each_get_a_clear_error_and_the_ledger_stays_exact(server, pipe):
    edge = RemoteEdge(server.url, pipe, token=TOKEN)
    before = edge.ledger()
    good = pack_envelope("R", edge.make_request("a red circle", steps=4, split_step=2).to_dict())
    # oversized, truncated, bit-flipped, foreign
    r = _post(server.url, good + b" " * 5000)
    assert r.status_code == 413 and r.json()["field"] == "length"
    r = _post(server.url, good[:-7])
    assert r.status_code == 400 and r.json()["field"] == "length"
    flipped = bytearray(good)
    flipped[40] ^= 0x10
    r = _post(server.url, bytes(flipped))
    assert r.status_code == 400 and r.json()["field"] == "crc32"
    r = _post(server.url, edge.handshake.to_bytes())
    assert r.status_code == 400 and r.json()["field"] == "kind"
    r = _post(server.url, os.urandom(200))
    assert r.status_code == 400 and r.json()["field"] in ("magic", "length")
    # wrong model fingerprint, stale session
    req = edge.make_request("a red circle", steps=4).to_dict()
    r = _post(server.url, pack_envelope("R", {**req, "model": "0123456789abcdef"}))
    assert r.status_code == 409 and r.json()["field"] == "model"
    r = _post(server.url, pack_envelope("R", {**req, "session": "0123456789abcdef"}))
    assert r.status_code == 409 and r.json()["field"] == "session"
    # authentication
    r = _post(server.url, good, token=None)
    assert r.status_code == 401 and r.json()["field"] == "authorization"
    assert httpx.get(server.url + "/v1/handshake", timeout=5).status_code == 401
    # a slow client that never finishes its request: 408 after the read time-out, nothing accepted
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Length: 1000\r\n\r\n" + good[:20])
        start = time.monotonic()
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 8
    # a UE that disconnects mid-transfer: request sent, response abandoned after its first bytes
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                      + f"\r\nContent-Length: {len(good)}\r\n\r\n".encode() + good)
            s.recv(16)
    # a frame damaged after it left the ES is refused by the UE
    req = edge.make_request("a red circle", steps=4, split_step=2, merge_ratio=0.5)
    frame, _, _ = edge.send(req)
    damaged = bytearray(frame)
    damaged[len(frame) // 2] ^= 0x01
    with pytest.raises(WireError, match="crc32"):
        edge.decode(req, bytes(damaged))
    with pytest.raises(WireError, match="request_id"):
        edge.decode(edge.make_request("a red circle", steps=4), frame)
    # the server is still up and serves; every accepted request ended exactly once
    assert server.alive()
    assert edge.generate("a red circle", steps=4, split_step=2, output_type="np").images.shape == (1, 64, 64, 3)
    stats = _settled(edge)
    assert stats["pending"] == 0 and stats["duplicated"] == 0
    assert stats["accepted"] == stats["completed"] + stats["errors"]
    assert stats["accepted"] - before["accepted"] == 4  # 2 disconnected + 2 completed; the rest were refused
    assert stats["rejected"] - before["rejected"] == 8  # 413, 4 x 400, 2 x 409, 408 (401s are not counted)
    edge.close()


def test_es_restarted_between_requests_then_concurrent_requests_batch(server, pipe):
    """The module's server is stopped (a request in between fails cleanly) and restarted with batching on
    (max 4 images, padded batches); the UE's cached session still works. Then concurrent requests share
    a batch and each image equals the one its request gives alone."""
    edge = RemoteEdge(server.url, pipe, token=TOKEN)
    first = edge.generate("a red circle", seed=4, link_seed=5, steps=4, split_step=2, output_type="np").images
    server.stop()
    with pytest.raises(RemoteError, match="edge:") as info:
        edge.generate("a red circle", seed=4, link_seed=5, steps=4, split_step=2, output_type="np")
    assert info.value.status == 0
    server.args = ("--max-batch", "4", "--max-wait-ms", "400")
    server.start()
    again = edge.generate("a red circle", seed=4, link_seed=5, steps=4, split_step=2, output_type="np").images
    assert np.abs(first - again).max() <= 1e-3  # same session; batch shape 4 instead of 1: float rounding only

    jobs = [("a red circle", 1), ("a blue square", 2), ("a green triangle", 3)]
    got: dict[int, object] = {}

    def one(i):
        got[i] = edge.request(jobs[i][0], seed=jobs[i][1], link_seed=i, steps=4, split_step=2, merge_ratio=0.25)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert max(edge.ledger()["batch_sizes"]) >= 2  # they shared a batch
    for i, (prompt, seed) in enumerate(jobs):
        together = edge.finish(got[i], "np")
        alone = edge.generate(prompt, seed=seed, link_seed=i, steps=4, split_step=2, merge_ratio=0.25,
                              output_type="np").images
        assert np.abs(together - alone).max() <= 1e-5
    stats = _settled(edge)
    assert stats["completed"] == 7 and stats["pending"] == 0 and stats["duplicated"] == 0
    edge.close()


class _Job:
    def __init__(self, name, key, rows=1):
        self.name, self.key, self.rows = name, key, rows


def test_batcher_is_fifo_and_fills_batches_by_key():
    async def scenario():
        batches = []

        def run(jobs):
            batches.append([j.name for j in jobs])
            return [j.name for j in jobs]

        b = DynamicBatcher(run, max_batch=2, max_wait_s=0.05)
        b.start()
        futures = [b.submit(_Job(n, k)) for n, k in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a"), ("b2", "b")]]
        results = await asyncio.gather(*futures)
        await b.stop()
        return batches, results

    batches, results = asyncio.run(scenario())
    assert results == ["a1", "b1", "a2", "a3", "b2"]
    assert batches == [["a1", "a2"], ["b1", "b2"], ["a3"]]  # the oldest job opens each batch: none starves


def test_ledger_counts_duplicates():
    ledger = Ledger()
    seq = ledger.accept()
    assert ledger.finish(seq, "completed") and not ledger.finish(seq, "error")
    assert ledger.stats() == {"accepted": 1, "completed": 1, "errors": 0, "pending": 0, "duplicated": 1, "rejected": 0}
    with pytest.raises(ValueError, match="outcome"):
        ledger.finish(seq, "lost")
