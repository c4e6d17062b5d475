"""The measured codec power curve (splitldm.rl.envs.power_curve), SeedPower on it, its oracle and the
shipped ppo-power policy."""

import json
import math

import numpy as np
import pytest
import torch

from splitldm.rl.envs.meg import SeedPower
from splitldm.rl.envs.power_curve import (FORMAT, SNR_CLIP_DB, PowerCurve, default_power_curve, measure_block_mse,
                                          relative_errors)
from splitldm.rl.evaluate import evaluate
from splitldm.rl.oracles.meg import equal_power, oracle_power, water_filling


@pytest.fixture(scope="module")
def curve():
    return default_power_curve()


def test_shipped_table_loads_with_its_provenance_and_validation(curve):
    assert curve.num_blocks == 8 and curve.block_snr_db.shape == (len(curve.mse), 8)
    meta = curve.meta
    assert meta["command"].startswith("OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/measure_power_curve.py")
    assert meta["codec"] == "seed-codec" and meta["symbols_per_latent"] == 32 and meta["symbols_per_block"] == 4
    assert np.all(curve.block_snr_db >= SNR_CLIP_DB[0]) and np.all(curve.block_snr_db <= SNR_CLIP_DB[1])
    # the stored validation figure is what the stored surrogate does on the stored held-out draws
    n_val = int(meta["draws"].split("fit")[1].split("+")[1].split()[0])
    held_out = slice(len(curve.mse) - n_val, None)
    err = relative_errors(curve.mse_of(curve.block_snr_db[held_out]), curve.mse[held_out])
    assert err["mean"] == pytest.approx(meta["validation"]["surrogate_held_out"]["mean"], rel=1e-3)
    # ... and it beats the additive model on the uniform-SNR curve, which the codec does not follow
    assert err["mean"] < meta["validation"]["additive_held_out"]["mean"]
    # uniform curve (every block at one SNR, measured -30 .. 30 dB): ~1 when off, falling every 10 dB to 20 dB
    u = dict(zip(curve.uniform["snr_db"], curve.uniform["mse"]))
    assert u[-30.0] > 0.9 and u[-20.0] > u[-10.0] > u[0.0] > u[10.0] > u[20.0] and u[20.0] < 0.01


def _table():
    return json.loads(json.dumps(default_power_curve().to_dict()))


@pytest.mark.parametrize("field, edit", [
    ("format", lambda d: d.update(format="splitldm.quality/1")),
    ("num_blocks", lambda d: d.pop("num_blocks")),
    ("num_blocks", lambda d: d.update(num_blocks=0)),
    ("draws", lambda d: d.pop("draws")),
    ("block_snr_db", lambda d: d["draws"].update(block_snr_db=[[0.0] * 7])),
    ("mse", lambda d: d["draws"].update(mse=[-1.0] * len(d["draws"]["mse"]))),
    ("surrogate", lambda d: d.update(surrogate={})),
    ("layers", lambda d: d["surrogate"]["layers"][0].__setitem__(0, [[0.0] * 3])),
    ("layers", lambda d: d["surrogate"].update(layers=d["surrogate"]["layers"][:-1])),
    ("uniform", lambda d: d["uniform"].update(mse=[1.0])),
])
def test_bad_tables_name_the_field(field, edit):
    data = _table()
    edit(data)
    with pytest.raises(ValueError, match=field):
        PowerCurve.from_dict(data)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        PowerCurve.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="path"):
        PowerCurve.load(tmp_path / "bad.json")
    path = default_power_curve().save(tmp_path / "again.json")
    again = PowerCurve.load(path)
    s = np.array([[5.0, -3.0, 10.0, -np.inf, 0.0, 2.0, 7.0, -12.0]])
    assert np.array_equal(again.mse_of(s), default_power_curve().mse_of(s))
    assert json.loads(path.read_text())["format"] == FORMAT


