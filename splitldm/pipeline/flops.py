"""FLOP counting with `torch.utils.flop_counter` on the meta device: no weights, no memory, any size."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Run ``fn(*args, **kwargs)`` under `FlopCounterMode` and return ``(flops, result)``.

    Counted FLOPs are 2 x multiply-accumulates for matmuls and convolutions (PyTorch's convention);
    element-wise work (norms, activations) is not counted. Use meta tensors and a model built on the
    meta device (`splitldm.pipeline.models.build_unet(name, device="meta")`) to count any size for free.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return int(counter.get_total_flops()), result


def tensor_bytes(t: torch.Tensor | None, dtype: torch.dtype | None = None) -> int:
    """Bytes of ``t`` if stored as ``dtype`` (its own dtype by default); 0 for None."""
    if t is None:
        return 0
    size = torch.empty((), dtype=dtype).element_size() if dtype is not None else t.element_size()
    return t.numel() * size


def num_params(modules) -> int:
    """Parameters of a module or an iterable of modules (shared parameters counted once)."""
    if isinstance(modules, torch.nn.Module):
        modules = [modules]
    seen = {id(p): p for m in modules if m is not None for p in m.parameters()}
    return sum(p.numel() for p in seen.values())
