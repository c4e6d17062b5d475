import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from splitldm.analysis.costs import ModelFlops
from splitldm.rl.envs.caching import GenModel, ModelCaching, ResourceAllocation, default_catalog
from splitldm.rl.evaluate import evaluate_caching
from splitldm.rl.oracles.caching import (
    _compositions, equal_allocation, frame_value, lfu_cache, optimal_allocation, oracle_cache,
)
from splitldm.rl.agents.d3pg import D3PG, D3PGConfig, DiffusionActor
from splitldm.rl.agents.ddqn import DDQN, DDQNConfig
from splitldm.rl.agents.t2drl import T2DRL, T2DRLConfig

# Counted FLOPs and fp16 weights of the catalogue written out, so these tests count nothing.
TINY = ModelFlops("tiny", 5.09e7, 2.2e6, 1.7e8, (4, 8, 8), (3, 64, 64))
FLOPS = {"tiny": TINY, "sd15": ModelFlops("sd15", 8.03e11, 1.33e10, 2.51e12, (4, 64, 64), (3, 512, 512)),
         "sd21": ModelFlops("sd21", 2.15e12, 3.0e10, 5.6e12, (4, 96, 96), (3, 768, 768)),
         "sdxl": ModelFlops("sdxl", 6.761e12, 1.11e11, 1.047e13, (4, 128, 128), (3, 1024, 1024))}
MEMORY = {"tiny": 0.011, "tiny-lcm": 0.011, "sd15": 2.13, "sd21": 2.58, "sdxl": 6.93}


@pytest.fixture(scope="module")
def catalog():
    return default_catalog(flops=FLOPS, memory=MEMORY)


def make(catalog, **kw):
    kw.setdefault("num_users", 3)
    kw.setdefault("frames_per_episode", 3)
    kw.setdefault("slots_per_frame", 4)
    return ModelCaching(catalog=catalog, **kw)


def test_catalog(catalog):
    names = [m.name for m in catalog]
    assert names == ["tiny", "tiny-lcm", "sd15", "sd21", "sdxl"]
    lcm, tiny, sdxl = catalog[1], catalog[0], catalog[4]
    assert lcm.step_flops == tiny.step_flops and max(lcm.steps) <= 8          # same network, few steps
    assert lcm.quality_at(2) > tiny.quality_at(tiny.steps[0])                 # distilled: good in few steps
    assert sdxl.step_flops == pytest.approx(2 * 6.761e12) and sdxl.latent_bits == 4 * 128 * 128 * 16
    for m in catalog:
        assert np.all(np.diff(m.quality) > 0) and 0 < m.quality[-1] <= 1
    with pytest.raises(ValueError, match="memory_gb"):
        GenModel("x", -1.0, 1.0, 1.0, (1,), (0.5,))


def test_check_env_and_subsets(catalog):
    env = make(catalog, num_users=[2, 3])
    check_env(env, skip_render_check=True)
    check_env(ResourceAllocation(catalog=catalog, num_users=[2, 3], frames_per_episode=2, slots_per_frame=3),
              skip_render_check=True)
    mem = np.array([m.memory_gb for m in catalog])
    assert all(mem[list(s)].sum() <= env.memory_gb for s in env.subsets)
    assert (2, 4) not in env.subsets and (0, 1, 4) in env.subsets               # sd15 + sdxl > 8 GB
    assert "splitldm/ModelCaching-v0" in gym.registry and "splitldm/ResourceAllocation-v0" in gym.registry


def test_lfu_and_equal(catalog):
    env = make(catalog)
    env.reset(seed=0)
    env.total_counts = np.array([1.0, 0.0, 5.0, 2.0, 9.0])
    s = env.subsets[lfu_cache(None, env)]
    assert s == (0, 1, 4)                # sdxl (most requested), then sd15 does not fit, sd21 neither; tiny ones do
    env.total_counts = np.array([0.0, 0.0, 5.0, 4.0, 1.0])
    assert env.subsets[lfu_cache(None, env)] == (0, 1, 2, 3)
    # equal allocation: bandwidth over active users, compute over edge-served ones
    env.cache = (2,)
    env.req_model[env.slot] = np.array([2, 4, 2])
    c, b = env.normalise(equal_allocation(None, env))
    assert np.allclose(b, 1 / 3) and np.allclose(c, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="action"):
        env.normalise(np.ones(5))
    with pytest.raises(ValueError, match="action"):
        env.normalise(-np.ones(6))


