import itertools

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from splitldm.analysis.costs import ModelFlops
from splitldm.rl.agents.d3ql import D3QL, D3QLConfig
from splitldm.rl.envs.meg import stand_in_quality_table
from splitldm.rl.envs.placement import ChainPlacement, greedy_channel_assignment
from splitldm.rl.evaluate import evaluate_placement
from splitldm.rl.oracles.placement import (
    exhaustive_optimum, fixed_chain, greedy_placement, monolithic,
)

# SD-1.5 counted FLOPs written out, so these tests count nothing (tests/test_costs.py counts).
SD15 = ModelFlops("sd15", 8.03e11, 1.33e10, 2.51e12, (4, 64, 64), (3, 512, 512))


def make(**kw):
    kw.setdefault("num_users", 3)
    return ChainPlacement(model=SD15, model_memory_gb=2.2, quality=stand_in_quality_table(), **kw)


def test_check_env_and_spaces():
    env = make(num_users=[2, 4])
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["action_mask"].shape == (env.action_space.n,) and info["action_mask"][0] == 1
    # 4 nodes, chains of length <= 2 -> 4 + 12 chains x 3 reductions + reject
    assert env.action_space.n == 1 + 16 * 3


def test_same_seed_same_episode():
    a, b = make(), make()
    a.reset(seed=5)
    b.reset(seed=5)
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.gains_db, b.gains_db)


def test_greedy_channel_rule_by_hand():
    g = np.array([[10.0, 5.0], [9.0, 8.0], [1.0, 20.0]])
    # best pair (u2, k1) first; then u0 takes k0 (10 > 9); both channels taken -> freed; u1 takes k0 (9 > 8)
    out = greedy_channel_assignment(g)
    assert out.tolist() == [0, 0, 1]
    # one channel per user when there are enough channels, highest gains first
    assert greedy_channel_assignment(np.array([[3.0, 2.0], [4.0, 1.0]])).tolist() == [1, 0]
    env = make(num_users=20, num_channels=4)
    env.reset(seed=1)
    counts = np.bincount(env.assignment, minlength=4)
    assert counts.tolist() == [5, 5, 5, 5]  # rounds reuse every channel equally
    with pytest.raises(ValueError, match="gains_db"):
        greedy_channel_assignment(np.zeros(3))


def test_masking_never_infeasible():
    env = make(num_users=8, queue_limit_s=0.2, frame_s=0.1)
    rng = np.random.default_rng(0)
    masked_seen = False
    for ep in range(3):
        obs, info = env.reset(seed=ep)
        done = False
        while not done:
            m = info["action_mask"]
            masked_seen |= not m.all()
            a = int(rng.choice(np.flatnonzero(m)))
            obs, r, done, _, info = env.step(a)
            assert not info["infeasible_action"]
    assert masked_seen  # the queue limit does mask placements here
    # a masked action is not executed: the request is rejected
    env.reset(seed=0)
    for _ in range(5):
        env.step(monolithic(None, env))
    m = env.action_mask()
    bad = np.flatnonzero(m == 0)
    assert len(bad)
    _, r, _, _, info = env.step(int(bad[0]))
    assert info["infeasible_action"] and info["rejected"] and r == -env.reject_penalty
    # unusable nodes (too little memory) never appear in any action
    env2 = make(memory_gb=(24.0, 1.0, 8.0, 8.0))
    assert all(1 not in a[0] for a in env2.actions[1:])


def test_exhaustive_optimum_equals_brute_force():
    env = make(flops_per_s=(20e12, 10e12), memory_gb=(16.0, 16.0), num_users=2, reductions=(0, 2), num_channels=2)
    assert env.action_space.n == 1 + 4 * 2
    env.reset(seed=3)
    best, seq = exhaustive_optimum(env)
    brute = -np.inf
    for actions in itertools.product(range(env.action_space.n), repeat=2):
        env.reset(seed=3)
        total, ok = 0.0, True
        for a in actions:
            if not env.action_mask()[a]:
                ok = False
                break
            total += env.step(a)[1]
        if ok:
            brute = max(brute, total)
    assert best == pytest.approx(brute)
    env.reset(seed=3)
    assert sum(env.step(a)[1] for a in seq) == pytest.approx(best)
    env.reset(seed=3)
    with pytest.raises(ValueError, match="max_sequences"):
        exhaustive_optimum(env, max_sequences=10)


def test_baselines_and_blocks():
    env = make(num_users=5)
    env.reset(seed=2)
    a = monolithic(None, env)
    assert len(env.actions[a][0]) == 1 and env.actions[a][1] == 0
    b = fixed_chain(2)(None, env)
    assert len(env.actions[b][0]) == 2 and env.actions[b][1] == 0
    g = greedy_placement(None, env)
    assert env.simulate(env.state, g)[1] >= env.simulate(env.state, a)[1]
    assert env.split_blocks((0, 3), 10) == [8, 2]  # 40 vs 10 TFLOP/s
    assert sum(env.split_blocks((1, 2), 7)) == 7
    res = evaluate_placement(env, greedy_placement, episodes=2, seed=0)
    assert res["masked_choices"] == 0 and 0 <= res["latency_violation_rate"] <= 1


