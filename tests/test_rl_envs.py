import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from splitldm.analysis.costs import ModelFlops
from splitldm.eval.quality import QualityTable, build_quality_table
from splitldm.rl.evaluate import evaluate
from splitldm.rl.oracles.meg import (
    equal_power, fixed_rates, oracle_power, oracle_rates, water_filling, water_filling_power,
)
from splitldm.rl.envs.meg import MEGRates, SeedPower, stand_in_quality_table

# SDXL-sized counted FLOPs, written out so these tests need no counting (tests/test_costs.py counts).
SDXL = ModelFlops("sdxl", 6.761e12, 1.11e11, 1.047e13, (4, 128, 128), (3, 1024, 1024))


def table():
    steps, ratios = [4, 8, 12], [0.0, 0.5, 0.75]
    mse = np.array([[0.3, 0.4, 0.6], [0.1, 0.15, 0.3], [0.0, 0.05, 0.2]])
    return QualityTable(steps, ratios, [0.0, 20.0], ["none"], {"latent_mse": np.repeat(mse[None, :, :, None], 2, -1)})


def make(**kw):
    return MEGRates(quality=kw.pop("quality", table()), model=SDXL, **kw)


def test_check_env_all():
    check_env(make(), skip_render_check=True)
    check_env(make(flat=True), skip_render_check=True)
    check_env(make(flat=True, cost_obs=True), skip_render_check=True)
    check_env(SeedPower(), skip_render_check=True)


def test_registered():
    import splitldm.rl  # noqa: F401

    for env_id in ("splitldm/MEGRates-v0", "splitldm/MEGRatesFlat-v0", "splitldm/SeedPower-v0"):
        assert env_id in gym.registry
    env = gym.make("splitldm/SeedPower-v0", num_blocks=4, curve="analog-mmse")
    assert env.action_space.shape == (4,)


def test_registry_is_the_one_place_and_make_env():
    from splitldm.rl.envs.caching import ModelCaching
    from splitldm.rl.envs.registry import ENV_IDS, make_env, register_envs

    register_envs()  # idempotent
    assert set(ENV_IDS) == {"splitldm/MEGRates-v0", "splitldm/MEGRatesFlat-v0", "splitldm/SeedPower-v0",
                            "splitldm/ChainPlacement-v0", "splitldm/ModelCaching-v0", "splitldm/ResourceAllocation-v0"}
    assert all(env_id in gym.registry for env_id in ENV_IDS)
    env = make_env({"id": "splitldm/MEGRatesFlat-v0"})
    assert isinstance(env, MEGRates) and env.flat                    # unwrapped, fixed kwargs applied
    assert isinstance(make_env({"id": "splitldm/SeedPower-v0", "kwargs": {"num_blocks": 3, "curve": "analog-mmse"}}), SeedPower)
    assert gym.spec("splitldm/ModelCaching-v0").entry_point == f"{ModelCaching.__module__}:ModelCaching"
    with pytest.raises(ValueError, match="env_cfg"):
        make_env({"id": "splitldm/Nope-v0"})
    with pytest.raises(TypeError, match="env_cfg"):
        make_env("splitldm/SeedPower-v0")
    with pytest.raises(TypeError, match="env_cfg"):
        make_env({"id": "splitldm/SeedPower-v0", "kwargs": [1]})


def test_quality_table_interpolation_and_io(tmp_path):
    t = table()
    assert t.mse(8, 0.5) == pytest.approx(0.15)
    assert t.mse(6, 0.0) == pytest.approx(math.sqrt(0.3 * 0.1))  # log-linear between grid points
    assert t.reward(12, 0.0, mse_floor=1e-3) == pytest.approx(-math.log(1e-3))
    assert t.mse(2, 0.9) == pytest.approx(0.6)  # clamped at the edges
    t2 = QualityTable.load(t.save(tmp_path / "q.json"))
    assert t2.mse(10, 0.6) == pytest.approx(t.mse(10, 0.6))
    with pytest.raises(ValueError, match="steps"):
        QualityTable([], [0.0], [0.0], ["none"], {"latent_mse": np.zeros((1, 0, 1, 1))})
    with pytest.raises(ValueError, match="channel"):
        t.mse(8, 0.5, channel="awgn")
    with pytest.raises(ValueError, match="steps"):
        t.mse(float("nan"), 0.5)


