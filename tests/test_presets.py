"""The MEG-CVPO preset: one call builds SDXL + ToMe on the ES + feature merging of 2x2-patch tokens +
the merge-aware decoder hook; runs offline on a random-weight tiny SDXL, and loads from a folder."""

import numpy as np
import pytest
import torch

from splitldm.analysis.costs import transmission
from splitldm.link.channels import AWGN
from splitldm.pipeline.merge_decoder import MergeAwareDecoder
from splitldm.pipeline.models import build_pipeline
from splitldm.pipeline.presets import MEGCVPO, meg_cvpo
from splitldm.tome import is_patched


@pytest.fixture()
def sdxl():
    return build_pipeline("sdxl-tiny-random")


def test_meg_cvpo_runs_offline_on_a_tiny_sdxl(sdxl):
    system = meg_cvpo(sdxl, image_size=64)
    assert isinstance(system, MEGCVPO) and is_patched(sdxl.unet)
    assert system.latent_shape == (4, 8, 8)
    out = system("a red circle", steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    # The latent crossed the link as 16 tokens of 16 values (2x2 patches), half of them merged.
    (merge,) = [st for st in out.link["stages"] if st["direction"] == "send" and st["note"].get("patch") == 2]
    assert merge["note"]["ratio"] == 0.5
    assert out.sent.tensors["latents"].shape == out.received.tensors["latents"].shape == (1, 4, 8, 8)
    assert not torch.equal(out.sent.tensors["latents"], out.received.tensors["latents"])
    # Same request, same bits: reproducible.
    again = system("a red circle", steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.array_equal(again.images, out.images)
    # Merge ratio 0 and ToMe removed: exactly the SDXL pipeline's own 4-step output (the ideal link).
    system.remove()
    plain = meg_cvpo(sdxl, image_size=64, tome_ratio=0.0, merge_ratio=0.0)
    assert not is_patched(sdxl.unet)
    mine = plain("a red circle", steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    ref = sdxl("a red circle", num_inference_steps=4, guidance_scale=5.0, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.array_equal(mine, ref)
    # ToMe and feature merging change the result (they are on).
    assert not np.array_equal(out.images, ref)


def test_meg_cvpo_bit_model_is_the_authors(sdxl):
    system = meg_cvpo(sdxl, image_size=64, tome_ratio=0.0)
    full = MEGCVPO(pipe=sdxl, image_size=1024)  # SDXL at 1024 px: a 4x128x128 latent
    assert full.latent_shape == (4, 128, 128)
    model = full.bit_model(0.5)
    assert model["tokens"] == 4096 and model["values_per_token"] == 16 and model["merged_tokens"] == 2048
    assert model["bits"] == transmission(4 * 128 * 128, 0.5)[0] == 557056  # 0.557 Mbit (DOMAIN.md)
    assert full.bit_model(0.0)["bits"] == 16 * 4 * 128 * 128
    assert system.bit_model(0.75)["merged_tokens"] == 12


def test_meg_cvpo_link_stages_and_merge_aware_decoder_hook(sdxl, tmp_path):
    # A merge-aware decoder (here: the stock weights perturbed, saved and loaded back as a folder).
    decoder = MergeAwareDecoder.from_vae(sdxl.vae)
    with torch.no_grad():
        decoder.decoder.conv_out.bias.add_(0.25)
    decoder.save_pretrained(tmp_path / "dec")
    stock = meg_cvpo(sdxl, image_size=64, tome_ratio=0.0)
    hooked = meg_cvpo(sdxl, image_size=64, tome_ratio=0.0, merge_decoder=str(tmp_path / "dec"),
                      stages=[AWGN(snr_db=30.0)])
    kw = dict(steps=5, merge_ratio=0.25, generator=torch.Generator().manual_seed(1), output_type="pt")
    a = stock("a blue square", **kw).images
    kw["generator"] = torch.Generator().manual_seed(1)
    b = hooked("a blue square", link_generator=torch.Generator().manual_seed(2), **kw)
    assert b.images.shape == a.images.shape if hasattr(a, "images") else b.images.shape == a.shape
    assert not torch.equal(b.images, a)  # the UE decoded with the merge-aware decoder (and a noisy channel)
    # Decoding the same latents: stock vs hooked differ by the decoder alone.
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(stock.decode(z, "pt"), hooked.decode(z, "pt"))
    assert torch.equal(stock.decode(z, "latent"), z)


def test_meg_cvpo_from_a_folder_and_bad_input(sdxl, tmp_path):
    sdxl.save_pretrained(tmp_path / "sdxl")  # the code path of load_pipeline("/path/to/sdxl")
    system = meg_cvpo(str(tmp_path / "sdxl"), image_size=64)
    assert type(system.pipe).__name__ == "StableDiffusionXLPipeline" and is_patched(system.pipe.unet)
    with pytest.raises(FileNotFoundError, match="name_or_path"):
        meg_cvpo(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="SDXL"):
        meg_cvpo(build_pipeline("micro-random"))
    with pytest.raises(ValueError, match="image_size"):
        meg_cvpo(sdxl, image_size=72)
    with pytest.raises(ValueError, match="merge_ratio"):
        meg_cvpo(sdxl, image_size=64, merge_ratio=0.8)
    with pytest.raises(TypeError, match="stages"):
        meg_cvpo(sdxl, image_size=64, stages=["awgn"])
    system = meg_cvpo(sdxl, image_size=64)
    with pytest.raises(ValueError, match="steps"):
        system("x", steps=3)
    with pytest.raises(ValueError, match="steps"):
        system("x", steps=13)
    with pytest.raises(ValueError, match="merge_ratio"):
        system("x", steps=4, merge_ratio=0.9)
