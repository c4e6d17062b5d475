"""Token merging (ToMe for SD): merge / unmerge primitives, an attention patch, and a link stage.

Three layers, each usable on its own:

* `plan_merge` -> `MergePlan`: bipartite soft matching on a token sequence ``(B, N, C)`` laid out on
  an ``H x W`` grid. One destination per ``sx x sy`` window (random within the window from a
  ``torch.Generator``, or the top-left token when no generator is given); every other token is a
  source, matched to its most similar destination; the ``r = int(ratio * N)`` best-matching sources
  are merged into their destinations by averaging. The plan is explicit (integer index tensors), so
  it can be applied to any tensor on the same tokens (`MergePlan.merge` / `MergePlan.unmerge`) and
  serialised as compact side information (`MergePlan.encode` / `MergePlan.decode`, with a CRC-16 so a
  damaged map is refused, never unmerged wrongly).
* `apply_patch(unet, ratio)` / `remove_patch(unet)`: merge tokens before self-attention (optionally
  cross-attention and the MLP) of every ``BasicTransformerBlock`` of a diffusers UNet at the chosen
  resolutions, unmerge after. Done with removable forward hooks; no module class is swapped.
* `TokenMerge(ratio)`: a `splitldm.link.stack.LinkStage` that merges each primary ``(B, C, H, W)`` tensor
  of a `Payload` on send (the index map travels as packed ``uint8`` side information) and unmerges
  on receive.

The merged sequence keeps the surviving tokens (all destinations and the unmerged sources) in
raster order, so ``M = N - r`` tokens; ``plan.slot[b, n]`` is the merged position token ``n`` went to.
With that single map, merge is one ``index_add`` and unmerge one ``index_select``.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import nn

__all__ = [
    "MergePlan", "plan_merge", "merge_tokens", "unmerge_tokens",
    "apply_patch", "remove_patch", "is_patched", "TokenMerge",
]

_SIMILARITIES = ("cosine", "euclidean")
#: Bits of the CRC-16 appended to every encoded index map (counted in `side_info_bits`).
INDEX_CHECK_BITS = 16
#: Largest token grid (H * W) an index map may describe: a bound checked before anything is allocated.
MAX_TOKENS = 1 << 24


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def _check_ratio(ratio: Any, name: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{name}: expected a float in [0, 1), got {type(ratio).__name__}")
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise ValueError(f"{name}: expected a float in [0, 1), got {ratio}")
    return ratio


def _check_pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


def _check_size(size: Any) -> tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"size: expected (H, W), got {size!r}")
    return _check_pos_int(size[0], "size[0]"), _check_pos_int(size[1], "size[1]")


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _bit_width(n: int) -> int:
    """Bits to write one integer in ``[0, n)`` (0 when there is only one value)."""
    return max(0, (n - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _partition(h: int, w: int, sx: int, sy: int, choice_key: bytes | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Destination and source positions (CPU int64) for a window choice (None = top left)."""
    hs, ws = h // sy, w // sx
    if choice_key is None:
        choice = torch.zeros(hs, ws, dtype=torch.int64)
    else:
        choice = torch.frombuffer(bytearray(choice_key), dtype=torch.uint8).to(torch.int64).view(hs, ws)
    rows = torch.arange(hs).view(hs, 1) * sy + choice // sx
    cols = torch.arange(ws).view(1, ws) * sx + choice % sx
    dst = (rows * w + cols).reshape(-1)
    is_dst = torch.zeros(h * w, dtype=torch.bool)
    is_dst[dst] = True
    src = torch.nonzero(~is_dst).squeeze(1)
    return dst, src