def test_seedpower_reward_is_the_tables_prediction(curve):
    env = SeedPower()  # curve="codec": the shipped table
    assert env.power_curve is not None and env.k == 32 and env.curve_source.startswith("measured: seed-codec")
    env.reset(seed=3)
    a = np.array([1.0, 0.5, 0.0, 0.25, 1.0, 0.75, 0.1, 0.9], np.float32)
    g = env.gains.copy()
    _, r, _, _, info = env.step(a)
    p = 8 * a.astype(float) / a.astype(float).sum()
    with np.errstate(divide="ignore"):
        snr = 5.0 + 10 * np.log10(p * g)
    assert r == -math.log(float(curve.mse_of(snr)))
    assert info["mse"] == pytest.approx(float(curve.mse_of(snr)), rel=1e-12)
    # the old closed form is still there, and the default table refuses another block count
    old = SeedPower(num_blocks=4, curve="analog-mmse", mean_snr_db=4.0)  # 4 dB: a point of its 2 dB grid
    assert old.power_curve is None and old.k == 512
    assert old.reward_of(np.ones(4), np.ones(4)) == pytest.approx(math.log(1 + 10 ** 0.4), rel=1e-12)
    with pytest.raises(ValueError, match="curve"):
        SeedPower(num_blocks=4)
    with pytest.raises(FileNotFoundError, match="curve"):
        SeedPower(curve="no/such/table.json")


def test_oracle_beats_equal_power_and_water_filling_on_the_codec_table():
    env = SeedPower(seeds_per_episode=4)
    o = evaluate(env, oracle_power, episodes=1, seed=100_000)
    e = evaluate(env, equal_power, episodes=1, seed=100_000)
    w = evaluate(env, water_filling, episodes=1, seed=100_000)
    assert o["reward"] >= max(e["reward"], w["reward"])


def test_shipped_ppo_power_beats_equal_power_on_held_out_seeds():
    from splitldm.rl.agents.auto import AutoPolicy

    agent = AutoPolicy.from_pretrained("ppo-power")
    env = SeedPower()
    ppo = evaluate(env, lambda o, e: agent.act(o), episodes=2, seed=100_000)
    eq = evaluate(env, equal_power, episodes=2, seed=100_000)
    assert ppo["reward"] > eq["reward"] + 0.01


def test_measure_block_mse_runs_the_codec():
    from splitldm.link.codec import SeedCodec

    codec = SeedCodec.from_pretrained("seed-codec").eval()
    lat = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    snr = np.array([[-30.0] * 8, [0.0] * 8, [20.0] * 8, [0.0] * 8, [20.0] * 4 + [-np.inf] * 4])
    m = measure_block_mse(codec, lat, snr, torch.Generator().manual_seed(1), draws_per_batch=2)
    assert m.shape == (5,) and m[0] > m[1] > m[2]
    assert m[1] == m[3]  # common noise: the same SNRs give the same number
    again = measure_block_mse(codec, lat, snr[:3], torch.Generator().manual_seed(1))
    assert np.allclose(again, m[:3], rtol=1e-5)
    with pytest.raises(ValueError, match="block_snr_db"):
        measure_block_mse(codec, lat, np.zeros((2, 3)), torch.Generator())
    with pytest.raises(ValueError, match="latents"):
        measure_block_mse(codec, lat[0], snr, torch.Generator())


def test_bandit_batch_scores_like_step_and_ppo_trains_on_it():
    from splitldm.rl.agents.ppo import PPO, PPOConfig

    env = SeedPower()
    obs, reward = env.bandit_batch(5, seed=1)
    gains = np.random.default_rng(1).exponential(1.0, size=(5, 8))
    assert np.array_equal(obs, env.observe(gains)) and obs.dtype == np.float32
    a = np.random.default_rng(2).uniform(0, 1, (5, 8))
    a[0] = 0.0  # all zero: equal power, as in step
    r = reward(a)
    for i in range(5):
        assert r[i] == pytest.approx(env.reward_of(env.project(a[i]), gains[i]), rel=1e-12)
    with pytest.raises(ValueError, match="actions"):
        reward(a[:2])
    with pytest.raises(ValueError, match="n"):
        env.bandit_batch(0, seed=1)
    agent = PPO.train_on(env, PPOConfig(total_steps=1024, rollout=512, minibatch=256, epochs=2, squash="softmax",
                                        lr_end=1e-4, log_std_end=-1.0, seed=0))
    assert agent.history["step"] == [512, 1024]  # one point per batched rollout
    assert agent.log_std.max().item() <= -0.75 + 1e-6  # the floor halfway through the schedule
    act = agent.act(obs[0])
    assert act.max() == 1.0 and act.min() > 0  # exp(u - max u): log-power
    with pytest.raises(ValueError, match="squash"):
        PPO(8, 8, PPOConfig(squash="tanh"))
