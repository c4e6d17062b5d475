"""DiT block chains (SD3, PixArt, Flux): exact equality with the transformer's forward at every cut,
what crosses, cut tables of the real architectures on the meta device, bad input."""

import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel

from splitldm.pipeline.dit_chain import DiTCarry, FluxChain, PixArtChain, SD3Chain, dit_chain


def _seeded(factory, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory().eval()
    # Random weights everywhere (diffusers zero-initialises some output layers, which would hide bugs).
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def tiny_sd3(**extra):
    return _seeded(lambda: SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=6,
        pos_embed_max_size=16, **extra))


def tiny_pixart(**extra):
    return _seeded(lambda: PixArtTransformer2DModel(
        sample_size=8, num_layers=3, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=12,
        in_channels=4, out_channels=8, cross_attention_dim=24, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        **extra))


def tiny_flux(**extra):
    return _seeded(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=6, axes_dims_rope=(4, 4, 8), **extra))


def _sd3_inputs(batch=2, text=5):
    g = torch.Generator().manual_seed(3)
    return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, text, 12, generator=g),
                pooled_projections=torch.randn(batch, 6, generator=g), timestep=torch.tensor([981.0, 412.0][:batch]))


def _pixart_inputs(batch=2, text=6, additional=False, mask=True):
    g = torch.Generator().manual_seed(4)
    kw = dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
              encoder_hidden_states=torch.randn(batch, text, 12, generator=g), timestep=torch.tensor([999, 400][:batch]),
              added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    if additional:
        kw["added_cond_kwargs"] = {"resolution": torch.tensor([[64.0, 64.0]] * batch),
                                   "aspect_ratio": torch.tensor([[1.0]] * batch)}
    if mask:  # T5 padding: the last tokens of the first prompt are masked out
        m = torch.ones(batch, text)
        m[0, -2:] = 0
        kw["encoder_attention_mask"] = m
    return kw


def _flux_inputs(batch=2, text=5, guidance=False):
    g = torch.Generator().manual_seed(5)
    h = w = 4  # packed grid of an 8x8 latent
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    kw = dict(hidden_states=torch.randn(batch, h * w, 16, generator=g),
              encoder_hidden_states=torch.randn(batch, text, 12, generator=g),
              pooled_projections=torch.randn(batch, 6, generator=g), timestep=torch.tensor([0.9, 0.3][:batch]),
              img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3))
    if guidance:
        kw["guidance"] = torch.full((batch,), 3.5)
    return kw


