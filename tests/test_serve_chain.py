"""Multi-hop chains of real ES processes on loopback (`splitldm.serve.chain`, LEARN-GDM).

Three ``serve-edge`` processes A -> B -> C (A the access node, blocks 1, 1, 1 of a 4-step request,
the UE runs the last step): the received latents and images equal the single-node service's (C
alone) and the in-process `SplitPipeline`'s with the same link and seeds, bit for bit. A fourth
access node D -> (B, C), placed by the shipped D3QL policy (``d3ql-placement``), runs in this process. Faults: damaged, foreign and
mis-stopped hop messages are refused with the field named; a dead next hop ends the request with an
error naming the node; every server stays up and every ledger shows each accepted request ended once.
"""

from __future__ import annotations

import base64
import dataclasses
import os
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
from splitldm.serve.app import ServeConfig  # noqa: E402
from splitldm.serve.chain import (ChainChoice, ChainService, D3QLPlacement, ExplicitChain,  # noqa: E402
                                  create_chain_app, pack_hop, unpack_hop)
from splitldm.serve.client import RemoteEdge, RemoteError  # noqa: E402
from splitldm.serve.wire import WireError, peek_header  # noqa: E402
from test_serve import TOKEN, Server, _free_port, _reference, _settled  # noqa: E402

STEPS = 4
COMMON = ("--max-batch", "2", "--no-pad")


class Node(Server):
    """`test_serve.Server`, started without waiting (the four processes load their models in parallel)."""

    def start_async(self) -> "Node":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SPLITLDM_TEST_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "splitldm.cli.main", "serve-edge", "--port", str(self.port),
                                      "--token-env", "SPLITLDM_TEST_TOKEN", "--threads", "1", *self.args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def wait(self, timeout_s: float = 180.0) -> "Node":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("server did not start")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    return sl.load_pipeline("tiny")


@pytest.fixture(scope="module")
def nodes():
    """A -> B -> C (explicit blocks 1,1,1), three processes started together."""
    c, b = Node(*COMMON), Node(*COMMON)
    a = Node(*COMMON, "--chain", f"{b.url},{c.url}", "--chain-blocks", "1,1,1")
    servers = {"a": a, "b": b, "c": c}
    try:
        for s in servers.values():  # start all, then wait for each (they load in parallel)
            s.start_async()
        for s in servers.values():
            s.wait()
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="module")
def d3ql_node(nodes, pipe):
    """An access node D -> (B, C) placed by the shipped D3QL policy, in this process (uvicorn in a thread)."""
    import uvicorn

    placement = D3QLPlacement.from_pretrained("d3ql-placement", [nodes["b"].url, nodes["c"].url])
    service = ChainService(pipe, sl.SeedCodec.from_pretrained("seed-codec"),
                           ServeConfig(max_batch=2, pad_batches=False, token=TOKEN), policy=placement)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_chain_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    yield url, placement
    server.should_exit = True
    thread.join(10)


def _ledgers_exact(servers, *names):
    for name in names:
        with RemoteEdge(servers[name].url, "tiny", token=TOKEN) as edge:
            stats = _settled(edge)
        assert stats["pending"] == 0 and stats["duplicated"] == 0, (name, stats)


