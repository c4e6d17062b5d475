"""The shipped SeedCodecBank (zoo "codec-bank"): it loads with the current code, codes the tensors of the
tiny model's fewest-bytes interior UNet cut, counts its channel uses, and its codecs beat sending nothing."""

from __future__ import annotations

import pytest
import torch

from splitldm.zoo import checkpoints_dir

pytestmark = pytest.mark.skipif(not (checkpoints_dir() / "codec-bank").is_dir(), reason="codec-bank not shipped")


def _bank():
    from splitldm.link.codec_bank import SeedCodecBank

    return SeedCodecBank.from_pretrained("codec-bank")


def test_bank_layout_is_the_fewest_bytes_interior_cut():
    from splitldm.pipeline.chain import UNetChain
    from splitldm.pipeline.models import load_pipeline

    rows = UNetChain(load_pipeline("tiny").unet).cut_table()
    interior = rows[1:-1]  # cut 0 and the last are the step boundaries
    fewest = min(r.bytes_fp32 for r in interior)
    assert rows[8].before == "output" and rows[8].bytes_fp32 == fewest
    bank = _bank()
    assert bank.layout() == {"carry.hidden": tuple(rows[8].tensors["hidden"][1:]), "latents": (4, 8, 8)}
    # channel uses per image: latents once, the hidden state twice (classifier-free guidance rows)
    uses = bank.num_symbols()
    assert uses == {"carry.hidden": 16, "latents": 2} and uses["latents"] + 2 * uses["carry.hidden"] == 34


def test_bank_round_trip_beats_sending_nothing():
    from splitldm.link.channels import AWGN
    from splitldm.link.payload import Payload
    from splitldm.link.stack import Link

    bank = _bank()
    g = torch.Generator().manual_seed(0)
    stats = {name: codec.config for name, codec in bank.items()}
    tensors = {}
    for name, cfg in stats.items():  # features with the statistics the codecs were trained on
        c, h, w = bank.layout()[name]
        mean = torch.tensor(cfg.in_mean)[None, :, None, None]
        std = torch.tensor(cfg.in_std)[None, :, None, None]
        tensors[name] = mean + std * torch.randn(8, c, h, w, generator=g)
    payload = Payload(tensors=tensors, primary=tuple(tensors))
    out = Link([bank, AWGN(snr_db=20.0)])(payload, generator=torch.Generator().manual_seed(1))
    for name, x in tensors.items():
        assert out.tensors[name].shape == x.shape and out.tensors[name].dtype == x.dtype
        mse = (out.tensors[name] - x).pow(2).mean()
        mean_only = (x - x.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
        assert torch.isfinite(mse) and mse < 1.5 * mean_only
