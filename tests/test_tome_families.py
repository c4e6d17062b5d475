"""Token merging across pipeline families (issue 13): the attention patch on SDXL and PixArt (ratio 0
exact, ratio > 0 merges and removes cleanly), a clear TypeError on SD3 / Flux, and the TokenMerge link
stage on every family's latent (Flux: 16 channels packed 2x2)."""

import numpy as np
import pytest
import torch

from splitldm.link.merge import TokenMerge
from splitldm.link.payload import Payload
from splitldm.link.stack import Link
from splitldm.pipeline.models import build_pipeline
from splitldm.tome import apply_patch, is_patched, remove_patch


def _images(pipe, **kw):
    return pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np", **kw).images


@pytest.fixture(scope="module")
def sdxl():
    return build_pipeline("sdxl-tiny-random")


@pytest.fixture(scope="module")
def pixart():
    return build_pipeline("pixart-tiny-random")


def test_patch_sdxl_ratio_zero_exact_and_merging_at_its_attention_resolution(sdxl):
    ref = _images(sdxl)
    try:
        apply_patch(sdxl, 0.0, max_downsample=2)
        assert is_patched(sdxl.unet) and np.array_equal(_images(sdxl), ref)
        # SDXL's transformer blocks sit at 2x downsampling: the default max_downsample=1 merges nothing ...
        apply_patch(sdxl, 0.5)
        assert np.array_equal(_images(sdxl), ref)
        # ... max_downsample=2 merges there (and changes the images, a little).
        apply_patch(sdxl, 0.5, max_downsample=2)
        merged = _images(sdxl)
        assert merged.shape == ref.shape and np.isfinite(merged).all() and not np.array_equal(merged, ref)
    finally:
        remove_patch(sdxl)
    assert not is_patched(sdxl.unet) and np.array_equal(_images(sdxl), ref)


def test_patch_pixart_ratio_zero_exact_and_merging_on_the_patch_grid(pixart):
    kw = dict(height=64, width=64, use_resolution_binning=False)
    ref = _images(pixart, **kw)
    try:
        apply_patch(pixart, 0.0)  # a pipeline with .transformer works like one with .unet
        assert is_patched(pixart.transformer) and np.array_equal(_images(pixart, **kw), ref)
        apply_patch(pixart.transformer, 0.5, merge_mlp=True)
        # The 8x8 latent is 4x4 tokens of 2x2 patches: the patch sees the token grid at downsampling 1.
        seen = []
        hook = pixart.transformer.transformer_blocks[0].attn1.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].shape[1]))
        merged = _images(pixart, **kw)
        hook.remove()
        assert seen and all(n == 16 - 8 for n in seen)  # r = int(0.5 * 16) tokens removed before self-attention
        assert merged.shape == ref.shape and np.isfinite(merged).all() and not np.array_equal(merged, ref)
    finally:
        remove_patch(pixart)
    assert np.array_equal(_images(pixart, **kw), ref)


@pytest.mark.parametrize("name, block", [("sd3-tiny-random", "JointTransformerBlock"),
                                         ("flux-tiny-random", "FluxTransformerBlock")])
def test_patch_refuses_joint_attention_blocks_by_name(name, block):
    pipe = build_pipeline(name)
    with pytest.raises(TypeError, match=block):
        apply_patch(pipe, 0.5)
    assert not is_patched(pipe.transformer)


# ------------------------------------------------------------------------ TokenMerge per family latent

def _family_latents():
    g = torch.Generator().manual_seed(0)
    return {  # name -> (latent, TokenMerge kwargs, meta, token grid)
        "sd": (torch.randn(2, 4, 8, 8, generator=g), {}, {}, (8, 8)),
        "sdxl": (torch.randn(2, 4, 16, 16, generator=g), {}, {}, (16, 16)),
        "sdxl-patch2": (torch.randn(2, 4, 16, 16, generator=g), {"patch": 2}, {}, (8, 8)),  # 16 values a token
        "sd3": (torch.randn(2, 16, 8, 8, generator=g), {}, {}, (8, 8)),
        "pixart": (torch.randn(2, 4, 12, 8, generator=g), {}, {}, (12, 8)),
        # Flux: (B, (H/2)(W/2), 16 * 2 * 2) packed tokens on the grid the payload names.
        "flux-packed": (torch.randn(2, 16, 64, generator=g), {}, {"token_grid": {"latents": [4, 4]}}, (4, 4)),
        "flux-packed-6x4": (torch.randn(2, 24, 64, generator=g), {}, {"token_grid": {"latents": [6, 4]}}, (6, 4)),
    }


def _tokens(x, patch=1):
    if x.ndim == 3:
        return x
    b, c, h, w = x.shape
    return x.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * patch * patch)


@pytest.mark.parametrize("family", sorted(_family_latents()))
def test_token_merge_round_trip_every_family_latent(family):
    from splitldm.tome import plan_merge

    x, kw, meta, grid = _family_latents()[family]
    payload = Payload(tensors={"latents": x}, meta={"kind": "test", **meta}, primary=("latents",))
    assert torch.equal(Link([TokenMerge(0.0, **kw)])(payload).tensors["latents"], x)  # ratio 0: exact
    stage = TokenMerge(0.5, **kw)
    out = Link([stage])(payload)
    y = out.tensors["latents"]
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.equal(y, x)
    assert set(out.tensors) == {"latents"}  # the index map was consumed on receive
    # What crossed equals merge -> unmerge of the same tokens on the same grid (an ideal link).
    tokens = _tokens(x, kw.get("patch", 1))
    plan = plan_merge(tokens, grid, 0.5, similarity="euclidean")
    assert plan.r == int(0.5 * grid[0] * grid[1])
    assert torch.equal(_tokens(y, kw.get("patch", 1)), plan.unmerge(plan.merge(tokens)))


def test_token_merge_meg_cvpo_bit_model_on_the_sdxl_latent():
    """4x128x128 latent as 4096 tokens of 16 values (patch 2): half of them merged at ratio 0.5."""
    x = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(1)).half()
    payload = Payload(tensors={"latents": x}, meta={"kind": "test"}, primary=("latents",))
    sent = TokenMerge(0.5, patch=2).send(payload, None, None)
    rec = sent.meta["token_merge"]["latents"]
    assert rec["size"] == [64, 64] and rec["r"] == 2048
    assert sent.tensors["latents"].shape == (1, 16, 1, 2048)  # 2048 kept tokens of 16 fp16 values


def test_token_merge_packed_bad_grid():
    x = torch.randn(1, 24, 64)
    payload = Payload(tensors={"latents": x}, meta={"kind": "test"}, primary=("latents",))
    with pytest.raises(ValueError, match="token_grid"):  # packed tokens need their grid
        Link([TokenMerge(0.5)])(payload)
    bad = Payload(tensors={"latents": x}, meta={"kind": "test", "token_grid": {"latents": [5, 5]}}, primary=("latents",))
    with pytest.raises(ValueError, match="token_grid"):
        Link([TokenMerge(0.5)])(bad)
    with pytest.raises(ValueError, match="patch"):
        Link([TokenMerge(0.5, patch=3)])(Payload(tensors={"latents": torch.randn(1, 4, 8, 8)}, meta={"kind": "t"},
                                                 primary=("latents",)))