def test_three_process_chain_equals_in_process_and_single_node(nodes, pipe):
    a, c = nodes["a"], nodes["c"]
    with RemoteEdge(a.url, pipe, token=TOKEN) as ue_a, RemoteEdge(c.url, pipe, token=TOKEN) as ue_c:
        assert ue_a.handshake.session == ue_c.handshake.session  # same models, codec and channel
        for prompts, seed, link_seed, ratio in [("a red circle", 1, 7, 0.5), (["a blue square", "a green ring"], 2, 3, 0.0)]:
            kw = dict(seed=seed, link_seed=link_seed, snr_db=10.0, steps=STEPS, merge_ratio=ratio)
            events = []
            chain = ue_a.request(prompts, progress=events.append, **kw)
            choice = events[0]["choice"]
            assert (choice["first_stop"], choice["hops"], choice["split_step"]) == (1, [[nodes["b"].url, 2], [c.url, 3]], 3)
            single = ue_c.request(prompts, split_step=3, **kw)
            assert chain.split_step == single.split_step == 3
            assert torch.equal(chain.payload.tensors["latents"], single.payload.tensors["latents"])
            images = ue_a.finish(chain, output_type="np")
            assert np.array_equal(images, ue_c.finish(single, output_type="np"))
            assert np.array_equal(images, _reference(pipe, ue_a.codec, prompts, seed, link_seed, ratio, k=3, steps=STEPS))
    _ledgers_exact(nodes, "a", "b", "c")


def test_d3ql_placement_runs_the_whole_schedule_on_the_chain(nodes, d3ql_node, pipe):
    url, placement = d3ql_node
    with RemoteEdge(url, pipe, token=TOKEN) as ue:
        hops = []
        for steps, snr, backlog in ((6, 10.0, None), (6, 10.0, (1.5, 0.0, 0.0)), (8, 0.0, (1.9, 1.0, 0.0))):
            placement.backlog_s = backlog  # idle: the access node alone (the fastest); busy: the relays
            p = placement.place(steps, snr)
            events = []
            out = ue.generate("a red circle", seed=5, link_seed=1, snr_db=snr, steps=steps, output_type="np",
                              progress=events.append)
            choice = events[0]["choice"]
            n = p["steps"]
            assert choice["steps"] == choice["split_step"] == n == out.received.split_step  # the UE only decodes
            assert n == max(4, steps - (0, 2, 4)[(p["action"] - 1) % 3])
            assert sum(p["blocks"]) == n and len(p["blocks"]) == len(p["chain"])
            assert [h[0] for h in choice["hops"]] == [(None, nodes["b"].url, nodes["c"].url)[i] for i in p["chain"] if i]
            ref = _reference(pipe, ue.codec, "a red circle", 5, 1, 0.0, k=n, steps=n, snr_db=snr)
            assert np.array_equal(out.images, ref)
            hops.append(choice["hops"])
        assert hops[0] == [] and hops[1] and hops[2]  # the D3QL policy sent two of them down the chain
        stats = _settled(ue)
        assert (stats["completed"], stats["pending"], stats["duplicated"]) == (3, 0, 0)
    _ledgers_exact(nodes, "b", "c")


def _hop_body(ue: RemoteEdge, pipe, stop=2, hops=(), **over):
    """A valid hop message from an in-process access node: payload at step 1 of 4."""
    req = ue.make_request("a red circle", seed=1, link_seed=2, snr_db=10.0, steps=STEPS)
    split = sl.SplitPipeline(pipe, split_step=1, generator_state="none")
    payload = split.edge(req.prompts, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1))
    header = {"request": dataclasses.asdict(req), "handshake": base64.b64encode(ue.handshake.to_bytes()).decode(),
              "choice": {"split_step": 3, "merge_ratio": 0.0, "power_db": 0.0, "num_steps": None, "power_split": None},
              "stop": stop, "hops": [list(h) for h in hops]}
    header.update(over)
    return pack_hop(header, payload.to_bytes())