def test_build_table_with_stand_in_fn():
    calls = []

    def fn(steps, r, snr, channel, prompt, seed):
        calls.append((steps, r, snr, channel))
        return {"latent_mse": (1 + r) / steps + (0 if channel == "none" else 10 ** (-snr / 10)), "psnr": steps}

    t = build_quality_table(fn, [4, 8], [0.0, 0.5], [0.0, 10.0], channels=["none", "awgn"], seeds=[0, 1])
    assert len(calls) == 2 * 2 * 2 + 2 * 2 * 2 * 2  # "none" is measured once per (steps, ratio)
    assert t.mse(4, 0.5, 10.0, "none") == pytest.approx(1.5 / 4)
    assert t.mse(4, 0.0, 0.0, "awgn") == pytest.approx(1 / 4 + 1)
    with pytest.raises(ValueError, match="steps"):
        build_quality_table(fn, [], [0.0], [0.0])
    with pytest.raises(ValueError, match="merge_ratios"):
        build_quality_table(fn, [4], [], [0.0])


def test_megrates_costs_and_info():
    env = make()
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    obs, r, term, trunc, info = env.step(np.array([8, 3]))  # 12 steps, r = 0.75
    assert set(info["cost"]) == {"latency", "energy"}
    assert info["steps"] == 12 and info["merge_ratio"] == 0.75
    assert info["cost"]["energy"] > 1800  # 12 steps of SDXL with guidance exceed 1.8 kJ
    assert info["violation"]["energy"]
    assert r == pytest.approx(-math.log(0.2))
    # 64 tasks per episode, truncated at the end
    n = 1
    while not trunc:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        n += 1
    assert n == 64 and not term


def test_megrates_constraints_bind():
    env = make(flat=True)
    env.reset(seed=0)
    good = env.all_outcomes(5.0)
    assert good["feasible"].any() and not good["feasible"].all()


def test_megrates_same_seed_same_tasks():
    a, b = make(), make()
    a.reset(seed=7)
    b.reset(seed=7)
    assert np.array_equal(a._snr, b._snr)


def test_megrates_bad_input():
    with pytest.raises(ValueError, match="latency_limit_s"):
        make(latency_limit_s=0)
    with pytest.raises(ValueError, match="energy_limit_j"):
        make(energy_limit_j=-1)
    with pytest.raises(ValueError, match="steps"):
        make(steps=[])
    with pytest.raises(ValueError, match="merge_ratios"):
        make(merge_ratios=[])
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([9, 0]))
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([0]))
    flat = make(flat=True)
    flat.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        flat.step(36)
    with pytest.raises(ValueError, match="snr_db"):
        env.all_outcomes(float("nan"))


def test_oracle_beats_fixed_and_respects_constraints():
    env = make()
    o = evaluate(env, oracle_rates, episodes=2)
    f = evaluate(env, fixed_rates(0, 3), episodes=2)  # 4 steps, r = 0.75: always the cheapest
    assert o["violation_rate"] == 0.0
    assert o["reward"] > f["reward"]


