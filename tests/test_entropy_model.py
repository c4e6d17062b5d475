"""The learned entropy model: exact bitstream round trips (constriction range coder), the byte count
against the rate estimate, save/load, the recipe's one-step fit, input validation."""

from __future__ import annotations

import pytest
import torch

from splitldm.link.entropy_model import EntropyModel, bit_length


def _model(**kw) -> EntropyModel:
    torch.manual_seed(0)
    m = EntropyModel(latent_channels=4, hidden_channels=8, lambdas=[1e-2, 1e-3], **kw)
    m.set_input_stats(torch.zeros(4), torch.ones(4))
    return m.eval()


def test_bit_length():
    assert bit_length(b"") == 0
    assert bit_length(b"\x80") == 1
    assert bit_length(b"\x01") == 8
    assert bit_length(b"\x00\x10") == 12
    with pytest.raises(TypeError, match="data"):
        bit_length("x")


@pytest.mark.parametrize("level", [0, 1])
def test_round_trip_is_exact_and_bytes_match_rate(level):
    m = _model()
    x = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    data, q, est = m.compress(x, level)
    assert len(data) == 16 and all(isinstance(d, bytes) for d in data)
    q_dec = m.decode_symbols(data, level)
    assert torch.equal(q_dec, q)  # the decoder recovers the quantised symbols exactly
    assert torch.equal(q, torch.round(q))
    x_hat = m.decode(data, level)
    assert torch.equal(x_hat, m.synthesise(q, level))
    assert torch.allclose(x_hat, m(x, level)["x_hat"])  # the eval forward is the quantised path
    bits = torch.tensor([bit_length(d) for d in data], dtype=torch.float64)
    # the range coder costs the information content plus its flush (tens of bits per message)
    assert (bits >= est - 1).all() and (bits - est <= 40).all()
    assert abs(float(bits.sum() / est.sum()) - 1) < 0.05
    # eval forward's rate estimate agrees with the coding tables (up to their 1e-9 tails)
    assert torch.allclose(m(x, level)["bits"].double(), est, rtol=1e-3, atol=0.5)


def test_training_forward_is_noisy_and_differentiable():
    m = _model().train()
    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    out = m(x, torch.tensor([0, 1] * 4), generator=torch.Generator().manual_seed(0))
    assert out["x_hat"].shape == x.shape and out["bits"].shape == (8,)
    (out["x_hat"].pow(2).mean() + out["bits"].mean()).backward()
    assert m.log_gain.grad is not None and m.density.matrices[0].grad is not None


def test_save_load_safetensors(tmp_path):
    m = _model()
    m.set_input_stats(torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([1.0, 2.0, 0.5, 1.5]))
    m.save_pretrained(tmp_path / "em")
    files = sorted(p.name for p in (tmp_path / "em").iterdir())
    assert "diffusion_pytorch_model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    back = EntropyModel.from_pretrained(tmp_path / "em")
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(back.norm_std, m.norm_std)
    assert [*map(bytes, back.encode(x, 1))] == m.encode(x, 1)


def test_bad_inputs():
    m = _model()
    with pytest.raises(ValueError, match="x"):
        m.encode(torch.zeros(2, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="level"):
        m.encode(torch.zeros(2, 4, 8, 8), 2)
    with pytest.raises(TypeError, match="data"):
        m.decode(b"\x01", 0)
    with pytest.raises(ValueError, match="lambdas"):
        EntropyModel(lambdas=[])
    with pytest.raises(ValueError, match="downsample"):
        EntropyModel(sample_size=6, downsample=2)


def test_shipped_model_loads_and_codes():
    from splitldm.zoo import checkpoints_dir

    if not (checkpoints_dir() / "entropy-model").is_dir():
        pytest.skip("entropy-model not shipped")
    m = EntropyModel.from_pretrained("entropy-model")
    x = m.norm_mean[None, :, None, None] + m.norm_std[None, :, None, None] * torch.randn(
        4, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    for level in (0, m.num_levels - 1):
        data, q, _ = m.compress(x, level)
        assert torch.equal(m.decode_symbols(data, level), q)


def test_recipe_config_and_one_step_fit(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from splitldm.recipes.entropy import EntropyModule, main

    cli = main(args=["--config", "configs/entropy.yaml"], run=False)
    assert isinstance(cli.model, EntropyModule) and cli.model.model.num_levels == 10
    module = EntropyModule(model={"latent_channels": 4, "hidden_channels": 8, "lambdas": [1e-2, 1e-3]},
                           export_dir=str(tmp_path / "export"))
    x = torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    dl = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long), torch.ones(32)), batch_size=16)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=dl)
    back = EntropyModel.from_pretrained(tmp_path / "export")
    assert back.config.lambdas == [1e-2, 1e-3]