def test_bad_hops_are_refused_with_the_field_named(nodes, pipe):
    c = nodes["c"]
    url = c.url + "/v1/hop"
    auth = {"authorization": f"Bearer {TOKEN}"}
    with RemoteEdge(c.url, pipe, token=TOKEN) as ue:
        before = ue.ledger()
        good = _hop_body(ue, pipe, stop=3)
        r = httpx.post(url, content=good, headers=auth, timeout=60)
        assert r.status_code == 200 and peek_header(r.content).split_step == 3  # C ran [1, 3) and sent the frame
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x10
        foreign = ue.handshake.to_dict() | {"model": "0" * 16}
        from splitldm.serve.wire import Handshake
        wrong_model = _hop_body(ue, pipe, handshake=base64.b64encode(Handshake(**foreign).to_bytes()).decode())
        cases = [
            (b"not a hop at all", 400, "hop"),
            (bytes(flipped), 400, "crc32"),
            (wrong_model, 409, "model"),
            (_hop_body(ue, pipe, stop=2), 400, "stop"),  # the last stop must be the split step
            (_hop_body(ue, pipe, stop=3, hops=[["ftp://x", 3]]), 400, "hops"),
            (_hop_body(ue, pipe, stop=3, choice={"split_step": 3}), 400, "choice"),
            (_hop_body(ue, pipe, stop=3, request=[1, 2]), 400, "request"),
        ]
        for body, status, field in cases:
            r = httpx.post(url, content=body, headers=auth, timeout=60)
            assert (r.status_code, r.json()["field"]) == (status, field), r.text
        assert httpx.post(url, content=good, timeout=60).status_code == 401
        after = _settled(ue)
        assert after["accepted"] == before["accepted"] + 1 and after["completed"] == before["completed"] + 1
        assert after["rejected"] == before["rejected"] + len(cases)
    assert c.alive()