@dataclass
class MergePlan:
    """Which tokens merge into which, for a batch of ``B`` sequences of ``N = H * W`` tokens.

    Attributes:
        size: the token grid ``(H, W)``.
        sx, sy: destination window width and height (tokens).
        r: number of merged (removed) tokens per sequence; the merged sequence has ``M = N - r``.
        choice: ``(H // sy, W // sx)`` int64, which token of each window is the destination
            (row-major within the window), or None for the fixed top-left choice.
        dst: ``(D,)`` int64 destination positions (shared by the batch), window order.
        src: ``(S,)`` int64 source positions, raster order.
        src_merged: ``(B, S)`` bool, whether each source was merged away.
        src_dst: ``(B, S)`` int64 in ``[0, D)``, the destination each merged source went to (0 where unmerged).
        slot: ``(B, N)`` int64 in ``[0, M)``, the merged position each token contributes to.
        counts: ``(B, M)`` float32, how many original tokens each merged token holds.
    """

    size: tuple[int, int]
    sx: int
    sy: int
    r: int
    choice: torch.Tensor | None
    dst: torch.Tensor
    src: torch.Tensor
    src_merged: torch.Tensor
    src_dst: torch.Tensor
    slot: torch.Tensor
    counts: torch.Tensor

    # -- shapes
    @property
    def batch_size(self) -> int:
        return self.slot.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def num_merged(self) -> int:
        """``M = N - r``: tokens left after merging."""
        return self.num_tokens - self.r

    @property
    def is_identity(self) -> bool:
        return self.r == 0

    def _flat_slot(self) -> torch.Tensor:
        # Cached: one flat index serves index_add (merge) and index_select (unmerge) over B*N rows.
        flat = getattr(self, "_flat", None)
        if flat is None:
            offsets = torch.arange(self.batch_size, device=self.slot.device).view(-1, 1) * self.num_merged
            flat = (self.slot + offsets).reshape(-1)
            object.__setattr__(self, "_flat", flat)
        return flat

    def _check_tokens(self, x: torch.Tensor, n: int, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
        if x.ndim != 3:
            raise ValueError(f"{name}: expected shape (B, N, C), got {tuple(x.shape)}")
        if x.shape[0] != self.batch_size or x.shape[1] != n:
            raise ValueError(f"{name}: expected ({self.batch_size}, {n}, C) for this plan, got {tuple(x.shape)}")

    # -- apply
    def merge(self, x: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Merge tokens ``x`` ``(B, N, C)`` -> ``(B, M, C)`` by averaging each group.

        With ``sizes`` ``(B, N)`` (how many original tokens each input token already stands for) the
        average is size-weighted; `merge_sizes` gives the merged tokens' sizes. Exact identity at r=0.
        """
        self._check_tokens(x, self.num_tokens, "x")
        if self.r == 0 and sizes is None:
            return x
        b, n, c = x.shape
        flat = self._flat_slot()
        if sizes is None:
            out = x.new_zeros(b * self.num_merged, c).index_add_(0, flat, x.reshape(b * n, c))
            return out.view(b, self.num_merged, c) / self.counts.to(x.dtype).unsqueeze(-1)
        if sizes.shape != (b, n):
            raise ValueError(f"sizes: expected shape ({b}, {n}), got {tuple(sizes.shape)}")
        s = sizes.to(x.dtype).reshape(b * n, 1)
        num = x.new_zeros(b * self.num_merged, c).index_add_(0, flat, x.reshape(b * n, c) * s)
        den = x.new_zeros(b * self.num_merged, 1).index_add_(0, flat, s)
        return (num / den).view(b, self.num_merged, c)

    def merge_sizes(self, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Sizes ``(B, M)`` of the merged tokens (sum of the input ``sizes``; all ones by default)."""
        if sizes is None:
            return self.counts
        return sizes.new_zeros(self.batch_size * self.num_merged).index_add_(
            0, self._flat_slot(), sizes.reshape(-1)).view(self.batch_size, self.num_merged)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """Restore ``(B, M, C)`` -> ``(B, N, C)``: each token takes its merged token's value."""
        self._check_tokens(y, self.num_merged, "y")
        if self.r == 0:
            return y
        b, m, c = y.shape
        return y.reshape(b * m, c).index_select(0, self._flat_slot()).view(b, self.num_tokens, c)

    def to(self, device: torch.device | str) -> "MergePlan":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return MergePlan(self.size, self.sx, self.sy, self.r, move(self.choice), move(self.dst), move(self.src),
                         move(self.src_merged), move(self.src_dst), move(self.slot), move(self.counts))

    # -- side information
    def side_info_bits(self) -> int:
        """Exact bits of `encode`'s bit stream (before padding to whole bytes)."""
        return side_info_bits(self.size, self.r, self.sx, self.sy, self.choice is not None, self.batch_size)

    def encode(self) -> torch.Tensor:
        """The plan as a packed bit stream plus its check: ``(ceil(bits / 8),)`` uint8 (see `side_info_bits`).

        Layout, MSB first: the window choices (``ceil(log2(sx*sy))`` bits per window, only when the
        destinations were random), then per sequence: one merged flag per source (raster order)
        followed by the destination index of each merged source (``ceil(log2 D)`` bits each); zero
        padding to a whole byte; then a CRC-16/CCITT (``binascii.crc_hqx``, initial value 0xFFFF,
        big-endian, `INDEX_CHECK_BITS`) of the bytes before it, so a flipped bit is refused by
        `decode` rather than unmerged wrongly. The receiver needs ``size, sx, sy, r, random, B``
        (sent in the payload metadata).
        """
        stream = []
        if self.choice is not None:  # shared by the batch: sent once
            stream.append(_to_bits(self.choice.reshape(-1).cpu(), _bit_width(self.sx * self.sy)))
        merged = self.src_merged.cpu()
        per_seq = [merged.to(torch.int64)]
        width = _bit_width(self.dst.numel())
        if width and self.r:
            # Destination indices of the merged sources, in source raster order.
            order = torch.argsort((~merged).to(torch.int8), dim=1, stable=True)[:, : self.r]
            per_seq.append(_to_bits(self.src_dst.cpu().gather(1, order), width))
        stream.append(torch.cat([t.to(torch.uint8) for t in per_seq], dim=1).reshape(-1))
        packed = _pack_bits(torch.cat(stream))
        check = _crc16(packed).to_bytes(INDEX_CHECK_BITS // 8, "big")
        return torch.cat([packed, torch.tensor(list(check), dtype=torch.uint8)])

    @classmethod
    def decode(cls, data: torch.Tensor, size: tuple[int, int], r: int, sx: int = 2, sy: int = 2,
               random: bool = False, batch_size: int = 1, device: torch.device | str = "cpu") -> "MergePlan":
        """Rebuild a plan from `encode` output. Checked, in order: the arguments (types and ranges:
        ``0 <= r <=`` number of sources, windows inside the grid), the length of ``data``, its CRC-16,
        zero padding, then the structure: window choices in range, exactly ``r`` merged flags per
        sequence, destination indices in ``[0, D)``. Any failure raises ValueError (TypeError for a
        wrong type) naming ``data`` or the argument; nothing is unmerged from a damaged map."""
        h, w = _check_size(size)
        sx, sy = _check_pos_int(sx, "sx"), _check_pos_int(sy, "sy")
        batch_size = _check_pos_int(batch_size, "batch_size")
        if not isinstance(random, bool):
            raise TypeError(f"random: expected a bool, got {type(random).__name__}")
        if h * w > MAX_TOKENS:
            raise ValueError(f"size: {h}x{w} tokens exceed the limit of {MAX_TOKENS}")
        if sx > w or sy > h:
            raise ValueError(f"sx, sy: window {sx}x{sy} larger than the {h}x{w} grid")
        n_dst = (h // sy) * (w // sx)
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"r: expected an int, got {type(r).__name__}")
        if not 0 <= r <= h * w - n_dst:
            raise ValueError(f"r: expected an int in [0, {h * w - n_dst}] (the number of sources), got {r}")
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.ndim != 1:
            raise ValueError("data: expected a 1-D uint8 tensor from MergePlan.encode")
        total = side_info_bits((h, w), r, sx, sy, random, batch_size)
        if data.numel() != (total + 7) // 8:
            raise ValueError(f"data: expected {(total + 7) // 8} bytes for this plan, got {data.numel()}")
        check_bytes = INDEX_CHECK_BITS // 8
        raw = bytes(data.cpu().numpy().tobytes())
        if _crc16(raw[:-check_bytes]) != int.from_bytes(raw[-check_bytes:], "big"):
            raise ValueError("data: index map check (CRC-16) failed: the map is damaged")
        stream_bits = total - INDEX_CHECK_BITS
        bits = _unpack_bits(data[:-check_bytes].cpu(), 8 * (data.numel() - check_bytes))
        if bits[stream_bits:].any():
            raise ValueError("data: non-zero padding after the index map")
        bits = bits[:stream_bits]
        hs, ws = h // sy, w // sx
        pos = 0
        choice = None
        if random:
            cw = _bit_width(sx * sy)
            choice = _from_bits(bits[pos:pos + hs * ws * cw].view(1, hs * ws, cw)).view(hs, ws)
            pos += hs * ws * cw
            if int(choice.max()) >= sx * sy:
                raise ValueError("data: window choice out of range")
        dst, src = _partition(h, w, sx, sy, None if choice is None else _choice_key(choice))
        n_src, n_dst = src.numel(), dst.numel()
        width = _bit_width(n_dst)
        per = n_src + (r * width if r else 0)
        seq = bits[pos:pos + per * batch_size].view(batch_size, per)
        flags = seq[:, :n_src].bool()
        if (flags.sum(1) != r).any():
            raise ValueError(f"data: merged-flag count does not match r={r}")
        src_dst = torch.zeros(batch_size, n_src, dtype=torch.int64)
        if r and width:
            idx = _from_bits(seq[:, n_src:].view(batch_size, r, width))
            if int(idx.max()) >= n_dst:
                raise ValueError("data: destination index out of range")
            order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)[:, :r]
            src_dst.scatter_(1, order, idx)
        return _build_plan((h, w), sx, sy, r, choice, dst, src, flags, src_dst, torch.device(device))


def side_info_bits(size: tuple[int, int], r: int, sx: int = 2, sy: int = 2, random: bool = False,
                   batch_size: int = 1) -> int:
    """Exact bits of a plan's index map as `MergePlan.encode` writes it: window choices (if random) + per
    sequence ``S + r * ceil(log2 D)``, + the `INDEX_CHECK_BITS` CRC-16 (the zero padding of the
    stream to a whole byte, before the check, is not counted: the map is ``ceil(bits / 8)`` bytes).
    """
    h, w = size
    hs, ws = h // sy, w // sx
    n_dst = hs * ws
    n_src = h * w - n_dst
    bits = hs * ws * _bit_width(sx * sy) if random else 0
    stream = bits + batch_size * (n_src + (r * _bit_width(n_dst) if r else 0))
    return stream + INDEX_CHECK_BITS


def _crc16(data: bytes | torch.Tensor) -> int:
    """CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF) of ``data``."""
    if isinstance(data, torch.Tensor):
        data = bytes(data.cpu().numpy().tobytes())
    return binascii.crc_hqx(data, 0xFFFF)


def _choice_key(choice: torch.Tensor) -> bytes:
    return bytes(choice.to(torch.uint8).reshape(-1).cpu().numpy().tobytes())


def _to_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """``(..., K)`` ints -> ``(..., K * width)`` bits, MSB first."""
    shifts = torch.arange(width - 1, -1, -1, dtype=torch.int64)
    return ((values.unsqueeze(-1) >> shifts) & 1).reshape(*values.shape[:-1], -1).to(torch.uint8)


def _from_bits(bits: torch.Tensor) -> torch.Tensor:
    """``(..., width)`` bits MSB first -> ``(...)`` int64."""
    width = bits.shape[-1]
    weights = 2 ** torch.arange(width - 1, -1, -1, dtype=torch.int64)
    return (bits.to(torch.int64) * weights).sum(-1)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    if bits.numel() == 0:  # e.g. 1x1 windows: every token is a destination, nothing to send
        return torch.zeros(0, dtype=torch.uint8)
    pad = (-bits.numel()) % 8
    bits = torch.cat([bits, bits.new_zeros(pad)]).view(-1, 8)
    return _from_bits(bits).to(torch.uint8)


def _unpack_bits(data: torch.Tensor, total: int) -> torch.Tensor:
    if data.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8)
    return _to_bits(data.to(torch.int64).view(-1, 1), 8).reshape(-1)[:total]


def _build_plan(size, sx, sy, r, choice, dst, src, src_merged, src_dst, device) -> MergePlan:
    """Derive the slot map and counts from (partition, merged flags, destination indices)."""
    h, w = size
    n = h * w
    b = src_merged.shape[0]
    dst, src = dst.to(device), src.to(device)
    src_merged, src_dst = src_merged.to(device), src_dst.to(device)
    kept = torch.ones(b, n, dtype=torch.bool, device=device)
    kept[:, src] = ~src_merged
    rank = kept.cumsum(1) - 1
    slot = rank.clone()
    to_dst = rank[:, dst].gather(1, src_dst)
    slot[:, src] = torch.where(src_merged, to_dst, rank[:, src])
    m = n - r
    counts = torch.zeros(b, m, device=device).scatter_add_(1, slot, torch.ones(b, n, device=device))
    return MergePlan((h, w), sx, sy, r, None if choice is None else choice.to(device), dst, src,
                     src_merged, src_dst, slot, counts)


def plan_merge(metric: torch.Tensor, size: tuple[int, int], ratio: float | None = None, *, r: int | None = None,
               sx: int = 2, sy: int = 2, generator: torch.Generator | None = None,
               similarity: str = "cosine") -> MergePlan:
    """Bipartite soft matching on ``metric`` ``(B, N, C)``, ``N = H * W`` tokens in raster order.

    Args:
        metric: the features used to match tokens (e.g. the block input); not modified.
        size: the token grid ``(H, W)``.
        ratio: fraction of tokens to remove, in ``[0, 1)``: ``r = int(ratio * N)``, at most the number
            of sources. Give ``ratio`` or ``r``.
        sx, sy: destination window (tokens). Grid rows/columns past the last whole window are sources.
        generator: draws which token of each window is the destination (one draw per call, shared by
            the batch). None: always the top-left token.
        similarity: ``"cosine"`` (ToMe) or ``"euclidean"`` (nearest destination in L2, better for
            reconstruction).

    Returns a `MergePlan`. Deterministic: same inputs and generator state, same plan.
    """
    if not isinstance(metric, torch.Tensor):
        raise TypeError(f"metric: expected a Tensor, got {type(metric).__name__}")
    if metric.ndim != 3:
        raise ValueError(f"metric: expected shape (B, N, C), got {tuple(metric.shape)}")
    h, w = _check_size(size)
    sx, sy = _check_pos_int(sx, "sx"), _check_pos_int(sy, "sy")
    generator = _check_generator(generator)
    if similarity not in _SIMILARITIES:
        raise ValueError(f"similarity: expected one of {_SIMILARITIES}, got {similarity!r}")
    b, n, _ = metric.shape
    if n != h * w:
        raise ValueError(f"size: {h}x{w} = {h * w} tokens does not fit metric with N={n} tokens")
    if sx > w or sy > h:
        raise ValueError(f"sx, sy: window {sx}x{sy} larger than the {h}x{w} grid")
    if (ratio is None) == (r is None):
        raise ValueError("ratio: give exactly one of ratio or r")
    hs, ws = h // sy, w // sx
    n_dst = hs * ws
    if r is None:
        r = int(_check_ratio(ratio) * n)
    elif isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"r: expected a non-negative int, got {r!r}")
    r = min(r, n - n_dst)
    device = metric.device

    choice = None
    if generator is not None and sx * sy > 1:
        choice = torch.randint(sx * sy, (hs, ws), generator=generator, device=generator.device).cpu()
    dst, src = _partition(h, w, sx, sy, None if choice is None else _choice_key(choice))
    n_src = src.numel()
    if r == 0:
        zeros = torch.zeros(b, n_src, dtype=torch.int64)
        return _build_plan((h, w), sx, sy, 0, choice, dst, src, zeros.bool(), zeros, device)

    with torch.no_grad():
        dst_d, src_d = dst.to(device), src.to(device)
        m = metric if metric.is_floating_point() else metric.float()
        if similarity == "cosine":
            m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        a, bt = m.index_select(1, src_d), m.index_select(1, dst_d).transpose(1, 2)
        b_sq = (bt * bt).sum(1, keepdim=True) if similarity == "euclidean" else None  # (B, 1, D)
        scores = a @ bt  # (B, S, D)
        if b_sq is not None:  # -|a - b|^2 = 2 a.b - |b|^2 - |a|^2; |a|^2 is added after the max
            scores = 2 * scores - b_sq
        best, best_idx = scores.max(dim=-1)  # (B, S)
        del scores
        if b_sq is not None:
            best = best - (a * a).sum(-1)
        order = best.topk(r, dim=-1, sorted=False).indices  # the set of the r best matches
        src_merged = torch.zeros(b, n_src, dtype=torch.bool, device=device)
        src_merged.scatter_(1, order, True)
        src_dst = torch.where(src_merged, best_idx, torch.zeros_like(best_idx))
    return _build_plan((h, w), sx, sy, r, choice, dst, src, src_merged, src_dst, device)