def test_seedpower_projection_and_baselines():
    env = SeedPower(num_blocks=4, seeds_per_episode=4, curve="analog-mmse")
    env.reset(seed=0)
    p = env.project(np.array([1.0, 0.0, 0.0, 1.0]))
    assert p.sum() == pytest.approx(4.0) and p[1] == 0
    assert np.allclose(env.project(np.zeros(4)), 1.0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([2.0, 0, 0, 0]))
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([np.nan, 0, 0, 0]))
    # water-filling by hand: g*SNR = [1, 1/3] (inverses 1, 3), total 2 -> level 3: p = [2, 0]
    assert np.allclose(water_filling_power(np.array([1.0, 1 / 3]), 0.0, 2.0), [2.0, 0.0])
    o = evaluate(env, oracle_power, episodes=1)
    e = evaluate(env, equal_power, episodes=1)
    w = evaluate(env, water_filling, episodes=1)
    assert o["reward"] >= max(e["reward"], w["reward"]) - 1e-6
    with pytest.raises(ValueError, match="curve"):
        SeedPower(curve={"snr_db": [0, 1], "mse": [1.0]})
    with pytest.raises(ValueError, match="num_blocks"):
        SeedPower(num_blocks=0)


def test_stand_in_table_marks_itself():
    t = stand_in_quality_table()
    assert "stand-in" in t.meta["source"]


def test_megrates_cost_obs_is_the_predicted_load():
    env = make(flat=True, cost_obs=True)
    obs, _ = env.reset(seed=5)
    assert obs.shape == (3 + len(env.actions),) and env.observation_space.contains(obs)
    plain = make(flat=True)
    plain_obs, _ = plain.reset(seed=5)
    assert np.array_equal(obs[:3], plain_obs)  # same tasks, same first three features
    for _ in range(10):
        out = env.all_outcomes(env.snr_db)
        load = obs[3:]
        assert np.allclose(load, np.clip(np.log2(out["load"]), -4, 4), atol=1e-5)
        inside = np.abs(load) < 4 - 1e-6
        assert np.array_equal((load <= 0)[inside], out["feasible"][inside])  # <= 0 iff both limits met
        obs, *_ = env.step(0)
    assert np.array_equal(env.observation(1.5), env.observation(1.5, 0.0, 0.0))
    assert env.observation(1.5)[0] == pytest.approx(0.15)


def test_megrates_constraint_cost_avoidable_and_deep_fade():
    env = make(flat=True)
    env.reset(seed=0)
    # a task where some action is feasible: cost 1 exactly for the infeasible actions
    env._snr[:] = 5.0
    out = env.all_outcomes(5.0)
    assert out["feasible"].any() and not out["feasible"].all()
    for i in range(len(env.actions)):
        env._t = 0
        _, _, _, _, info = env.step(i)
        assert info["constraint_cost"] == float(not out["feasible"][i])
    # a deep fade: nothing is feasible; only the least-violating action is free of cost
    env._snr[:] = -40.0
    out = env.all_outcomes(-40.0)
    assert not out["feasible"].any()
    best = int(np.argmin(out["load"]))
    for i in range(len(env.actions)):
        env._t = 0
        _, _, _, _, info = env.step(i)
        assert not info["feasible_exists"] and any(info["violation"].values())
        assert info["constraint_cost"] == float(out["load"][i] > out["load"][best])
    assert oracle_rates(None, env) == best


def test_one_evaluation_loop():
    from splitldm.rl.evaluate import rollout

    env = SeedPower(num_blocks=3, seeds_per_episode=4, curve="analog-mmse")
    steps = list(rollout(env, equal_power, episodes=2, seed=7))
    assert [s.episode for s in steps] == [0] * 4 + [1] * 4
    assert steps[0].prior_info["gains"].shape == (3,) and "power" in steps[0].info   # reset's info, then step's
    assert steps[1].prior_info is steps[0].info
    # the summaries are built on it: same draws, same numbers
    assert evaluate(env, equal_power, episodes=2, seed=7)["reward"] == pytest.approx(
        np.mean([s.reward for s in steps]), abs=0)
    with pytest.raises(ValueError, match="episodes"):
        rollout(env, equal_power, episodes=0)
    with pytest.raises(TypeError, match="policy"):
        rollout(env, None)
