"""The ES on Ray Serve: replicas and autoscaling of the same service (optional; Ray is imported only here).

::

    pip install "splitldm[serve]"                    # fastapi, uvicorn, httpx, ray[serve]
    splitldm serve-edge --ray --replicas 2           # or, in Python:

    from splitldm.serve.ray_app import edge_app, run
    run(edge_app(replicas=2), host="127.0.0.1", port=8000)   # starts a local Ray if none is running

Each replica is one `EdgeDeployment`: it builds its own `splitldm.serve.app.EdgeService` (model,
codec, `ServeConfig`, optional `splitldm.serve.control.Controller`) and serves exactly the FastAPI app of
`splitldm.serve.app.create_app` through Ray Serve's HTTP proxy (a late-bound ``serve.ingress``): the
same endpoints, request handler, wire format, dynamic batching (per replica) and ledger (per replica) as
the single process. The handshake's session id depends only on the models and the link, so every
replica answers with the same session and a UE may reach any of them. The UE client is unchanged
(`splitldm.serve.client.RemoteEdge` on the proxy's URL).

The plain single process (``splitldm serve-edge`` without ``--ray``) stays the default and needs no
Ray. Between the proxy and the replicas Ray moves the HTTP request and response inside its own cluster
(Ray's serialisation); what crosses from and to the UE is still only the service's own byte format.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Mapping

from ray import serve

from splitldm.serve.app import ServeConfig

__all__ = ["EdgeDeployment", "edge_app", "run", "shutdown"]

logger = logging.getLogger(__name__)


@serve.ingress()
class EdgeDeployment:
    """One ES replica (Ray Serve deployment class; build it with `edge_app`).

    Args:
        model: ES pipeline, a zoo name or folder for `splitldm.pipeline.models.load_pipeline`.
        codec: seed codec, a zoo name or folder (the UE loads the same).
        config: `ServeConfig` fields as a dict.
        controller: None (the config's fixed rule) or `splitldm.serve.control.Controller` arguments
            (``{"rates": "cvpo-meg", "power": "ppo-power"}``; None values keep the fixed rule / equal power).
        threads: torch CPU threads of the replica.
    """

    def __init__(self, model: str, codec: str, config: Mapping[str, Any], controller: Mapping[str, Any] | None,
                 threads: int):
        import torch

        from splitldm.link.codec import SeedCodec
        from splitldm.pipeline.models import load_pipeline
        from splitldm.serve.app import EdgeService

        torch.set_num_threads(threads)
        policy = None
        if controller is not None:
            from splitldm.serve.control import Controller

            policy = Controller(**dict(controller))
        cfg = dict(config)
        cfg["ratios"] = tuple(cfg["ratios"])
        self.service = EdgeService(load_pipeline(model), SeedCodec.from_pretrained(codec), ServeConfig(**cfg),
                                   codec_name=codec, policy=policy)
        logger.info("ray replica: session %s", self.service.handshake.session)

    def __serve_build_asgi_app__(self):
        from splitldm.serve.app import create_app

        return create_app(self.service)


def edge_app(model: str = "tiny", codec: str = "seed-codec", config: ServeConfig | None = None, *,
             controller: Mapping[str, Any] | None = None, replicas: int | str = 1,
             autoscaling: Mapping[str, Any] | None = None, num_cpus: float = 1.0,
             max_ongoing_requests: int | None = None, threads: int = 1, name: str = "splitldm-edge"):
    """The bound Ray Serve application of the ES (deploy it with `run` or ``serve.run``).

    Args:
        model, codec, controller, threads: as `EdgeDeployment`.
        config: `ServeConfig` (default: its defaults).
        replicas: number of replicas (>= 1), or ``"auto"`` (Ray's default autoscaling).
        autoscaling: Ray Serve ``autoscaling_config`` (e.g. ``{"min_replicas": 1, "max_replicas": 4,
            "target_ongoing_requests": 8}``); given, it replaces ``replicas``.
        num_cpus: CPUs Ray reserves per replica (> 0).
        max_ongoing_requests: most requests Ray routes to one replica at once (default:
            ``config.max_concurrency``: the replica's own limit answers 503 beyond it).
        name: deployment name.
    """
    config = config or ServeConfig()
    if not isinstance(config, ServeConfig):
        raise TypeError(f"config: expected a ServeConfig, got {type(config).__name__}")
    if autoscaling is None and replicas != "auto" and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                                       or replicas < 1):
        raise ValueError(f"replicas: expected an int >= 1 or 'auto', got {replicas!r}")
    if autoscaling is not None and not isinstance(autoscaling, Mapping):
        raise TypeError(f"autoscaling: expected a mapping (Ray Serve autoscaling_config), got {type(autoscaling).__name__}")
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus <= 0:
        raise ValueError(f"num_cpus: expected a number > 0, got {num_cpus!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    if max_ongoing_requests is not None and (isinstance(max_ongoing_requests, bool)
                                             or not isinstance(max_ongoing_requests, int) or max_ongoing_requests < 1):
        raise ValueError(f"max_ongoing_requests: expected an int >= 1, got {max_ongoing_requests!r}")
    if controller is not None and not isinstance(controller, Mapping):
        raise TypeError(f"controller: expected a mapping of Controller arguments, got {type(controller).__name__}")
    options: dict[str, Any] = {"name": name, "ray_actor_options": {"num_cpus": float(num_cpus)},
                               "max_ongoing_requests": max_ongoing_requests or config.max_concurrency}
    if autoscaling is not None:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = replicas
    cfg = asdict(config)
    cfg["ratios"] = list(cfg["ratios"])
    deployment = serve.deployment(EdgeDeployment).options(**options)
    return deployment.bind(model, codec, cfg, None if controller is None else dict(controller), threads)


def run(app, *, host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None,
        object_store_bytes: int | None = None, blocking: bool = False, name: str = "splitldm-edge") -> str:
    """Deploy ``app`` (from `edge_app`) behind Ray Serve's HTTP proxy at ``host:port``; returns the URL.

    Starts a local Ray instance (``num_cpus``, ``object_store_bytes``, no dashboard) unless one is
    already initialised (or ``$RAY_ADDRESS`` names a cluster). ``blocking``: serve until interrupted,
    then `shutdown`.
    """
    import ray

    if not 0 < port < 65536:
        raise ValueError(f"port: expected 1..65535, got {port!r}")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if object_store_bytes is not None:
            kwargs["object_store_memory"] = object_store_bytes
        ray.init(**kwargs)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    logger.info("ray serve: %s at %s", name, url)
    if blocking:
        import time

        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            shutdown()
    return url


def shutdown() -> None:
    """Stop Ray Serve and the Ray instance this process started."""
    import ray

    serve.shutdown()
    if ray.is_initialized():
        ray.shutdown()
