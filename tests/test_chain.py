"""UNetChain: exact equality with UNet2DConditionModel.forward at every cut, and the cut table."""

import pytest
import torch

from splitldm import UNetChain, build_unet
from splitldm.pipeline.chain import Carry, format_cut_table


def _inputs(batch=2, text_len=16, dim=64, size=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, size, size, generator=g), torch.tensor(417),
            torch.randn(batch, text_len, dim, generator=g))


@pytest.mark.parametrize("cfg_batching", [False, True], ids=["single", "cfg-batch"])
def test_every_cut_equals_unet(tiny_pipe, cfg_batching):
    unet = tiny_pipe.unet
    chain = UNetChain(unet)
    sample, t, text = _inputs()
    if cfg_batching:  # the doubled [uncond; cond] batch classifier-free guidance runs
        sample, text = torch.cat([sample, sample]), torch.cat([torch.zeros_like(text), text])
    with torch.no_grad():
        reference = unet(sample, t, text).sample
        assert torch.equal(chain(sample, t, text), reference)
        for cut in range(len(chain) + 1):
            es = chain.run(chain.start(sample, t, text), 0, cut)
            # What crosses is rebuilt from tensors + layout alone, as the receiver does.
            ue = Carry.from_tensors({k: v.clone() for k, v in es.tensors().items()}, es.layout())
            out = chain.run(ue, cut).hidden
            assert (out - reference).abs().max().item() <= 1e-6, cut
            assert torch.equal(out, reference), cut


