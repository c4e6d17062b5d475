"""The ES as a network service and the UE as its client (two real processes).

* `splitldm.serve.wire`: the compact, versioned wire format (handshake, 32-bit per-request side
  information, CRCs, record stream); bytes only, nothing unpickled.
* `splitldm.serve.session`: what both ends derive from the handshake (link, frame layout, meta).
* `splitldm.serve.policy`: the per-request choice (split step, merge ratio, power); `FixedRule`.
* `splitldm.serve.edge`: the ES work for a batch (`EdgeRunner.denoise` / `EdgeRunner.forward`).
* `splitldm.serve.batcher`: dynamic FIFO batching and the request ledger.
* `splitldm.serve.app`: the FastAPI app (`EdgeService`, `create_app`); ``splitldm serve-edge``.
* `splitldm.serve.client`: the UE (`RemoteEdge`, `remote`); ``splitldm generate --edge URL``.
* `splitldm.serve.chain`: multi-hop chains of ES processes (`ChainService`, ``POST /v1/hop``,
  `ExplicitChain` / `D3QLPlacement`); ``splitldm serve-edge --chain URL1,URL2``.

Needs the ``serve`` extra (``pip install splitldm[serve]``: fastapi, uvicorn, httpx).
"""

from __future__ import annotations

import importlib

__all__ = ["RemoteEdge", "RemoteError", "remote", "EdgeService", "ServeConfig", "create_app", "Handshake",
           "WireError", "Choice", "FixedRule"]

_WHERE = {"RemoteEdge": "client", "RemoteError": "client", "remote": "client", "EdgeService": "app",
          "ServeConfig": "app", "create_app": "app", "Handshake": "wire", "WireError": "wire",
          "Choice": "policy", "FixedRule": "policy"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"splitldm.serve.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'splitldm.serve' has no attribute {name!r}")