def merge_tokens(x: torch.Tensor, size: tuple[int, int], ratio: float, *, sx: int = 2, sy: int = 2,
                 generator: torch.Generator | None = None, metric: torch.Tensor | None = None,
                 similarity: str = "cosine") -> tuple[torch.Tensor, MergePlan]:
    """Plan on ``metric`` (default ``x``) and merge ``x`` ``(B, N, C)`` -> ``((B, M, C), plan)``."""
    plan = plan_merge(x if metric is None else metric, size, ratio, sx=sx, sy=sy, generator=generator,
                      similarity=similarity)
    return plan.merge(x), plan


def unmerge_tokens(y: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """``(B, M, C)`` -> ``(B, N, C)`` with ``plan`` (see `MergePlan.unmerge`)."""
    if not isinstance(plan, MergePlan):
        raise TypeError(f"plan: expected a MergePlan, got {type(plan).__name__}")
    return plan.unmerge(y)


# ---------------------------------------------------------------------------------------------
# Attention patch for diffusers UNets (removable forward hooks; no class swapping)
# ---------------------------------------------------------------------------------------------

_STATE_ATTR = "_splitldm_token_merge"


@dataclass
class _PatchState:
    ratio: float
    max_downsample: int
    sx: int
    sy: int
    generator: torch.Generator | None
    merge_attn: bool
    merge_crossattn: bool
    merge_mlp: bool
    similarity: str
    size: tuple[int, int] | None = None  # latent (H, W) of the current UNet call
    handles: list = None  # type: ignore[assignment]
    plans: dict = None  # type: ignore[assignment]

    def grid(self, n: int) -> tuple[int, int, int] | None:
        """``(h, w, downsample)`` of a block whose sequence has ``n`` tokens, or None if unknown."""
        if self.size is None:
            return None
        hh, ww = self.size
        ds = 1
        while ds <= max(hh, ww):
            h, w = -(-hh // ds), -(-ww // ds)
            if h * w == n:
                return h, w, ds
            ds *= 2
        return None


def _unet_of(model: Any) -> nn.Module:
    unet = getattr(model, "unet", None)
    unet = getattr(model, "transformer", None) if unet is None else unet
    unet = model if unet is None else unet
    if not isinstance(unet, nn.Module):
        raise TypeError(f"unet: expected a diffusers UNet or transformer (or a pipeline with .unet / .transformer), "
                        f"got {type(model).__name__}")
    return unet


#: Blocks of joint text-image attention (SD3, Flux): merging image tokens there would also have to merge
#: the RoPE positions (Flux) and split the joint attention output; not supported by this patch.
_JOINT_BLOCKS = ("JointTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock")


def _patch_size(model: nn.Module) -> int:
    """Patch side of a DiT that patchifies its (B, C, H, W) input (PixArt: 2); 1 for a UNet."""
    p = getattr(getattr(model, "config", None), "patch_size", None)
    return int(p) if isinstance(p, int) and p > 1 else 1


def _transformer_blocks(unet: nn.Module) -> list[nn.Module]:
    # By class name, so any diffusers version's BasicTransformerBlock (and subclasses) qualify.
    return [m for m in unet.modules() if any(c.__name__ == "BasicTransformerBlock" for c in type(m).__mro__)]


def _config_size(unet: nn.Module) -> tuple[int, int] | None:
    s = getattr(getattr(unet, "config", None), "sample_size", None)
    p = _patch_size(unet)
    if isinstance(s, int):
        return (s // p, s // p)
    if isinstance(s, (tuple, list)) and len(s) == 2:
        return (int(s[0]) // p, int(s[1]) // p)
    return None


def apply_patch(unet: nn.Module, ratio: float = 0.5, *, max_downsample: int = 1, sx: int = 2, sy: int = 2,
                use_rand: bool = True, seed: int = 0, generator: torch.Generator | None = None,
                merge_attn: bool = True, merge_crossattn: bool = False, merge_mlp: bool = False,
                similarity: str = "cosine") -> nn.Module:
    """Merge tokens inside every ``BasicTransformerBlock`` of a diffusers UNet or DiT; returns ``unet``.

    Works on SD-1/SD-2 and SDXL UNets and on PixArt's transformer (its blocks are
    ``BasicTransformerBlock``s on the 2x2-patch token grid). SDXL has no attention at the latent's
    own resolution: its transformer blocks sit at 2x and 4x downsampling, so pass
    ``max_downsample=2`` (or 4) to merge there. SD3's ``JointTransformerBlock`` and Flux's
    ``FluxTransformerBlock`` / ``FluxSingleTransformerBlock`` (joint text-image attention, RoPE) are
    refused with a TypeError naming the block type.

    Per block (at resolutions downsampled at most ``max_downsample`` times from the latent), a
    `MergePlan` is computed from the block input ``(B, N, C)``; the normalised hidden states are merged
    before self-attention (and before cross-attention / the MLP when asked) and the outputs unmerged,
    so attention runs on ``N - r`` tokens. Implemented with removable forward hooks on the UNet, the
    blocks, and their ``attn1`` / ``attn2`` / ``ff`` submodules; whatever attention processor is set
    keeps working, and no class is swapped.

    Args:
        unet: a ``UNet2DConditionModel``, a ``PixArtTransformer2DModel`` (or any module holding
            ``BasicTransformerBlock``s), or a pipeline with ``.unet`` / ``.transformer``.
        ratio: fraction of tokens merged, in ``[0, 1)``. 0 leaves every output bit-identical.
        max_downsample: merge in blocks whose grid is the latent's downsampled at most this many times
            (1, 2, 4, 8).
        sx, sy: destination window (tokens).
        use_rand: pick each window's destination at random (from ``generator``, or a CPU generator
            seeded ``seed``); False: always the top-left token.
        similarity: ``"cosine"`` (ToMe) or ``"euclidean"``.

    Applying again replaces the previous patch (idempotent); `remove_patch` undoes it.
    """
    ratio = _check_ratio(ratio)
    max_downsample = _check_pos_int(max_downsample, "max_downsample")
    sx, sy = _check_pos_int(sx, "sx"), _check_pos_int(sy, "sy")
    if similarity not in _SIMILARITIES:
        raise ValueError(f"similarity: expected one of {_SIMILARITIES}, got {similarity!r}")
    generator = _check_generator(generator)
    if use_rand and generator is None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        generator = torch.Generator().manual_seed(seed)
    model = _unet_of(unet)
    remove_patch(model)
    blocks = _transformer_blocks(model)
    if not blocks:
        joint = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in _JOINT_BLOCKS})
        if joint:
            raise TypeError(f"unet: {type(model).__name__} is built of {', '.join(joint)} (joint text-image "
                            "attention), which the token-merging patch does not support; supported: "
                            "BasicTransformerBlock (SD-1/2, SDXL, PixArt)")
        raise ValueError("unet: no BasicTransformerBlock found to patch")
    state = _PatchState(ratio, max_downsample, sx, sy, generator if use_rand else None, merge_attn,
                        merge_crossattn, merge_mlp, similarity, _config_size(model), [], {})
    patch = _patch_size(model)

    def record_size(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if isinstance(sample, torch.Tensor) and sample.ndim == 4:
            state.size = (sample.shape[-2] // patch, sample.shape[-1] // patch)

    state.handles.append(model.register_forward_pre_hook(record_size, with_kwargs=True))
    if ratio > 0:
        for block in blocks:
            _hook_block(block, state)
    setattr(model, _STATE_ATTR, state)
    return unet


def _hook_block(block: nn.Module, state: _PatchState) -> None:
    key = id(block)

    def plan_hook(module, args, kwargs):
        hs = args[0] if args else kwargs.get("hidden_states")
        state.plans[key] = None
        if not isinstance(hs, torch.Tensor) or hs.ndim != 3 or kwargs.get("attention_mask") is not None:
            return  # a self-attention mask would not survive merging: leave such blocks alone
        grid = state.grid(hs.shape[1])
        if grid is None or grid[2] > state.max_downsample:
            return
        h, w, _ = grid
        if state.sx > w or state.sy > h:
            return
        state.plans[key] = plan_merge(hs, (h, w), state.ratio, sx=state.sx, sy=state.sy,
                                      generator=state.generator, similarity=state.similarity)

    def clear_hook(module, args, output):
        state.plans.pop(key, None)

    def merge_in(module, args, kwargs):
        plan = state.plans.get(key)
        if plan is None or plan.r == 0:
            return None
        if args:
            return (plan.merge(args[0]),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = plan.merge(kwargs["hidden_states"])
        return args, kwargs

    def unmerge_out(module, args, kwargs, output):
        plan = state.plans.get(key)
        if plan is None or plan.r == 0:
            return None
        return plan.unmerge(output)

    state.handles.append(block.register_forward_pre_hook(plan_hook, with_kwargs=True))
    state.handles.append(block.register_forward_hook(clear_hook))
    targets = [("attn1", state.merge_attn), ("attn2", state.merge_crossattn), ("ff", state.merge_mlp)]
    for name, wanted in targets:
        sub = getattr(block, name, None)
        if wanted and isinstance(sub, nn.Module):
            state.handles.append(sub.register_forward_pre_hook(merge_in, with_kwargs=True))
            state.handles.append(sub.register_forward_hook(unmerge_out, with_kwargs=True))


def remove_patch(unet: nn.Module) -> nn.Module:
    """Undo `apply_patch` (a no-op on an unpatched UNet); returns ``unet``."""
    model = _unet_of(unet)
    state = getattr(model, _STATE_ATTR, None)
    if state is not None:
        for handle in state.handles:
            handle.remove()
        state.handles.clear()
        state.plans.clear()
        delattr(model, _STATE_ATTR)
    return unet


def is_patched(unet: nn.Module) -> bool:
    """Whether `apply_patch` is active on ``unet``."""
    return getattr(_unet_of(unet), _STATE_ATTR, None) is not None
