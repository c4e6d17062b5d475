"""Load test of the ES service: N concurrent UE clients x R requests against one ES process on loopback.

One server process is started (one model load): it hosts one `EdgeService` per max batch size
(``--batch-sizes``, default ``1,8``; they share the pipeline and codec), each on its own free loopback
port. The phases run one after the other against the same process: batch size 1 is the sequential
service, so ``batched_vs_sequential`` compares throughputs measured in the same run and process. The
clients request frames concurrently (each request decoded and checked on arrival: CRCs, request id,
sizes; ``--finish`` also runs the UE's receive half and steps [k, T) + VAE), and each service's request
ledger is read at the end. The last line printed is one JSON object: ``requests``, ``completed``,
``errors``, ``lost``, ``duplicated``, ``p50_s``, ``p95_s``, ``throughput_rps`` (of the largest batch
size), ``batched_vs_sequential`` (its throughput over batch size 1's, same run), ``throughput_by_batch``,
``side_info_bits_per_image``, ``index_map_bits_per_image``, ``channel_uses_per_image``,
``handshake_bits``, ``server_starts`` and ``wall_s``.

    python bench/service.py --quick          # 8 clients x 2 requests per batch size (under a minute)
    python bench/service.py                  # 32 clients x 20 requests per batch size
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# torch, numpy and splitldm are imported inside the functions: the server process is started before
# this process pays for those imports, so the two start-ups overlap (--quick stays under a minute).

logger = logging.getLogger("bench.service")
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle", "a red square", "a blue triangle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(args) -> subprocess.Popen:
    """Start one server process hosting a service per max batch size (`wait_ready` gives their URLs)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--batch-sizes", args.batch_sizes,
           "--max-wait-ms", str(args.max_wait_ms), "--split-step", str(args.split_step), "--blocks", str(args.blocks),
           "--max-concurrency", str(max(64, 2 * args.clients))]  # torch threads: the same environment
    log = tempfile.TemporaryFile()  # the server's stderr (a pipe nobody reads could fill and block it)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.log = log
    return proc