def test_hop_message_round_trip_and_errors():
    body = pack_hop({"stop": 2}, b"payload-bytes")
    assert unpack_hop(body) == ({"stop": 2}, b"payload-bytes")
    with pytest.raises(WireError, match="CRC32"):
        unpack_hop(body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(WireError, match="not a hop message"):
        unpack_hop(b"XYZ" + body[3:])
    with pytest.raises(TypeError, match="data: expected bytes"):
        unpack_hop("text")


def test_explicit_chain_and_choice_checks():
    from splitldm.serve.session import EdgeRequest

    rule = ExplicitChain(["http://127.0.0.1:9001", "http://127.0.0.1:9002/"], [2, 0, 1])
    req = EdgeRequest(request_id=0, session="s", model="m", prompts=["x"], seed=0, link_seed=0, snr_db=5.0, steps=4)

    class HS:
        def ratio_index(self, r):
            return 0

    choice = rule(req, HS())
    assert (choice.split_step, choice.first_stop, choice.hops) == (3, 2, (("http://127.0.0.1:9001", 2), ("http://127.0.0.1:9002", 3)))
    with pytest.raises(ValueError, match="blocks: expected 3 ints"):
        ExplicitChain(["http://127.0.0.1:9001", "http://127.0.0.1:9002"], [1, 1])
    with pytest.raises(ValueError, match="urls: a chain visits each node once"):
        ExplicitChain(["http://127.0.0.1:9001", "http://127.0.0.1:9001/"], [1, 1, 1])
    with pytest.raises(ValueError, match="urls: expected an http"):
        ExplicitChain(["127.0.0.1:9001"], [1, 1])
    with pytest.raises(ValueError, match="hops: block ends"):
        ChainChoice(split_step=3, first_stop=2, hops=(("http://h:1", 1),))


def test_shipped_placement_policy_loads_and_maps_its_actions():
    from splitldm.serve.session import EdgeRequest

    relays = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    placement = D3QLPlacement.from_pretrained("d3ql-placement", relays)
    env = placement.env
    assert (placement.agent.obs_dim, placement.agent.n_actions, env.N) == (63, 46, 3)
    for steps in range(4, 13):
        for snr in (-5.0, 10.0, 30.0):
            p = placement.place(steps, snr)
            chain, d = env.actions[p["action"]]
            assert p["chain"] == chain and 0 not in chain[1:]  # the access node is never revisited
            assert p["steps"] == max(4, steps - d) and p["blocks"] == env.split_blocks(chain, p["steps"])
    with pytest.raises(ValueError, match=r"n_ask: expected an int in \[4, 12\]"):
        placement.place(13, 10.0)

    class HS:
        def ratio_index(self, r):
            return 0

    req = EdgeRequest(request_id=0, session="s", model="m", prompts=["x"], seed=0, link_seed=0, snr_db=5.0, steps=8)
    choice = placement(req, HS())
    p = placement.place(8, 5.0)
    assert choice.split_step == choice.num_steps == p["steps"]
    assert [u for u, _ in choice.hops] == [relays[i - 1] for i in p["chain"] if i]
    with pytest.raises(WireError, match="steps: expected an int in"):
        placement(dataclasses.replace(req, steps=13), HS())
    with pytest.raises(ValueError, match="urls: the placement model has 3 nodes"):
        D3QLPlacement.from_pretrained("d3ql-placement", relays[:1])
    with pytest.raises(ValueError, match="backlog_s: expected 3 finite seconds"):
        env.request_frame(6, 2.0, 1e6, backlog_s=[0.0, -1.0, 0.0])


@pytest.mark.parametrize("argv,message", [
    (["--chain-blocks", "1,1"], "--chain-blocks: needs --chain"),
    (["--placement", "d3ql-placement"], "--placement: needs --chain"),
    (["--chain", "localhost:9"], "--chain: expected an http(s)://host:port URL"),
    (["--chain", "http://127.0.0.1:9001"], "--chain: give exactly one of --chain-blocks"),
    (["--chain", "http://127.0.0.1:9001", "--chain-blocks", "1,1,1"], "--chain-blocks: expected 2 ints"),
    (["--chain", "http://127.0.0.1:9001", "--chain-blocks", "1,x"], "--chain-blocks: expected comma-separated ints"),
    (["--chain", "http://127.0.0.1:9001", "--chain-blocks", "1,1", "--placement", "d3ql-placement"],
     "--chain: give exactly one of"),
    (["--chain", "http://127.0.0.1:9001", "--placement", "d3ql-placement"],
     "--placement: urls: the placement model has 3 nodes (the access node + 2), got 1 URLs"),
    (["--chain", "http://127.0.0.1:9001", "--placement", "/no/such/folder"], "--placement:"),
    (["--chain", "http://127.0.0.1:8000", "--chain-blocks", "1,1"], "--chain: http://127.0.0.1:8000 is this node"),
    (["--chain", "http://127.0.0.1:9001", "--chain-blocks", "1,1", "--ray"], "--chain: a chain of Ray Serve"),
    (["--hop-timeout", "0"], "--hop-timeout: expected seconds"),
    (["--placement-backlog", "1,0,0"], "--placement-backlog: needs --placement"),
    (["--chain", "http://127.0.0.1:9001,http://127.0.0.1:9002", "--placement", "d3ql-placement",
      "--placement-backlog", "1,0"], "--placement: backlog_s: expected 3 finite seconds"),
])
def test_bad_chain_flags_exit_2_with_one_line(argv, message, capsys, monkeypatch):
    from splitldm.cli.main import main

    def loaded(*args, **kwargs):  # the flags are checked before the model loads: never reached
        raise AssertionError(f"serve-edge accepted {argv}")

    monkeypatch.setattr("splitldm.pipeline.models.load_pipeline", loaded)

    try:
        rc = main(["serve-edge", "--port", "8000", *argv])
    except SystemExit as exc:  # argparse's own type errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_dead_next_hop_gives_a_clear_error_and_the_server_stays_up(nodes, pipe):
    """Last: stops B (A's next hop)."""
    nodes["b"].stop()
    with RemoteEdge(nodes["a"].url, pipe, token=TOKEN) as ue:
        with pytest.raises(RemoteError, match=rf"hop: the next node {nodes['b'].url} did not answer") as err:
            ue.generate("a red circle", seed=1, steps=STEPS, output_type="np")
        assert err.value.field == "hop"
        stats = _settled(ue)
        assert stats["errors"] >= 1 and stats["pending"] == 0 and stats["duplicated"] == 0
    assert nodes["a"].alive()
    assert _free_port() > 0