def test_search_optimum_beats_grid_points_and_equal(catalog):
    env = make(catalog, num_users=3)
    env.reset(seed=1)
    env.cache = (0, 1, 2, 3)
    rng = np.random.default_rng(0)
    for slot in range(3):
        env.slot = slot
        best = env.user_outcomes(slot, env.cache, *env.normalise(optimal_allocation(None, env, resolution=10)))
        best = best["reward"].sum()
        eq = env.user_outcomes(slot, env.cache, *env.normalise(equal_allocation(None, env)))["reward"].sum()
        assert best >= eq - 1e-9
        for _ in range(30):  # any point of the same grid is no better
            a = np.concatenate([rng.multinomial(10, np.ones(3) / 3), rng.multinomial(10, np.ones(3) / 3)]) / 10
            r = env.user_outcomes(slot, env.cache, *env.normalise(a))["reward"].sum()
            assert r <= best + 1e-9
    assert _compositions(4, 3).sum(1).tolist() == [4] * 15
    # the per-frame oracle is at least as good as LFU on the same frame, and frame_value has no side effects
    env.reset(seed=2)
    before = (env.cache, env.slot)
    k = oracle_cache()(None, env)
    assert frame_value(env, k) >= frame_value(env, lfu_cache(None, env)) - 1e-9
    assert (env.cache, env.slot) == before


def test_diffusion_actor_on_simplex():
    actor = DiffusionActor(obs_dim=6, n_users=3, steps=4)
    g = torch.Generator().manual_seed(0)
    out = actor(torch.randn(64, 6, generator=g) * 5, g)
    assert out.shape == (64, 6) and torch.all(out >= 0)
    assert torch.allclose(out[:, :3].sum(-1), torch.ones(64)) and torch.allclose(out[:, 3:].sum(-1), torch.ones(64))
    active = torch.tensor([[True, False, True]] * 64)
    masked = actor(torch.randn(64, 6, generator=g), g, active=active)
    assert torch.all(masked[:, [1, 4]] < 1e-6) and torch.allclose(masked[:, :3].sum(-1), torch.ones(64))
    with pytest.raises(ValueError, match="steps"):
        DiffusionActor(6, 3, steps=0)