CASES = {
    "sd3": (tiny_sd3, _sd3_inputs, SD3Chain),
    "sd35": (lambda: tiny_sd3(dual_attention_layers=(0,), qk_norm="rms_norm"), _sd3_inputs, SD3Chain),
    "pixart-alpha": (lambda: tiny_pixart(use_additional_conditions=True),
                     lambda: _pixart_inputs(additional=True), PixArtChain),
    "pixart-sigma": (lambda: tiny_pixart(use_additional_conditions=False), _pixart_inputs, PixArtChain),
    "flux-dev": (lambda: tiny_flux(guidance_embeds=True), lambda: _flux_inputs(guidance=True), FluxChain),
    "flux-schnell": (tiny_flux, _flux_inputs, FluxChain),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_block_cut_equals_the_transformer(case):
    build, inputs, chain_cls = CASES[case]
    model, kw = build(), inputs()
    chain = dit_chain(model)
    assert type(chain) is chain_cls
    with torch.no_grad():
        reference = model(**kw, return_dict=False)[0]
        assert torch.equal(chain(**kw), reference)
        for cut in range(len(chain) + 1):
            es = chain.run(chain.start(**kw), 0, cut)
            # The receiver rebuilds the carry from tensors + layout alone (cloned: nothing shared).
            tensors = {k: v.clone() for k, v in es.tensors().items()}
            ue = chain.carry_from_tensors(tensors, es.layout(), None)
            out = chain.run(ue, cut).hidden
            assert torch.equal(out, reference), (case, cut, chain.names[min(cut, len(chain) - 1)])


def test_stage_names_and_what_crosses():
    sd3, pixart, flux = dit_chain(tiny_sd3()), dit_chain(tiny_pixart()), dit_chain(tiny_flux())
    assert sd3.names == ["input", "block.0", "block.1", "block.2", "output"]
    assert flux.names == ["input", "double.0", "double.1", "single.0", "single.1", "output"]
    with torch.no_grad():
        # SD3 and Flux: both streams cross between blocks.
        c = sd3.run(sd3.start(**_sd3_inputs()), 0, 2)
        assert set(c.tensors()) == {"hidden", "encoder_hidden_states", "temb"}
        assert c.tensors()["hidden"].shape == (2, 16, 16) and c.tensors()["encoder_hidden_states"].shape == (2, 5, 16)
        # SD3's last joint block is context_pre_only: after it only the image stream is left.
        assert "encoder_hidden_states" not in sd3.run(sd3.start(**_sd3_inputs()), 0, 4).tensors()
        c = flux.run(flux.start(**_flux_inputs()), 0, 4)  # between the single-stream blocks
        assert set(c.tensors()) == {"hidden", "encoder_hidden_states", "temb", "ids"}
        assert c.tensors()["ids"].shape == (5 + 16, 3) and c.layout() == {"size": None}
        # PixArt: the text is fixed after 'input'; its mask and both timestep embeddings cross.
        c = pixart.run(pixart.start(**_pixart_inputs()), 0, 2)
        assert set(c.tensors()) == {"hidden", "encoder_hidden_states", "temb", "embedded_timestep",
                                    "encoder_attention_mask"}
        assert not PixArtChain.text_updated_per_block and SD3Chain.text_updated_per_block
        # Before stage 0 the raw inputs cross under 'inputs.'; after the last stage only the output.
        assert "inputs.timestep" in pixart.start(**_pixart_inputs()).tensors()
        assert set(pixart.run(pixart.start(**_pixart_inputs())).tensors()) == {"hidden"}


def test_cut_table_of_tiny_configs_balances():
    for chain in (dit_chain(tiny_sd3()), dit_chain(tiny_pixart()), dit_chain(tiny_flux(guidance_embeds=True))):
        rows = chain.cut_table(height=8, width=8, text_length=5)
        assert len(rows) == len(chain) + 1
        total = rows[0].flops_ue
        assert total > 0 and all(r.flops_es + r.flops_ue == total for r in rows)
        params = sum(p.numel() for p in chain.model.parameters())
        assert rows[0].params_ue == params == rows[-1].params_es
        assert rows[1].bytes_fp32 == 2 * rows[1].bytes_fp16
        cfg = chain.cut_table(height=8, width=8, text_length=5, cfg=True)
        assert cfg[0].flops_ue == 2 * total and cfg[2].tensors["hidden"][0] == 2 * rows[2].tensors["hidden"][0]
        shared = rows[2].tensors.get("ids", (0, 0))  # Flux's RoPE ids are shared by the batch
        assert cfg[2].bytes_fp16 == 2 * rows[2].bytes_fp16 - 2 * shared[0] * shared[1]


def test_dit_chain_bad_input():
    with pytest.raises(TypeError, match="UNet2DConditionModel.*supported.*SD3Transformer2DModel"):
        from diffusers import UNet2DConditionModel

        dit_chain(UNet2DConditionModel(block_out_channels=(8, 8), norm_num_groups=4, cross_attention_dim=8,
                                       layers_per_block=1, attention_head_dim=2,
                                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")))
    with pytest.raises(TypeError, match="transformer"):
        SD3Chain(tiny_pixart())
    sd3, flux, pixart = dit_chain(tiny_sd3()), dit_chain(tiny_flux(guidance_embeds=True)), dit_chain(tiny_pixart())
    kw = _sd3_inputs()
    carry = sd3.start(**kw)
    with pytest.raises(ValueError, match="start, stop"):
        sd3.run(carry, 0, len(sd3) + 1)
    with pytest.raises(TypeError, match="start"):
        sd3.run(carry, 1.0)
    with pytest.raises(ValueError, match="carry"):
        sd3.run(carry, 1)  # block.0 needs the output of 'input'
    with pytest.raises(TypeError, match="carry"):
        sd3.run({"hidden": kw["hidden_states"]})
    with pytest.raises(ValueError, match="hidden_states"):
        sd3.start(**dict(kw, hidden_states=kw["hidden_states"][:, :3]))
    with pytest.raises(ValueError, match="pooled_projections"):
        sd3.start(**dict(kw, pooled_projections=None))
    with pytest.raises(TypeError, match="skip_layers"):
        sd3.start(**kw, skip_layers=[1])
    with pytest.raises(ValueError, match="guidance"):
        flux.start(**_flux_inputs())
    with pytest.raises(ValueError, match="img_ids"):
        flux.start(**dict(_flux_inputs(guidance=True), img_ids=None))
    with pytest.raises(TypeError, match="controlnet_block_samples"):
        flux.start(**_flux_inputs(guidance=True), controlnet_block_samples=[torch.zeros(1)])
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        dit_chain(tiny_pixart(use_additional_conditions=True)).start(**dict(_pixart_inputs(), added_cond_kwargs=None))
    with pytest.raises(ValueError, match="layout"):
        DiTCarry.from_tensors({"hidden": torch.zeros(1)}, {})
    with pytest.raises(ValueError, match="tensors"):
        DiTCarry.from_tensors({}, {"size": None})
    with pytest.raises(ValueError, match="batch_size"):
        pixart.cut_table(batch_size=0)
    with pytest.raises(ValueError, match="height"):
        sd3.cut_table(height=7, width=8)
