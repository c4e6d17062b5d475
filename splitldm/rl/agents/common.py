"""Save / load controllers: weights as safetensors, everything else (hyper-parameters, sizes) as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_policy", "load_policy_files", "mlp", "check_obs", "seed_everything"]


def mlp(sizes: list[int], out_gain: float = 1.0) -> torch.nn.Sequential:
    """Tanh MLP with orthogonal init (CleanRL's recipe)."""
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = torch.nn.Linear(sizes[i], sizes[i + 1])
        torch.nn.init.orthogonal_(lin.weight, out_gain if i == len(sizes) - 2 else 2 ** 0.5)
        torch.nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def check_obs(obs, dim: int) -> torch.Tensor:
    """Observation(s) as a float32 tensor (B, dim); NaN / inf / wrong size -> ValueError."""
    x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"obs: expected shape ({dim},) or (B, {dim}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("obs: contains NaN or inf")
    return x


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def save_policy(directory: str | Path, modules: dict[str, torch.nn.Module], config: dict[str, Any]) -> Path:
    """``directory/policy.safetensors`` (all modules' weights, prefixed by name) + ``policy.json``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items()
               for k, v in m.state_dict().items()}
    save_file(tensors, str(d / "policy.safetensors"))
    (d / "policy.json").write_text(json.dumps(config, indent=1, default=float))
    return d


def load_policy_files(directory: str | Path, algorithm: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(weights by module name, config) saved by `save_policy`; checks the algorithm matches."""
    d = Path(directory)
    for f in ("policy.safetensors", "policy.json"):
        if not (d / f).exists():
            raise FileNotFoundError(f"directory: {d} has no {f}")
    config = json.loads((d / "policy.json").read_text())
    if config.get("algorithm") != algorithm:
        raise ValueError(f"directory: {d} holds a {config.get('algorithm')!r} policy, not {algorithm!r}")
    flat = load_file(str(d / "policy.safetensors"))
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        name, rest = k.split(".", 1)
        out.setdefault(name, {})[rest] = v
    return out, config