def wait_ready(proc: subprocess.Popen, timeout_s: float) -> dict[int, str]:
    """The ``{max_batch: url}`` line the server process prints once every service answers."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        proc.wait()
        proc.log.seek(0)
        raise RuntimeError(f"server did not start: {proc.log.read().decode(errors='replace')[-2000:]}")
    return {int(k): v for k, v in json.loads(line)["urls"].items()}


def serve(args) -> int:
    """The server process (``--serve``): one `EdgeService` per max batch size, one process, one model."""
    import signal

    import torch
    import uvicorn

    from splitldm.link.codec import SeedCodec
    from splitldm.pipeline.models import load_pipeline
    from splitldm.serve.app import EdgeService, ServeConfig, create_app

    from splitldm.link.symbols import complex_normal

    pipe, codec = load_pipeline("tiny"), SeedCodec.from_pretrained("seed-codec")
    complex_normal((1, 1), torch.Generator())  # the channel's first draw imports Sionna: do it before "ready"
    servers, urls = [], {}
    for b in (int(x) for x in args.batch_sizes.split(",")):
        config = ServeConfig(max_batch=b, max_wait_s=args.max_wait_ms / 1000.0, split_step=args.split_step,
                             max_concurrency=args.max_concurrency, blocks=args.blocks)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(EdgeService(pipe, codec, config)), host="127.0.0.1",
                                               port=port, log_level="warning", timeout_keep_alive=5))
        threading.Thread(target=server.run, daemon=True).start()  # not the main thread: no signal handlers
        servers.append(server)
        urls[b] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not all(s.started for s in servers):
        if time.monotonic() > deadline:
            raise TimeoutError("the services did not start")
        time.sleep(0.05)
    print(json.dumps({"urls": urls}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()  # parent gone: stop
    stop.wait()
    for s in servers:
        s.should_exit = True
    sys.stdout.flush()
    os._exit(0)  # nothing left to flush or finish (the load is over): skip the slow interpreter teardown


def run_phase(pipe, max_batch: int, url: str, args) -> dict:
    """One phase: the clients against the service of ``max_batch`` at ``url`` (after one warm-up request)."""
    import numpy as np

    from splitldm.serve.client import RemoteEdge

    edge = RemoteEdge(url, pipe, timeout_s=args.timeout)
    edge.handshake  # noqa: B018  (fetch once, shared by the client threads)
    warm_up = edge.request(PROMPTS[0], steps=args.steps, merge_ratio=args.merge_ratio)
    if args.finish:
        edge.finish(warm_up, "np")
    warm = edge.ledger()
    latencies, errors, bits = [], [], []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(args.requests):
            start = time.perf_counter()
            try:
                rec = edge.request(PROMPTS[(c + r) % len(PROMPTS)], seed=1000 * c + r, link_seed=r, snr_db=10.0,
                                   steps=args.steps, merge_ratio=args.merge_ratio)
                if args.finish:
                    edge.finish(rec, "np")
                with lock:
                    latencies.append(time.perf_counter() - start)
                    bits.append(rec.bits)
            except Exception as exc:  # counted, reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client, range(args.clients)))
    elapsed = time.perf_counter() - start
    deadline = time.monotonic() + 10
    while (stats := edge.ledger())["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    edge.close()
    sent = args.clients * args.requests
    accepted = stats["accepted"] - warm["accepted"]
    completed = stats["completed"] - warm["completed"]
    ledger_errors = stats["errors"] - warm["errors"]
    sizes = stats["batch_sizes"][len(warm["batch_sizes"]):]
    return {"max_batch": max_batch, "requests": sent, "completed": len(latencies), "errors": len(errors),
            "server_completed": completed, "server_errors": ledger_errors,
            "lost": (sent - len(latencies) - len(errors)) + (accepted - completed - ledger_errors),
            "duplicated": stats["duplicated"] + max(0, completed - len(latencies)),
            "p50_s": float(np.percentile(latencies, 50)) if latencies else None,
            "p95_s": float(np.percentile(latencies, 95)) if latencies else None,
            "throughput_rps": len(latencies) / elapsed, "mean_batch": float(np.mean(sizes)) if sizes else 0.0,
            "bits": bits[0] if bits else {}, "error_samples": errors[:3]}


def main(argv=None) -> int:
    wall = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clients x 2 requests per batch size")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--batch-sizes", default="1,8", help="server max batch sizes to measure (comma-separated)")
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--split-step", type=int, default=2)
    parser.add_argument("--merge-ratio", type=float, default=0.5)
    parser.add_argument("--blocks", type=int, default=1, help="fading blocks per image of the served channel")
    parser.add_argument("--finish", action="store_true", help="also run the UE part of every request")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request time-out, s")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="server start time-out, s")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--max-concurrency", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes: expected positive ints, got {args.batch_sizes!r}")
    if args.serve:
        return serve(args)
    if args.quick:
        args.clients, args.requests = 8, 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    proc = start_servers(args)  # starts while this process imports torch and loads its own pipeline
    try:
        import torch

        from splitldm.pipeline.models import load_pipeline

        pipe = load_pipeline("tiny")
        logger.info("UE pipeline loaded after %.1f s", time.perf_counter() - wall)
        urls = wait_ready(proc, args.start_timeout)
        startup_s = time.perf_counter() - wall
        logger.info("server ready after %.1f s", startup_s)
        phases = []
        for b in sizes:
            phase = run_phase(pipe, b, urls[b], args)
            logger.info("max_batch %d: %s", b, json.dumps({k: v for k, v in phase.items() if k != "bits"}))
            phases.append(phase)
            logger.info("phase %d done after %.1f s", b, time.perf_counter() - wall)
    finally:
        t = time.perf_counter()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        logger.info("server stopped in %.1f s", time.perf_counter() - t)
    main_phase = phases[-1]
    by_batch = {p["max_batch"]: round(p["throughput_rps"], 3) for p in phases}
    seq = next((p["throughput_rps"] for p in phases if p["max_batch"] == 1), None)
    bits = main_phase["bits"]
    images = bits.get("images", 1)
    result = {
        "requests": sum(p["requests"] for p in phases),
        "completed": sum(p["completed"] for p in phases),
        "errors": sum(p["errors"] for p in phases),
        "lost": sum(p["lost"] for p in phases),
        "duplicated": sum(p["duplicated"] for p in phases),
        "p50_s": main_phase["p50_s"], "p95_s": main_phase["p95_s"],
        "throughput_rps": main_phase["throughput_rps"],
        "batched_vs_sequential": main_phase["throughput_rps"] / seq if seq else None,
        "throughput_by_batch": by_batch,
        "p50_by_batch": {p["max_batch"]: p["p50_s"] for p in phases},
        "mean_batch": main_phase["mean_batch"],
        "side_info_bits_per_image": bits.get("side_info_bits", 0) / images,
        "index_map_bits_per_image": bits.get("index_map_bits", 0) / images,
        "channel_symbols_per_image": bits.get("channel_symbols", 0) / images,
        "channel_uses_per_image": bits.get("channel_uses", 0) / images,
        "frame_bytes": bits.get("frame_bytes"),
        "handshake_bits": bits.get("handshake_bits"),
        "clients": args.clients, "requests_per_client": args.requests, "merge_ratio": args.merge_ratio,
        "blocks": args.blocks, "torch_threads": torch.get_num_threads(), "server_starts": 1, "startup_s": round(startup_s, 1),
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