class _Bandit(gym.Env):
    """Reward = compute share of user 0 + bandwidth share of user 1 (optimum 2, uniform random ~1)."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, a):
        self.t += 1
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), float(a[0] + a[3]), False, self.t >= 20, {}


def test_d3pg_learns_and_round_trip(tmp_path):
    torch.set_num_threads(1)
    cfg = D3PGConfig(total_steps=400, learning_starts=100, batch_size=32, hidden=32, denoise_steps=3,
                     lr_actor=3e-3, lr_critic=3e-3, tau=0.05, seed=0)
    agent = D3PG.train_on(_Bandit(), cfg)
    obs = np.zeros(2, np.float32)
    rewards = [float(a[0] + a[3]) for a in (agent.act(obs) for _ in range(20))]
    assert np.mean(rewards) > 1.5
    a = agent.act(obs, explore=True)
    assert a.shape == (4,) and np.isclose(a[:2].sum(), 1) and np.isclose(a[2:].sum(), 1) and np.all(a >= 0)
    # targets follow the online nets by Polyak averaging (close, not equal)
    diff = max(float((p - pt).detach().abs().max()) for p, pt in zip(agent.q1.parameters(), agent.q1_targ.parameters()))
    assert 0 < diff < 1.0
    agent.save_pretrained(tmp_path / "d")
    again = D3PG.from_pretrained(tmp_path / "d")
    again.gen.manual_seed(1)
    agent.gen.manual_seed(1)
    assert np.allclose(again.act(obs), agent.act(obs))
    with pytest.raises(ValueError, match="obs"):
        agent.act(np.zeros(3))


def test_x0_actor_starts_at_equal_shares_and_user_critic():
    from splitldm.rl.agents.d3pg import UserCritic

    torch.manual_seed(0)
    actor = DiffusionActor(obs_dim=12, n_users=3, steps=5, predict_x0=True)
    g = torch.Generator().manual_seed(0)
    out = actor(torch.randn(8, 12, generator=g), g)
    assert torch.allclose(out, torch.full_like(out, 1 / 3), atol=1e-6)   # untrained: equal shares
    # per-user critic: permuting the users (their obs blocks and shares together) leaves Q unchanged,
    # inactive users do not count
    crit = UserCritic(stride=4, n_users=3, hidden=16)
    obs = torch.rand(5, 3, 4)
    obs[:, :, -1] = 1.0
    act = torch.rand(5, 2, 3)
    perm = [2, 0, 1]
    q = crit(torch.cat([obs.reshape(5, -1), act.reshape(5, -1)], -1))
    qp = crit(torch.cat([obs[:, perm].reshape(5, -1), act[:, :, perm].reshape(5, -1)], -1))
    assert q.shape == (5, 1) and torch.allclose(q, qp, atol=1e-5)
    obs[:, 2] = 0.0
    act2 = act.clone()
    act2[:, :, 2] = 0.7                                                  # an inactive user's share: ignored
    a = crit(torch.cat([obs.reshape(5, -1), act.reshape(5, -1)], -1))
    b = crit(torch.cat([obs.reshape(5, -1), act2.reshape(5, -1)], -1))
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="critic"):
        D3PG(12, 6, D3PGConfig(critic="users"))                          # needs active_stride
    with pytest.raises(ValueError, match="critic"):
        D3PG(12, 6, D3PGConfig(critic="nope"))
    agent = D3PG(12, 6, D3PGConfig(critic="users", active_stride=4, hidden=16))
    assert isinstance(agent.q1, UserCritic)


def test_ddqn_and_t2drl_round_trip(catalog, tmp_path):
    torch.set_num_threads(1)
    env = make(catalog, num_users=[2, 3])
    cfg = T2DRLConfig(total_steps=150, caching_steps=40, d3pg={"learning_starts": 50, "batch_size": 16, "hidden": 16},
                      ddqn={"learning_starts": 10, "batch_size": 8, "target_every": 20, "hidden": 16})
    agent = T2DRL.train_on(env, cfg)
    assert isinstance(agent.ddqn, DDQN) and not agent.ddqn.cfg.dueling and agent.ddqn.q.value is None
    for p, pt in zip(agent.ddqn.q.parameters(), agent.ddqn.q_targ.parameters()):
        assert torch.equal(p, pt)  # synced at step 40 (multiple of target_every)
    assert env.allocator is None  # training restored the env's allocator
    agent.save_pretrained(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["_class_name"] == "T2DRL"
    again = T2DRL.from_pretrained(tmp_path / "t")
    obs, info = env.reset(seed=4)
    assert again.act(obs, info["action_mask"]) == agent.act(obs, info["action_mask"])
    res = evaluate_caching(env, agent.cacher, agent.allocator, episodes=1, seed=7)
    assert res["frames"] == 3 and np.isfinite(res["reward"])
    with pytest.raises(ValueError, match="directory"):
        DDQN.from_pretrained(tmp_path / "t" / "d3pg")  # a d3pg policy is not a ddqn one
    assert DDQNConfig().dueling is False


def test_bad_input(catalog):
    with pytest.raises(ValueError, match="memory_gb"):
        make(catalog, memory_gb=0.001)            # no model of the catalogue fits
    with pytest.raises(ValueError, match="memory_gb"):
        make(catalog, memory_gb=-8.0)
    with pytest.raises(ValueError, match="num_users"):
        make(catalog, num_users=0)
    with pytest.raises(ValueError, match="flops_per_s"):
        make(catalog, flops_per_s=-1e12)
    with pytest.raises(ValueError, match="bandwidth_hz"):
        make(catalog, bandwidth_hz=0)
    with pytest.raises(ValueError, match="catalog"):
        make([], num_users=2)
    with pytest.raises(ValueError, match="max_users"):
        make(catalog, num_users=4, max_users=2)
    env = make(catalog)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(len(env.subsets))
    with pytest.raises(ValueError, match="resolution"):
        optimal_allocation(None, make(catalog, num_users=6), resolution=40, max_pairs=1000)


def test_catalogue_memory_of_every_family():
    from splitldm.rl.envs.caching import model_memory_gb

    # fp16 weights: SD-1.5 ~2.1 GB, SDXL ~6.9 GB, SD3-medium with T5-XXL ~15 GB, Flux-dev with T5-XXL ~34 GB
    assert 2.0 < model_memory_gb("sd15") < 2.3
    assert 6.5 < model_memory_gb("sdxl") < 7.2
    assert 14 < model_memory_gb("sd3") < 17
    assert 9 < model_memory_gb("pixart") < 12
    assert 32 < model_memory_gb("flux") < 36
