"""Load test of the ES service: N concurrent UE clients x R requests against `splitldm serve-edge` on loopback.

For each max batch size (``--batch-sizes``, default ``1,8``) a fresh server is started on a free
loopback port; the clients request frames concurrently (each request decoded and checked on arrival:
CRCs, request id, sizes; ``--finish`` also runs the UE's receive half and steps [k, T) + VAE), and the
server's request ledger is read at the end. The last line printed is one JSON object:
``requests``, ``completed``, ``errors``, ``lost``, ``duplicated``, ``p50_s``, ``p95_s``,
``throughput_rps`` (of the largest batch size), ``batched_vs_sequential`` (its throughput over batch
size 1's, same run), ``throughput_by_batch``, ``side_info_bits_per_image``, ``index_map_bits_per_image``,
``channel_uses_per_image`` and ``handshake_bits``.

    python bench/service.py --quick          # 8 clients x 3 requests, batch sizes 1 and 8
    python bench/service.py                  # 32 clients x 20 requests
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch

from splitldm.pipeline.models import load_pipeline
from splitldm.serve.client import RemoteEdge

logger = logging.getLogger("bench.service")
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle", "a red square", "a blue triangle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(max_batch: int, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "splitldm.cli.main", "serve-edge", "--port", str(port), "--max-batch", str(max_batch),
           "--max-wait-ms", str(args.max_wait_ms), "--split-step", str(args.split_step),
           "--threads", str(torch.get_num_threads()), "--max-concurrency", str(max(64, 2 * args.clients))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start")


def run_phase(pipe, max_batch: int, args) -> dict:
    proc, url = start_server(max_batch, args)
    try:
        edge = RemoteEdge(url, pipe, timeout_s=args.timeout)
        edge.handshake  # noqa: B018  (fetch once, shared by the client threads)
        edge.generate(PROMPTS[0], steps=args.steps, merge_ratio=args.merge_ratio, output_type="np")  # warm-up
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
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clients x 3 requests")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--batch-sizes", default="1,8", help="server max batch sizes to measure (comma-separated)")
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--split-step", type=int, default=2)
    parser.add_argument("--merge-ratio", type=float, default=0.5)
    parser.add_argument("--finish", action="store_true", help="also run the UE part of every request")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request time-out, s")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="server start time-out, s")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests = 8, 3
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    pipe = load_pipeline("tiny")
    phases = []
    for b in sizes:
        phase = run_phase(pipe, b, args)
        logger.info("max_batch %d: %s", b, json.dumps({k: v for k, v in phase.items() if k != "bits"}))
        phases.append(phase)
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
        "mean_batch": main_phase["mean_batch"],
        "side_info_bits_per_image": bits.get("side_info_bits", 0) / images,
        "index_map_bits_per_image": bits.get("index_map_bits", 0) / images,
        "channel_symbols_per_image": bits.get("channel_symbols", 0) / images,
        "channel_uses_per_image": bits.get("channel_uses", 0) / images,
        "frame_bytes": bits.get("frame_bytes"),
        "handshake_bits": bits.get("handshake_bits"),
        "clients": args.clients, "requests_per_client": args.requests, "merge_ratio": args.merge_ratio,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
