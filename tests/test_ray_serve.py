"""The ES on Ray Serve: a local Ray instance (2 CPUs, small object store, no dashboard), 2 replicas behind
Ray Serve's HTTP proxy on loopback, the unchanged UE client; the images equal the in-process ones bit for
bit at the same thread count (one), and everything shuts down."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import splitldm as sl  # noqa: E402
from splitldm.link.stack import Link  # noqa: E402
from splitldm.serve.app import ServeConfig  # noqa: E402
from splitldm.serve.client import RemoteEdge  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(pipe, codec, prompt, seed, link_seed, ratio, k, steps, snr_db):
    stages = [sl.TokenMerge(ratio)] if ratio else []
    link = Link(stages + [codec, sl.RayleighBlockFading(snr_db=snr_db, csi="mmse")])
    return sl.SplitPipeline(pipe, split_step=k, link=link)(
        prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
        link_generator=torch.Generator().manual_seed(link_seed), output_type="np").images


def test_edge_app_rejects_bad_options():
    from splitldm.serve.ray_app import edge_app

    with pytest.raises(ValueError, match="replicas"):
        edge_app(replicas=0)
    with pytest.raises(ValueError, match="num_cpus"):
        edge_app(num_cpus=0)
    with pytest.raises(TypeError, match="config"):
        edge_app(config={"max_batch": 1})
    with pytest.raises(TypeError, match="autoscaling"):
        edge_app(autoscaling=3)


@pytest.mark.slow  # Ray and 2 replicas start in minutes on a loaded 2-core machine
def test_two_replicas_serve_bit_identical_images():
    from splitldm.serve.ray_app import edge_app, run, shutdown

    start = time.monotonic()
    # The replicas run with threads=1 (edge_app's default); floating-point sums are split by thread count,
    # so the UE client and the in-process reference run with one thread too (docs/guides/determinism.md).
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe, codec = sl.load_pipeline("tiny"), sl.SeedCodec.from_pretrained("seed-codec")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    try:
        app = edge_app(config=ServeConfig(max_batch=1), replicas=2, num_cpus=1, name="edge-test")
        url = run(app, port=_free_port(), name="edge-test")
        status = serve.status().applications["edge-test"]
        assert status.status == "RUNNING"
        assert status.deployments["edge-test"].replica_states.get("RUNNING") == 2
        cases = [("a red circle", 1, 7, 0.5), ("a blue square", 2, 3, 0.0), ("a green triangle", 3, 5, 0.25),
                 ("a yellow circle", 4, 9, 0.0)]
        with RemoteEdge(url, pipe, token=None, timeout_s=120) as edge:
            for prompt, seed, link_seed, ratio in cases:
                out = edge.generate(prompt, seed=seed, link_seed=link_seed, snr_db=10.0, steps=4, split_step=2,
                                    merge_ratio=ratio, output_type="np")
                ref = _reference(pipe, codec, prompt, seed, link_seed, ratio, 2, 4, 10.0)
                np.testing.assert_array_equal(out.images, ref, err_msg=prompt)
                assert out.received.bits["side_info_bits"] == 32
    finally:
        shutdown()
        torch.set_num_threads(threads_before)
    assert not ray.is_initialized()
    assert time.monotonic() - start < 300
