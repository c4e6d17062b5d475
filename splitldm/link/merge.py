"""`TokenMerge`: the link stage that merges a payload's latent tokens on the ES and unmerges them on the UE.

The merging primitives (`plan_merge`, `MergePlan`) live in `splitldm.tome`; this stage only applies them to
the payload's primary tensors and carries the index map as lossless side information.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from splitldm.link.payload import Payload
from splitldm.link.stack import LinkContext, LinkStage
from splitldm.tome import _SIMILARITIES, MAX_TOKENS, MergePlan, _check_pos_int, _check_ratio, plan_merge, side_info_bits

_META_KEY = "token_merge"
_INDEX_SUFFIX = ".merge_index"


class TokenMerge(LinkStage):
    """Link stage: merge the tokens of each primary ``(B, C, H, W)`` tensor on send, unmerge on receive.

    On send, a tensor is read as ``N = H * W`` tokens of ``C`` channels, merged with `plan_merge`
    (matching on the tensor itself) to ``M = N - r`` tokens, ``r = int(ratio * N)``, and replaced by
    the merged tokens as a ``(B, C, 1, M)`` strip (4-D, so codec and channel stages apply unchanged).
    The index map crosses losslessly as side information: a uint8 tensor ``"<name>.merge_index"`` of
    ``ceil(bits / 8)`` bytes, ``bits = side_info_bits(...)`` (exact figure also in
    ``meta["token_merge"][name]["side_info_bits"]``). So ``payload.tensor_bits()`` after send is
    ``B*C*M*dtype_bits + 8*ceil(bits/8)`` for each merged tensor. Receive unmerges back to
    ``(B, C, H, W)``: each merged source takes its destination's received value. What arrives is
    untrusted: the merge record is checked field by field (types, ranges, ``side_info_bits``
    consistent with the rest) and the index map by `MergePlan.decode` (length, CRC-16, structure), so
    a damaged record or map raises ValueError / TypeError naming it and is never unmerged wrongly.

    :input: each targeted primary tensor ``x`` ``(B, C, H, W)``, real floating.
    :output: ``send``: ``(B, C, 1, M)`` merged tokens (``x``'s dtype) plus ``"<name>.merge_index"``
        uint8 ``(ceil(bits / 8),)``; ``payload.meta["token_merge"]`` holds the merge record.
        ``receive``: ``(B, C, H, W)``; the index map and the record are removed.
    :context: neither reads nor writes it (randomness, with ``use_rand``, comes from the generator).

    Args:
        ratio: fraction of tokens removed, in ``[0, 1)``; 0 passes the payload through untouched.
        sx, sy: destination window (tokens).
        use_rand: draw each window's destination from the link's generator (costs
            ``ceil(log2(sx*sy))`` bits per window); False: the top-left token (0 extra bits).
        similarity: ``"euclidean"`` (default: merge the pairs closest in L2, which minimises the
            reconstruction error) or ``"cosine"`` (ToMe's matching).
        names: which primary tensors to merge (default: all primary tensors).
        patch: token side in latent pixels: a ``(B, C, H, W)`` tensor becomes ``(H/p) (W/p)`` tokens of
            ``C p^2`` values (2 with SDXL's 4x128x128 latent: MEG-CVPO's 4096 tokens of 16 values).

    Packed latents (Flux): a 3-D primary tensor ``(B, N, D)`` is taken as ``N`` tokens of ``D`` values
    (FluxPipeline packs 2x2 patches of its 16-channel latent: ``D = 64``) on the grid
    ``payload.meta["token_grid"][name] = [h, w]`` (required: ``(H/16, W/16)`` for an ``H x W`` image),
    and restored to ``(B, N, D)``.
    """

    def __init__(self, ratio: float = 0.5, sx: int = 2, sy: int = 2, use_rand: bool = False,
                 similarity: str = "euclidean", names: Sequence[str] | None = None, patch: int = 1):
        super().__init__()
        self.patch = _check_pos_int(patch, "patch")
        self.ratio = _check_ratio(ratio)
        self.sx, self.sy = _check_pos_int(sx, "sx"), _check_pos_int(sy, "sy")
        if not isinstance(use_rand, bool):
            raise TypeError(f"use_rand: expected a bool, got {type(use_rand).__name__}")
        self.use_rand = use_rand
        if similarity not in _SIMILARITIES:
            raise ValueError(f"similarity: expected one of {_SIMILARITIES}, got {similarity!r}")
        self.similarity = similarity
        if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)):
            raise TypeError("names: expected a sequence of tensor names")
        self.names = None if names is None else tuple(names)

    def note(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "sx": self.sx, "sy": self.sy, "use_rand": self.use_rand,
                "similarity": self.similarity, "patch": self.patch}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.note().items())

    def _targets(self, payload) -> tuple[str, ...]:
        if self.names is None:
            return payload.primary
        missing = [n for n in self.names if n not in payload.primary]
        if missing:
            raise ValueError(f"names: {missing} are not primary tensors of the payload {list(payload.primary)}")
        return self.names

    def send(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        if self.ratio == 0:
            return payload
        info = dict(payload.meta.get(_META_KEY, {}))
        tensors = dict(payload.tensors)
        for name in self._targets(payload):
            x = tensors[name]
            if x.ndim not in (3, 4):
                raise ValueError(f"payload.tensors[{name!r}]: TokenMerge expects shape (B, C, H, W) or packed "
                                 f"tokens (B, N, D), got {tuple(x.shape)}")
            if x.is_complex() or not x.is_floating_point():
                raise TypeError(f"payload.tensors[{name!r}]: expected a real floating tensor, got {x.dtype}")
            if name in info or name + _INDEX_SUFFIX in tensors:
                raise ValueError(f"payload.tensors[{name!r}]: already token-merged")
            tokens, (h, w), form = _to_tokens(name, x, self.patch, payload.meta)  # (B, N, C) on an h x w grid
            b = x.shape[0]
            if self.sx > w or self.sy > h:
                raise ValueError(f"sx, sy: window {self.sx}x{self.sy} larger than the {h}x{w} grid of {name!r}")
            plan = plan_merge(tokens.float(), (h, w), self.ratio, sx=self.sx, sy=self.sy,
                              generator=generator if self.use_rand else None, similarity=self.similarity)
            merged = plan.merge(tokens.float()).to(x.dtype)  # (B, M, C)
            tensors[name] = merged.transpose(1, 2).unsqueeze(2).contiguous()  # (B, C, 1, M)
            tensors[name + _INDEX_SUFFIX] = plan.encode()
            info[name] = {"size": [h, w], "r": plan.r, "sx": self.sx, "sy": self.sy,
                          "random": plan.choice is not None, "batch": b,
                          "side_info_bits": plan.side_info_bits()}
            if form is not None:
                info[name]["form"] = form
        return payload.replace(tensors=tensors, meta={**payload.meta, _META_KEY: info})

    def receive(self, payload: Payload, context: LinkContext, generator: torch.Generator) -> Payload:
        if _META_KEY not in payload.meta:  # nothing was merged (ratio 0, or no TokenMerge upstream)
            return payload
        info = payload.meta[_META_KEY]
        if not isinstance(info, dict):
            raise ValueError(f"payload.meta[{_META_KEY!r}]: expected a dict of per-tensor merge records, "
                             f"got {type(info).__name__}")
        if not info:
            return payload
        tensors = dict(payload.tensors)
        for name, rec in info.items():
            index_name = name + _INDEX_SUFFIX
            if name not in tensors or index_name not in tensors:
                raise ValueError(f"payload: index map {index_name!r} or tensor {name!r} missing")
            h, w, r, sx, sy, random, b, form = _check_record(name, rec)
            y = tensors[name]
            m = h * w - r
            if y.ndim != 4 or y.shape[0] != b or y.shape[2] != 1 or y.shape[3] != m:
                raise ValueError(f"payload.tensors[{name!r}]: expected merged tokens ({b}, C, 1, {m}) for the "
                                 f"index map, got {tuple(y.shape)}")
            if not y.is_floating_point():
                raise TypeError(f"payload.tensors[{name!r}]: expected real floating merged tokens, got {y.dtype}")
            _check_form(name, form, y.shape[1])
            try:
                plan = MergePlan.decode(tensors.pop(index_name), (h, w), r, sx=sx, sy=sy, random=random,
                                        batch_size=b, device=y.device)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"payload.tensors[{index_name!r}]: index map does not match ({exc})") from exc
            tokens = plan.unmerge(y.squeeze(2).transpose(1, 2))  # (B, N, C)
            tensors[name] = _from_tokens(name, tokens, (h, w), rec.get("form"))
        meta = {k: v for k, v in payload.meta.items() if k != _META_KEY}
        return payload.replace(tensors=tensors, meta=meta)


# ------------------------------------------------------------------ the received merge record

def _record_int(name: str, rec: dict[str, Any], key: str, low: int, high: int) -> int:
    value = rec.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"payload.meta[{_META_KEY!r}][{name!r}][{key!r}]: expected an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"payload.meta[{_META_KEY!r}][{name!r}][{key!r}]: expected an int in [{low}, {high}], "
                         f"got {value}")
    return value


def _check_record(name: str, rec: Any):
    """The fields of a received merge record, checked: ``(h, w, r, sx, sy, random, batch, form)``."""
    where = f"payload.meta[{_META_KEY!r}][{name!r}]"
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: malformed merge record (expected a dict, got {type(rec).__name__})")
    missing = [k for k in ("size", "r", "sx", "sy", "random", "batch", "side_info_bits") if k not in rec]
    if missing:
        raise ValueError(f"{where}: malformed merge record (missing {missing})")
    size = rec["size"]
    if not isinstance(size, list) or len(size) != 2:
        raise ValueError(f"{where}['size']: expected [h, w], got {size!r}")
    h = _record_int(name, {"size[0]": size[0]}, "size[0]", 1, MAX_TOKENS)
    w = _record_int(name, {"size[1]": size[1]}, "size[1]", 1, MAX_TOKENS // h)
    sx = _record_int(name, rec, "sx", 1, w)
    sy = _record_int(name, rec, "sy", 1, h)
    r = _record_int(name, rec, "r", 0, h * w - (h // sy) * (w // sx))
    b = _record_int(name, rec, "batch", 1, MAX_TOKENS)
    random = rec["random"]
    if not isinstance(random, bool):
        raise TypeError(f"{where}['random']: expected a bool, got {random!r}")
    bits = side_info_bits((h, w), r, sx, sy, random, b)
    if rec["side_info_bits"] != bits or isinstance(rec["side_info_bits"], bool):
        raise ValueError(f"{where}['side_info_bits']: {rec['side_info_bits']!r} does not match the record "
                         f"({bits} bits for size {h}x{w}, r={r}, batch {b})")
    return h, w, r, sx, sy, random, b, rec.get("form")


def _check_form(name: str, form: Any, channels: int) -> None:
    """A received token layout record must be one `_to_tokens` writes, consistent with ``channels``."""
    where = f"payload.meta[{_META_KEY!r}][{name!r}]['form']"
    if form is None:
        return
    kind = form.get("kind") if isinstance(form, dict) else None
    if kind == "packed" and set(form) == {"kind"}:
        return
    if kind == "patch" and set(form) == {"kind", "patch", "channels"}:
        p, c = form["patch"], form["channels"]
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (p, c)) and c * p * p == channels:
            return
        raise ValueError(f"{where}: patch {p!r} x channels {c!r} do not give the {channels} values of a token")
    raise ValueError(f"{where}: unknown token layout {form!r}")


# ------------------------------------------------------------------ token layouts (patches, packed latents)

def _to_tokens(name: str, x: torch.Tensor, patch: int, meta: dict[str, Any]):
    """``x`` as ``(B, N, D)`` tokens, their ``(h, w)`` grid and the record `_from_tokens` needs (None:
    the plain ``(B, C, H, W)`` layout of one token per latent pixel)."""
    if x.ndim == 3:  # packed tokens (Flux): the grid comes from the payload, or is square
        b, n, d = x.shape
        grid = (meta.get("token_grid") or {}).get(name)
        if not isinstance(grid, (list, tuple)) or len(grid) != 2:
            raise ValueError(f"payload.tensors[{name!r}]: TokenMerge expects shape (B, C, H, W), or packed tokens "
                             f"(B, N, D) with their grid in payload.meta['token_grid'][{name!r}] = [h, w]; "
                             f"got {tuple(x.shape)} and grid {grid!r}")
        h, w = int(grid[0]), int(grid[1])
        if h * w != n:
            raise ValueError(f"payload.meta['token_grid'][{name!r}]: {h}x{w} does not hold {n} tokens")
        return x, (h, w), {"kind": "packed"}
    b, c, hh, ww = x.shape
    if hh % patch or ww % patch:
        raise ValueError(f"patch: {patch} does not divide the {hh}x{ww} grid of {name!r}")
    if patch == 1:
        return x.flatten(2).transpose(1, 2), (hh, ww), None
    h, w = hh // patch, ww // patch
    tokens = x.view(b, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * patch * patch)
    return tokens, (h, w), {"kind": "patch", "patch": patch, "channels": c}


def _from_tokens(name: str, tokens: torch.Tensor, size: tuple[int, int], form: dict[str, Any] | None) -> torch.Tensor:
    """Inverse of `_to_tokens`: ``(B, N, D)`` tokens back to the tensor's own layout."""
    b, n, d = tokens.shape
    h, w = size
    if form is None:
        return tokens.transpose(1, 2).reshape(b, d, h, w).contiguous()
    kind = form.get("kind") if isinstance(form, dict) else None
    if kind == "packed":
        return tokens.contiguous()
    if kind == "patch":
        p, c = int(form["patch"]), int(form["channels"])
        return tokens.view(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * p, w * p).contiguous()
    raise ValueError(f"payload.meta[{_META_KEY!r}][{name!r}]: unknown token layout {form!r}")
