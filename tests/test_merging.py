"""Token merging: primitives, the UNet attention patch and the TokenMerge link stage."""

import math

import pytest
import torch

from splitldm.link.stack import Link
from splitldm.link.merge import TokenMerge
from splitldm.tome import (
    MergePlan, apply_patch, is_patched, merge_tokens, plan_merge, remove_patch, side_info_bits,
    unmerge_tokens,
)
from splitldm.link.payload import Payload


def _tokens(b=2, h=8, w=8, c=6, seed=0):
    return torch.randn(b, h * w, c, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- primitives
def test_ratio_zero_is_exact_identity():
    x = _tokens()
    merged, plan = merge_tokens(x, (8, 8), 0.0)
    assert plan.r == 0 and plan.num_merged == 64
    assert torch.equal(merged, x) and torch.equal(unmerge_tokens(merged, plan), x)
    assert torch.equal(plan.slot, torch.arange(64).expand(2, 64))


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
@pytest.mark.parametrize("size,ratio", [((8, 8), 0.5), ((7, 9), 0.3), ((6, 4), 0.7)])
def test_unmerge_merge_exact_and_averages(size, ratio, similarity):
    h, w = size
    x = _tokens(h=h, w=w)
    plan = plan_merge(x, size, ratio, similarity=similarity)
    n = h * w
    assert plan.r == min(int(ratio * n), n - (h // 2) * (w // 2))
    y = plan.merge(x)
    assert y.shape == (2, n - plan.r, 6)
    z = plan.unmerge(y)
    for bi in range(2):
        counts = torch.bincount(plan.slot[bi], minlength=plan.num_merged)
        assert torch.equal(counts.float(), plan.counts[bi])
        alone = counts[plan.slot[bi]] == 1
        # untouched tokens come back bit-exact
        assert torch.equal(z[bi, alone], x[bi, alone])
        # merged groups come back as the group mean (destination + its sources)
        for s in torch.unique(plan.slot[bi][~alone]):
            members = plan.slot[bi] == s
            assert members.sum() >= 2
            torch.testing.assert_close(z[bi, members], x[bi, members].mean(0).expand(int(members.sum()), -1))
    # destinations keep distinct slots; every merged group is built around one destination
    for bi in range(2):
        dst_slots = plan.slot[bi, plan.dst]
        assert torch.unique(dst_slots).numel() == plan.dst.numel()
        counts = torch.bincount(plan.slot[bi], minlength=plan.num_merged)
        assert set(torch.nonzero(counts > 1).flatten().tolist()) <= set(dst_slots.tolist())
        assert int(plan.src_merged[bi].sum()) == plan.r


def test_matching_picks_most_similar_destination():
    x = _tokens(b=1, c=8, seed=3)
    plan = plan_merge(x, (8, 8), 0.5)
    xn = x[0] / x[0].norm(dim=-1, keepdim=True)
    scores = xn[plan.src] @ xn[plan.dst].T
    best, idx = scores.max(-1)
    merged = plan.src_merged[0]
    assert torch.equal(plan.src_dst[0][merged], idx[merged])
    # the merged sources are the r best-matching ones
    assert best[merged].min() >= best[~merged].max()


def test_size_weighted_merge():
    x = _tokens(b=1)
    plan = plan_merge(x, (8, 8), 0.5)
    sizes = torch.rand(1, 64, generator=torch.Generator().manual_seed(1)) + 0.5
    y = plan.merge(x, sizes=sizes)
    s = int(plan.slot[0, plan.src[plan.src_merged[0]][0]])
    members = plan.slot[0] == s
    want = (x[0, members] * sizes[0, members, None]).sum(0) / sizes[0, members].sum()
    torch.testing.assert_close(y[0, s], want)
    torch.testing.assert_close(plan.merge_sizes(sizes).sum(), sizes.sum())
    assert torch.equal(plan.merge_sizes(), plan.counts)


def test_generator_determinism_and_randomness():
    x = _tokens()
    p1 = plan_merge(x, (8, 8), 0.5, generator=torch.Generator().manual_seed(7))
    p2 = plan_merge(x, (8, 8), 0.5, generator=torch.Generator().manual_seed(7))
    p3 = plan_merge(x, (8, 8), 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(p1.slot, p2.slot) and torch.equal(p1.choice, p2.choice)
    assert not torch.equal(p1.choice, p3.choice)
    fixed = plan_merge(x, (8, 8), 0.5)
    assert fixed.choice is None and torch.equal(fixed.dst, torch.tensor(
        [r * 8 + c for r in range(0, 8, 2) for c in range(0, 8, 2)]))
    # one destination per 2x2 window
    rows, cols = p1.dst // 8, p1.dst % 8
    assert torch.equal(torch.sort(rows // 2 * 4 + cols // 2).values, torch.arange(16))


@pytest.mark.parametrize("random", [False, True])
def test_encode_decode_round_trip_exact_bits(random):
    x = _tokens(b=3, h=6, w=10)
    g = torch.Generator().manual_seed(0) if random else None
    plan = plan_merge(x, (6, 10), 0.4, sx=2, sy=3, generator=g)
    data = plan.encode()
    n_dst = (6 // 3) * (10 // 2)
    want = (n_dst * math.ceil(math.log2(6)) if random else 0) + 3 * ((60 - n_dst) + plan.r * math.ceil(math.log2(n_dst))) \
        + 16  # the index map's CRC-16
    assert plan.side_info_bits() == want == side_info_bits((6, 10), plan.r, 2, 3, random, 3)
    assert data.dtype == torch.uint8 and data.numel() == math.ceil(want / 8)
    back = MergePlan.decode(data, (6, 10), plan.r, sx=2, sy=3, random=random, batch_size=3)
    assert torch.equal(back.slot, plan.slot) and torch.equal(back.counts, plan.counts)


def test_primitive_bad_inputs():
    x = _tokens()
    with pytest.raises(ValueError, match="ratio"):
        plan_merge(x, (8, 8), 1.0)
    with pytest.raises(ValueError, match="ratio"):
        plan_merge(x, (8, 8), -0.1)
    with pytest.raises(TypeError, match="ratio"):
        plan_merge(x, (8, 8), "0.5")
    with pytest.raises(ValueError, match="size"):
        plan_merge(x, (8, 7), 0.5)
    with pytest.raises(ValueError, match="metric"):
        plan_merge(x[0], (8, 8), 0.5)
    with pytest.raises(TypeError, match="generator"):
        plan_merge(x, (8, 8), 0.5, generator=1)
    with pytest.raises(ValueError, match="similarity"):
        plan_merge(x, (8, 8), 0.5, similarity="dot")
    with pytest.raises(ValueError, match="sx"):
        plan_merge(x, (8, 8), 0.5, sx=9)
    plan = plan_merge(x, (8, 8), 0.5)
    with pytest.raises(ValueError, match="x"):
        plan.merge(x[:, :10])
    with pytest.raises(ValueError, match="y"):
        plan.unmerge(x)
    with pytest.raises(TypeError, match="plan"):
        unmerge_tokens(x, "plan")
    data = plan.encode()
    with pytest.raises(ValueError, match="data"):
        MergePlan.decode(data[:-1], (8, 8), plan.r, batch_size=2)
    with pytest.raises(ValueError, match="data"):
        MergePlan.decode(data, (8, 8), plan.r - 1, batch_size=2)


# ----------------------------------------------------------------------------- UNet patch
@pytest.fixture(scope="module")
def unet_io():
    from splitldm.pipeline.models import build_unet

    unet = build_unet("tiny", seed=0)
    g = torch.Generator().manual_seed(0)
    # the tiny UNet's native 8x8 latent: transformer blocks at 8x8 (64 tokens) and 4x4
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500])
    c = torch.randn(2, 5, 64, generator=g)
    with torch.no_grad():
        ref = unet(x, t, c).sample
    return unet, (x, t, c), ref


def _run(unet, io):
    with torch.no_grad():
        return unet(*io).sample


def test_patch_ratio_zero_exact_and_removal(unet_io):
    unet, io, ref = unet_io
    blocks_before = [type(m) for m in unet.modules()]
    apply_patch(unet, 0.0)
    assert is_patched(unet)
    assert torch.equal(_run(unet, io), ref)
    remove_patch(unet)
    apply_patch(unet, 0.5, max_downsample=2, merge_crossattn=True, merge_mlp=True)
    out = _run(unet, io)
    assert not torch.equal(out, ref) and torch.isfinite(out).all()
    assert [type(m) for m in unet.modules()] == blocks_before  # no class swapping
    remove_patch(unet)
    assert not is_patched(unet)
    assert torch.equal(_run(unet, io), ref)
    remove_patch(unet)  # no-op when unpatched


def test_patch_idempotent_and_deterministic(unet_io):
    unet, io, ref = unet_io
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())  # noqa: E731
    base_hooks = hooks()
    apply_patch(unet, 0.5, use_rand=True, seed=3)
    n_hooks = hooks()
    a = _run(unet, io)
    apply_patch(unet, 0.5, use_rand=True, seed=3)
    assert hooks() == n_hooks  # re-applying replaces, never stacks
    assert torch.equal(_run(unet, io), a)
    apply_patch(unet, 0.5, use_rand=False)
    b1, b2 = _run(unet, io), _run(unet, io)
    assert torch.equal(b1, b2)
    rel = ((b1 - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.5
    remove_patch(unet)
    assert hooks() == base_hooks
    assert torch.equal(_run(unet, io), ref)


def test_patch_bad_inputs(unet_io):
    unet, _, _ = unet_io
    with pytest.raises(ValueError, match="ratio"):
        apply_patch(unet, 1.5)
    with pytest.raises(ValueError, match="max_downsample"):
        apply_patch(unet, 0.5, max_downsample=0)
    with pytest.raises(ValueError, match="unet"):
        apply_patch(torch.nn.Linear(2, 2), 0.5)
    with pytest.raises(TypeError, match="unet"):
        apply_patch("unet", 0.5)
    assert not is_patched(unet)


# ----------------------------------------------------------------------------- link stage
def _payload(b=2, c=4, h=8, w=8, dtype=torch.float32):
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(5)).to(dtype)
    return Payload({"latents": x, "t": torch.tensor([3])}, meta={"step": 3}, primary=("latents",))


@pytest.mark.parametrize("use_rand", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_token_merge_bits_exact_and_round_trip(use_rand, dtype):
    p = _payload(dtype=dtype)
    stage = TokenMerge(0.5, use_rand=use_rand)
    g = torch.Generator().manual_seed(0)
    sent = stage.send(p, {}, g)
    rec = sent.meta["token_merge"]["latents"]
    m = 64 - rec["r"]
    assert rec["r"] == 32 and sent.tensors["latents"].shape == (2, 4, 1, m)
    bits = side_info_bits((8, 8), 32, 2, 2, use_rand, 2)
    assert rec["side_info_bits"] == bits == (16 * 2 if use_rand else 0) + 2 * (48 + 32 * 4) + 16  # + CRC-16
    elem = torch.finfo(dtype).bits
    assert sent.tensor_bits(["latents"]) == 2 * 4 * m * elem
    assert sent.tensor_bits(["latents.merge_index"]) == 8 * math.ceil(bits / 8)
    assert sent.tensor_bits() == 2 * 4 * m * elem + 8 * math.ceil(bits / 8) + 64  # + the int64 "t"
    assert sent.num_bits() == 8 * len(sent.replace(tensors=sent.digital_tensors()).to_bytes())
    # through bytes and back, then receive
    wire = Payload.from_bytes(sent.to_bytes())
    out = stage.receive(wire, {}, g)
    direct = stage.receive(sent, {}, g)
    assert torch.equal(out.tensors["latents"], direct.tensors["latents"])
    assert out.tensors["latents"].shape == (2, 4, 8, 8) and out.tensors["latents"].dtype == dtype
    assert set(out.tensors) == {"latents", "t"} and out.meta == {"step": 3}
    # equals the primitive's unmerge(merge(x))
    tok = p.tensors["latents"].flatten(2).transpose(1, 2).float()
    gen = torch.Generator().manual_seed(0) if use_rand else None
    plan = plan_merge(tok, (8, 8), 0.5, generator=gen, similarity="euclidean")
    want = plan.unmerge(plan.merge(tok).to(dtype).float()).to(dtype).transpose(1, 2).reshape(2, 4, 8, 8)
    assert torch.equal(out.tensors["latents"], want)


def test_token_merge_in_link_and_ratio_zero():
    p = _payload()
    out = Link([TokenMerge(0.0)])(p)
    assert torch.equal(out.tensors["latents"], p.tensors["latents"])
    out = Link([TokenMerge(0.75)])(p, generator=torch.Generator().manual_seed(0))
    sizes = [r.bits for r in out.history]
    assert sizes[1] < sizes[0] and sizes[2] == sizes[0]
    assert out.tensors["latents"].shape == p.tensors["latents"].shape


def test_token_merge_bad_inputs():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="ratio"):
        TokenMerge(1.0)
    with pytest.raises(ValueError, match="ratio"):
        TokenMerge(-0.5)
    with pytest.raises(ValueError, match="similarity"):
        TokenMerge(0.5, similarity="x")
    bad_rank = Payload({"latents": torch.randn(2, 4, 64)}, primary=("latents",))
    with pytest.raises(ValueError, match="latents"):
        TokenMerge(0.5).send(bad_rank, {}, g)
    with pytest.raises(ValueError, match="sx"):
        TokenMerge(0.5, sx=16).send(_payload(), {}, g)
    with pytest.raises(ValueError, match="names"):
        TokenMerge(0.5, names=("hidden",)).send(_payload(), {}, g)
    stage = TokenMerge(0.5)
    sent = stage.send(_payload(), {}, g)
    with pytest.raises(ValueError, match="already"):
        stage.send(sent, {}, g)
    # index map that does not match the payload
    short = sent.replace(tensors={**sent.tensors, "latents.merge_index": sent.tensors["latents.merge_index"][:-1]})
    with pytest.raises(ValueError, match="merge_index"):
        stage.receive(short, {}, g)
    missing = sent.replace(tensors={k: v for k, v in sent.tensors.items() if k != "latents.merge_index"})
    with pytest.raises(ValueError, match="merge_index"):
        stage.receive(missing, {}, g)
    wrong = sent.replace(tensors={**sent.tensors, "latents": sent.tensors["latents"][..., :-1]})
    with pytest.raises(ValueError, match="latents"):
        stage.receive(wrong, {}, g)
    meta = dict(sent.meta)
    meta["token_merge"] = {"latents": dict(meta["token_merge"]["latents"], r=31)}
    with pytest.raises(ValueError):
        stage.receive(sent.replace(meta=meta), {}, g)


def test_token_merge_stage_leaves_the_typed_context_alone():
    from splitldm.link.stack import LinkContext

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    p = Payload({"latents": x}, primary=("latents",))
    ctx = LinkContext(snr_db=5.0)
    out = Link([TokenMerge(0.5)])(p, generator=torch.Generator().manual_seed(0), context=ctx)
    assert out.tensors["latents"].shape == x.shape
    assert list(ctx) == ["snr_db"] and ctx.snr_db == 5.0  # TokenMerge neither reads nor writes it
