"""``splitldm serve-edge``: run the ES service; ``splitldm generate --edge URL``: the UE against it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        path = Path(args.token_file)
        if not path.is_file():
            raise FileNotFoundError(f"--token-file: no file {path}")
        return path.read_text().strip() or None
    env = getattr(args, "token_env", None)
    if env:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"--token-env: environment variable {env} is not set")
        return value
    return None


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_serve_edge(args: argparse.Namespace) -> int:
    import uvicorn

    from splitldm.link.codec import SeedCodec
    from splitldm.pipeline.models import load_pipeline
    from splitldm.serve.app import ServeConfig
    from splitldm.serve.chain import ChainService, create_chain_app

    if not 0 < args.port < 65536:
        raise ValueError(f"--port: expected 1..65535, got {args.port}")
    config = ServeConfig(max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000.0,
                         max_request_bytes=args.max_request_bytes, max_concurrency=args.max_concurrency,
                         read_timeout_s=args.read_timeout, token=_token(args), channel=args.channel, csi=args.csi,
                         blocks=args.blocks,
                         ratios=args.merge_ratios, split_step=args.split_step, merge_ratio=args.merge_ratio,
                         pad_batches=not args.no_pad)
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
        logging.getLogger(__name__).warning("serve-edge: binding %s without a token", args.host)
    controller = _controller(args)
    chain = _chain(args, controller)
    if args.ray:
        return _serve_ray(args, config, controller)
    pipe = load_pipeline(args.model)
    policy = None
    if controller is not None:
        from splitldm.serve.control import Controller

        policy = Controller(**controller)
    if chain is not None:
        policy = chain(policy)
    service = ChainService(pipe, SeedCodec.from_pretrained(args.codec), config, codec_name=args.codec, policy=policy,
                           hop_timeout_s=args.hop_timeout, max_hop_bytes=args.max_hop_bytes)
    print(json.dumps({"serving": f"http://{args.host}:{args.port}", "session": service.handshake.session,
                      "model": service.handshake.model, "handshake_bits": service.handshake.bits,
                      "chain": list(args.chain or ())}), flush=True)
    uvicorn.run(create_chain_app(service), host=args.host, port=args.port, log_level=args.log_level,
                timeout_keep_alive=5)
    return 0


def _urls(text: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in text.split(",") if u.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _chain(args: argparse.Namespace, controller: dict | None):
    """``base_policy -> chain policy`` from --chain / --chain-blocks / --placement (None: not an access node).

    Checked before the model loads, so a bad flag costs nothing; the D3QL policy is loaded here too."""
    from splitldm.serve.chain import D3QLPlacement, ExplicitChain, _check_urls

    if args.hop_timeout <= 0 or args.hop_timeout > 3600:
        raise ValueError(f"--hop-timeout: expected seconds in (0, 3600], got {args.hop_timeout}")
    if args.max_hop_bytes < 1024:
        raise ValueError(f"--max-hop-bytes: expected an int >= 1024, got {args.max_hop_bytes}")
    if args.placement is None and args.placement_backlog is not None:
        raise ValueError("--placement-backlog: needs --placement")
    if args.chain is None:
        for flag, value in (("--chain-blocks", args.chain_blocks), ("--placement", args.placement)):
            if value is not None:
                raise ValueError(f"{flag}: needs --chain (the relay nodes' URLs)")
        return None
    try:
        urls = _check_urls(args.chain, "--chain")
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if args.ray:
        raise ValueError("--chain: a chain of Ray Serve replicas is not supported; run serve-edge without --ray")
    own = {f"http://{args.host}:{args.port}", f"http://localhost:{args.port}", f"http://127.0.0.1:{args.port}"}
    if own & set(urls):
        raise ValueError(f"--chain: {sorted(own & set(urls))[0]} is this node; a chain visits each node once")
    if (args.chain_blocks is None) == (args.placement is None):
        raise ValueError("--chain: give exactly one of --chain-blocks (fixed blocks) and --placement (a D3QL policy)")
    if args.chain_blocks is not None:
        blocks = args.chain_blocks
        if len(blocks) != len(urls) + 1 or any(b < 0 for b in blocks) or sum(blocks) < 1:
            raise ValueError(f"--chain-blocks: expected {len(urls) + 1} ints >= 0 (this node, then one per --chain URL) "
                             f"with a sum >= 1, got {','.join(map(str, blocks))}")
        ExplicitChain(urls, list(blocks))  # the remaining checks (split step limit)
        return lambda base: ExplicitChain(urls, list(blocks), base=base)
    if controller is not None:
        raise ValueError("--placement: the placement policy chooses the steps itself; drop --policy / --power-policy")
    if not 0 < args.placement_deadline < 3600:
        raise ValueError(f"--placement-deadline: expected seconds in (0, 3600), got {args.placement_deadline}")
    try:
        placement = D3QLPlacement.from_pretrained(args.placement, urls, deadline_s=args.placement_deadline,
                                                  merge_ratio=args.merge_ratio, backlog_s=args.placement_backlog)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"--placement: {exc}") from None
    return lambda base: placement


def _controller(args: argparse.Namespace) -> dict | None:
    """`splitldm.serve.control.Controller` arguments from --policy / --power-policy (None: no controller)."""
    if args.policy is None and args.power_policy is None:
        return None
    rates = None if args.policy in (None, "rule") else args.policy
    power = None if args.power_policy in (None, "equal") else args.power_policy
    return {"rates": rates, "power": power}


def _serve_ray(args: argparse.Namespace, config, controller: dict | None) -> int:
    """``serve-edge --ray``: the same service as Ray Serve replicas (`splitldm.serve.ray_app`)."""
    try:
        from splitldm.serve import ray_app
    except ImportError as exc:
        raise ValueError(f"--ray: Ray Serve is not installed ({exc}); pip install 'splitldm[serve]'") from None
    if args.replicas < 1:
        raise ValueError(f"--replicas: expected an int >= 1, got {args.replicas}")
    autoscaling = None
    if args.max_replicas is not None:
        if args.max_replicas < args.replicas:
            raise ValueError(f"--max-replicas: {args.max_replicas} is below --replicas {args.replicas}")
        autoscaling = {"min_replicas": args.replicas, "max_replicas": args.max_replicas,
                       "target_ongoing_requests": config.max_batch}
    app = ray_app.edge_app(args.model, args.codec, config, controller=controller, replicas=args.replicas,
                           autoscaling=autoscaling, num_cpus=args.replica_cpus)
    print(json.dumps({"serving": f"http://{args.host}:{args.port}", "ray": True, "replicas": args.replicas,
                      "max_replicas": args.max_replicas, "controller": controller}), flush=True)
    ray_app.run(app, host=args.host, port=args.port, blocking=True)
    return 0


def add_edge_arguments(g: argparse.ArgumentParser) -> None:
    """The ``generate`` options of the remote mode (``--edge URL``)."""
    g.add_argument("--edge", default=None, metavar="URL",
                   help="run the ES part on a `splitldm serve-edge` service at URL (this process is the UE)")
    g.add_argument("--snr-db", type=float, default=10.0, help="with --edge: the UE's channel report (dB)")
    g.add_argument("--merge-ratio", type=float, default=None, help="with --edge: requested merge ratio")
    g.add_argument("--link-seed", type=int, default=0, help="with --edge: seed of the emulated channel")
    g.add_argument("--token-env", default=None, help="with --edge: environment variable holding the shared token")
    g.add_argument("--token-file", default=None, help="with --edge: file holding the shared token")


def generate_remote(args: argparse.Namespace) -> int:
    """``splitldm generate --edge URL``: one image, the ES part on the service."""
    from splitldm.serve.client import RemoteEdge, RemoteError

    if args.scheduler is not None or args.split_stage is not None or args.condition != "prompt":
        raise ValueError("--edge: the service fixes the scheduler and sends the prompt condition; "
                         "leave --scheduler, --split-stage and --condition at their defaults")
    start = time.perf_counter()
    try:
        with RemoteEdge(args.edge, args.model, token=_token(args)) as edge:
            out = edge.generate(args.prompt, seed=args.seed, link_seed=args.link_seed, snr_db=args.snr_db,
                                steps=args.steps, guidance_scale=args.guidance_scale, split_step=args.split_step,
                                merge_ratio=args.merge_ratio)
    except RemoteError as exc:
        raise ValueError(str(exc)) from None
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.images[0].save(path)
    print(json.dumps({"out": str(path), "edge": args.edge, "split_step": out.received.split_step,
                      "merge_ratio": out.received.merge_ratio, **out.received.bits,
                      "seconds": round(time.perf_counter() - start, 3)}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve-edge", help="run the edge-server (ES) service (FastAPI + uvicorn)")
    p.add_argument("--model", default="tiny", help="shipped name, local folder or hub id (an SD-type pipeline)")
    p.add_argument("--codec", default="seed-codec", help="seed codec: zoo name or folder (the UE loads the same)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--channel", default="rayleigh", choices=["awgn", "rayleigh"], help="emulated channel")
    p.add_argument("--csi", default="mmse", choices=["none", "phase", "zf", "mmse"])
    p.add_argument("--blocks", type=int, default=1,
                   help="fading blocks per image (Rayleigh, 1..64); a --power-policy split is applied when it has "
                        "as many blocks (ppo-power: 8)")
    p.add_argument("--split-step", type=int, default=2, help="default split step (the UE may ask for another)")
    p.add_argument("--merge-ratio", type=float, default=0.0, help="default merge ratio (one of --merge-ratios)")
    p.add_argument("--merge-ratios", type=_ratios, default=(0.0, 0.25, 0.5, 0.75), help="ratio table (<= 8)")
    p.add_argument("--max-batch", type=int, default=8, help="most images per batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest wait for a batch to fill")
    p.add_argument("--no-pad", action="store_true", help="do not pad batches to --max-batch")
    p.add_argument("--max-request-bytes", type=int, default=64 * 1024)
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--read-timeout", type=float, default=10.0, help="seconds to receive a request body")
    p.add_argument("--token-env", default=None, help="environment variable holding the shared token")
    p.add_argument("--token-file", default=None, help="file holding the shared token")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (bit-identical results across processes need the same count on both)")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--policy", default=None, help="controller of steps / split / merge ratio: a CVPO folder or zoo "
                   "name (cvpo-meg), or 'rule' (the cost-model rule); default: the UE's request (fixed rule)")
    p.add_argument("--power-policy", default=None, help="PPO power policy folder or zoo name (ppo-power), or 'equal'")
    p.add_argument("--chain", type=_urls, default=None, metavar="URL1,URL2",
                   help="multi-hop chain (splitldm.serve.chain): this node is the access node and forwards each "
                   "request's payload through these serve-edge nodes; with --chain-blocks or --placement")
    p.add_argument("--chain-blocks", type=_ints, default=None, metavar="A,B,C",
                   help="with --chain: denoising steps on this node, then on each --chain URL (split step = sum)")
    p.add_argument("--placement", default=None, metavar="NAME_OR_PATH",
                   help="with --chain: a D3QL placement policy (zoo name d3ql-placement or a save_placement folder) "
                   "picks the chain and step reduction per request")
    p.add_argument("--placement-deadline", type=float, default=2.0, help="with --placement: the deadline (s) it assumes")
    p.add_argument("--placement-backlog", type=_ratios, default=None, metavar="S0,S1,...",
                   help="with --placement: seconds each node (this one, then each --chain URL) is assumed busy "
                   "(default idle: the shipped policy then keeps requests on this node)")
    p.add_argument("--hop-timeout", type=float, default=120.0, help="seconds a hop may take (the rest of the chain)")
    p.add_argument("--max-hop-bytes", type=int, default=64 << 20, help="largest hop message this node accepts")
    p.add_argument("--ray", action="store_true", help="serve on Ray Serve (needs splitldm[serve]: ray[serve])")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: replicas (the minimum with --max-replicas)")
    p.add_argument("--max-replicas", type=int, default=None, help="with --ray: autoscale up to this many replicas")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="with --ray: CPUs reserved per replica")
    p.set_defaults(func=cmd_serve_edge)