def test_d3ql_learns_and_invariants(tmp_path):
    torch.set_num_threads(1)
    env = make(flops_per_s=(30e12, 10e12), memory_gb=(16.0, 16.0), num_users=[2, 4], num_channels=2)
    cfg = D3QLConfig(total_steps=600, learning_starts=100, target_every=50, eps_fraction=0.5, batch_size=32, seed=0)
    agent = D3QL.train_on(env, cfg)
    assert agent.updates == cfg.total_steps - cfg.learning_starts + 1
    # target network synced at step 600 (a multiple of target_every)
    for p, pt in zip(agent.q.parameters(), agent.q_targ.parameters()):
        assert torch.equal(p, pt)
    rng = np.random.default_rng(0)
    rand = evaluate_placement(env, lambda o, e: int(rng.choice(np.flatnonzero(e.action_mask()))), 8, 500)
    got = evaluate_placement(env, agent.policy(), 8, 500)
    assert got["masked_choices"] == 0
    assert got["reward"] > rand["reward"] + 0.2
    # save / load round trip
    agent.save_pretrained(tmp_path / "p")
    again = D3QL.from_pretrained(tmp_path / "p")
    obs, info = env.reset(seed=9)
    assert torch.allclose(again.q_values(obs), agent.q_values(obs))
    assert again.act(obs, info["action_mask"]) == agent.act(obs, info["action_mask"])
    with pytest.raises(ValueError, match="mask"):
        agent.act(obs, np.zeros(env.action_space.n))


def test_d3ql_per_action_head_and_n_step():
    torch.set_num_threads(1)
    from splitldm.rl.agents.d3ql import QNet

    env = make(flops_per_s=(30e12, 10e12), memory_gb=(16.0, 16.0), num_users=[2, 4], num_channels=2)
    A, D = int(env.action_space.n), int(env.observation_space.shape[0])
    net = QNet(D, A, hidden=32, per_action=True, embed=4)
    obs = torch.rand(5, D)
    assert net(obs).shape == (5, A)
    # one head shared by all actions: same embedding and same feature -> same Q; the feature matters
    with torch.no_grad():
        net.embed[4] = net.embed[3]
    obs[:, -A + 4] = obs[:, -A + 3]
    q = net(obs).detach()
    assert torch.allclose(q[:, 3], q[:, 4], atol=1e-6)
    obs[:, -A + 4] += 2.0
    assert not torch.allclose(net(obs).detach()[:, 4] - net(obs).detach()[:, 3], torch.zeros(5), atol=1e-4)
    with pytest.raises(ValueError, match="per_action_features"):
        QNet(A, A, per_action=True)
    cfg = D3QLConfig(total_steps=600, learning_starts=100, target_every=50, batch_size=32, seed=0,
                     per_action_features=True, n_step=2, lr_end=1e-4)
    agent = D3QL.train_on(env, cfg)
    assert agent.opt.param_groups[0]["lr"] == pytest.approx(1e-4, rel=0.01)
    got = evaluate_placement(env, agent.policy(), 8, 500)
    grd = evaluate_placement(env, greedy_placement, 8, 500)
    assert got["masked_choices"] == 0 and got["reward"] > grd["reward"] - 0.1
    with pytest.raises(ValueError, match="n_step"):
        D3QL(D, A, D3QLConfig(n_step=0))


def test_n_step_returns_stored():
    """n-step targets: r_t + gamma r_(t+1) and the bootstrap discount gamma^2 (0 at the episode end)."""
    import gymnasium as gym
    from gymnasium import spaces

    class Chain(gym.Env):  # 3 steps, reward 1, 2, 4
        observation_space = spaces.Box(0, 10, (1,), np.float32)
        action_space = spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(1, np.float32), {}

        def step(self, a):
            self.t += 1
            return np.full(1, self.t, np.float32), float(2 ** (self.t - 1)), self.t >= 3, False, {}

    cfg = D3QLConfig(total_steps=3, learning_starts=100, gamma=0.5, n_step=2, buffer_size=10, seed=0)
    captured = {}
    orig = D3QL.train_on.__func__

    import splitldm.rl.agents.d3ql as mod

    real = mod.MaskedReplay

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured["buf"] = self

    mod.MaskedReplay = Spy
    try:
        orig(D3QL, Chain(), cfg)
    finally:
        mod.MaskedReplay = real
    b = captured["buf"]
    assert b.n == 3
    assert b.rew[:3].tolist() == pytest.approx([1 + 0.5 * 2, 2 + 0.5 * 4, 4])
    assert b.disc[:3].tolist() == pytest.approx([0.25, 0.0, 0.0])   # t=0 bootstraps from s_2; others end
    assert b.obs2[:3, 0].tolist() == [2, 3, 3]


def test_bad_input():
    with pytest.raises(ValueError, match="memory_gb"):
        make(memory_gb=(1.0, 1.0, 1.0, 1.0))          # no node can hold the model
    with pytest.raises(ValueError, match="num_users"):
        make(num_users=0)
    with pytest.raises(ValueError, match="num_users"):
        make(num_users=[])
    with pytest.raises(ValueError, match="flops_per_s"):
        make(flops_per_s=(40e12, -1.0, 15e12, 10e12))
    with pytest.raises(ValueError, match="memory_gb"):
        make(memory_gb=(24.0, -16.0, 8.0, 8.0))
    with pytest.raises(ValueError, match="max_chain"):
        make(max_chain=9)
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(999)
    with pytest.raises(ValueError, match="num_users"):
        env.reset(options={"num_users": 0})