def test_odd_latent_size_and_guidance_embedding():
    """Odd sizes need explicit upsample sizes; LCM-style UNets take a guidance embedding."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=7, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8, time_cond_proj_dim=16).eval()
    chain = UNetChain(unet)
    g = torch.Generator().manual_seed(1)
    x, text, w = torch.randn(1, 4, 7, 7, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(1, 16, generator=g)
    with torch.no_grad():
        ref = unet(x, 10, text, timestep_cond=w).sample
        for cut in range(len(chain) + 1):
            es = chain.run(chain.start(x, 10, text, timestep_cond=w), 0, cut)
            assert torch.equal(chain.run(Carry.from_tensors(es.tensors(), es.layout()), cut).hidden, ref)


def test_stage_names_and_carry_contents(tiny_pipe):
    chain = UNetChain(tiny_pipe.unet)
    assert chain.names[0] == "input" and chain.names[-1] == "output" and "mid" in chain.names
    sample, t, text = _inputs()
    with torch.no_grad():
        after_down = chain.run(chain.start(sample, t, text), 0, chain.names.index("mid"))
    tensors = after_down.tensors()
    # The last skip is the hidden state itself: it crosses once.
    assert after_down.last_skip_is_hidden()
    assert len([k for k in tensors if k.startswith("skip.")]) == len(after_down.skips) - 1
    assert {"hidden", "emb", "encoder_hidden_states"} <= tensors.keys()


def test_cut_table_tiny_and_sd15_order_of_magnitude():
    rows = UNetChain(build_unet("sd15", device="meta")).cut_table()
    total = rows[0].flops_ue
    assert 0.7e12 < total < 0.9e12  # SD-1.5 at 512 px: ~0.8 TFLOP per UNet step
    assert all(r.flops_es + r.flops_ue == total for r in rows)
    assert rows[-1].bytes_fp16 == 4 * 64 * 64 * 2  # the latent: 32 KiB
    assert 2.4 * 2**20 < rows[1].bytes_fp16 < 2.8 * 2**20  # after conv_in: ~2.5 MiB (+ text embeddings)
    assert max(r.bytes_fp16 for r in rows[2:-2]) < 14 * 2**20
    assert all(r.bytes_fp32 == 2 * r.bytes_fp16 for r in rows[1:])  # row 0 also holds the int64 timestep
    assert rows[0].bytes_fp32 - 2 * rows[0].bytes_fp16 == -8
    params = sum(p.numel() for p in build_unet("sd15", device="meta").parameters())
    assert rows[0].params_ue == params and rows[-1].params_es == params
    cfg_rows = UNetChain(build_unet("sd15", device="meta")).cut_table(cfg=True)
    assert cfg_rows[0].flops_ue == 2 * total
    assert "cut" in format_cut_table(rows)


@pytest.mark.parametrize("name", ["sd21", "sdxl"])
def test_cut_table_other_configs_without_weights(name):
    rows = UNetChain(build_unet(name, device="meta")).cut_table()
    assert rows[0].flops_ue > 1e12 and rows[-1].flops_es == rows[0].flops_ue


def test_chain_bad_input(tiny_pipe):
    chain = UNetChain(tiny_pipe.unet)
    sample, t, text = _inputs()
    with pytest.raises(TypeError, match="unet"):
        UNetChain(torch.nn.Linear(2, 2))
    carry = chain.start(sample, t, text)
    with pytest.raises(ValueError, match="start, stop"):
        chain.run(carry, 0, len(chain) + 1)
    with pytest.raises(ValueError, match="start, stop"):
        chain.run(carry, 3, 2)
    with pytest.raises(TypeError, match="start"):
        chain.run(carry, 1.5)
    with pytest.raises(ValueError, match="carry"):
        chain.run(carry, 1)  # stage 'down.0' needs the output of stage 'input'
    with pytest.raises(ValueError, match="sample"):
        chain.start(sample[0], t, text)
    with pytest.raises(ValueError, match="sample"):
        chain.start(sample[:, :3], t, text)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        chain.start(sample, t, text[0])
    with pytest.raises(TypeError, match="residual"):
        chain.start(sample, t, text, mid_block_additional_residual=sample)
    with pytest.raises(ValueError, match="batch_size"):
        chain.cut_table(batch_size=0)
    with pytest.raises(ValueError, match="layout"):
        Carry.from_tensors({"hidden": sample}, {})


@pytest.mark.parametrize("cfg_batching", [False, True], ids=["single", "cfg-batch"])
def test_sdxl_added_conditioning_every_cut_equals_unet(cfg_batching):
    """SDXL's UNet: pooled text embeddings and the 6 size/crop ids enter the time embedding (issue 13)."""
    from splitldm.pipeline.models import build_pipeline

    unet = build_pipeline("sdxl-tiny-random").unet
    cfg = unet.config
    assert cfg.addition_embed_type == "text_time"
    chain = UNetChain(unet)
    g = torch.Generator().manual_seed(7)
    b = 2
    sample = torch.randn(b, cfg.in_channels, 8, 8, generator=g)
    text = torch.randn(b, 5, cfg.cross_attention_dim, generator=g)
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    added = {"text_embeds": torch.randn(b, pooled, generator=g),
             "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [64.0, 48.0, 4.0, 0.0, 64.0, 64.0]])}
    if cfg_batching:  # zeroed negative conditioning, as SDXL's force_zeros_for_empty_prompt does
        sample, text = torch.cat([sample, sample]), torch.cat([torch.zeros_like(text), text])
        added = {"text_embeds": torch.cat([torch.zeros_like(added["text_embeds"]), added["text_embeds"]]),
                 "time_ids": torch.cat([added["time_ids"], added["time_ids"]])}
    t = torch.tensor(601)
    with torch.no_grad():
        reference = unet(sample, t, text, added_cond_kwargs=added).sample
        # The added conditioning matters: without the pooled embedding the output changes.
        other = dict(added, text_embeds=added["text_embeds"] + 1)
        assert not torch.equal(unet(sample, t, text, added_cond_kwargs=other).sample, reference)
        start = chain.start(sample, t, text, added_cond_kwargs=added)
        assert {"inputs.added_cond_kwargs.text_embeds", "inputs.added_cond_kwargs.time_ids"} <= start.tensors().keys()
        for cut in range(len(chain) + 1):
            es = chain.run(chain.start(sample, t, text, added_cond_kwargs=added), 0, cut)
            tensors = {k: v.clone() for k, v in es.tensors().items()}
            if cut >= 1:  # folded into emb by stage 'input': nothing SDXL-specific crosses any more
                assert not any(k.startswith("inputs.") for k in tensors)
            out = chain.run(chain.carry_from_tensors(tensors, es.layout()), cut).hidden
            assert torch.equal(out, reference), cut
