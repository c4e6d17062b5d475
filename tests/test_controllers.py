import numpy as np
import pytest
import torch

from splitldm.analysis.costs import ModelFlops
from splitldm.eval.quality import QualityTable
from splitldm.rl.agents.auto import AutoPolicy
from splitldm.rl.agents.cvpo import CVPO, CVPOConfig
from splitldm.rl.envs.meg import MEGRates, SeedPower
from splitldm.rl.agents.ppo import PPO, PPOConfig
from splitldm.rl.agents.ppo_lagrangian import PPOLagConfig, PPOLagrangian
from splitldm.rl.evaluate import evaluate, plot_history
from splitldm.rl.train import load_run_config

torch.set_num_threads(1)
SDXL = ModelFlops("sdxl", 6.761e12, 1.11e11, 1.047e13, (4, 128, 128), (3, 1024, 1024))


def rates_env(**kw):
    steps, ratios = [4, 8, 12], [0.0, 0.5, 0.75]
    mse = np.array([[0.3, 0.4, 0.6], [0.1, 0.15, 0.3], [0.02, 0.05, 0.2]])
    table = QualityTable(steps, ratios, [0.0], ["none"], {"latent_mse": mse[None, :, :, None]})
    return MEGRates(quality=table, model=SDXL, steps=steps, merge_ratios=ratios, flat=True,
                    tasks_per_episode=16, **kw)


def test_cvpo_estep_respects_kl_and_cost():
    agent = CVPO(3, 4, CVPOConfig(kl_estep=0.02, cost_limit=0.2))
    obs = torch.randn(64, 3)
    torch.manual_seed(0)
    # critics that favour a costly action: the E-step must move toward reward but keep E_q[Q_c] small
    # (the cost network outputs logits: -30 / +30 mean cost 0 / 1)
    with torch.no_grad():
        for net, vals in ((agent.q_r_targ, [0.0, 1.0, 2.0, 3.0]), (agent.q_c_targ, [-30.0, -30.0, -30.0, 30.0])):
            last = net[-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor(vals))
    q, pi_old = agent.e_step(obs)
    kl = (q * (q.log() - pi_old.log())).sum(-1).mean()
    assert kl <= 0.02 * 1.05
    assert (q[:, 3]).mean() <= 0.2 + 1e-3            # cost constraint E_q[Q_c] <= limit
    assert (q[:, 2] > pi_old[:, 2]).all()            # moved toward the best feasible action
    kl_m = agent.m_step(obs, q, pi_old)
    assert np.isfinite(kl_m) and agent.eta > 0 and agent.lam >= 0


def test_cvpo_cost_critic_is_a_bounded_probability():
    for cost_gamma in (0.0, 0.5):
        agent = CVPO(3, 4, CVPOConfig(cost_gamma=cost_gamma))
        qc = agent.cost_value(torch.randn(32, 3) * 100)
        assert (qc >= 0).all() and (qc <= 1 / (1 - cost_gamma) + 1e-6).all()
    # the per-task violation indicator is learnt as a probability: cost 1 for action 3 only
    agent = CVPO(3, 4, CVPOConfig(critic_updates=1))
    rng = np.random.default_rng(0)
    from splitldm.rl.agents.cvpo import _Replay

    buf = _Replay(512, 3)
    for _ in range(512):
        o = rng.normal(size=3).astype(np.float32)
        a = int(rng.integers(4))
        buf.add(o, a, 0.0, float(a == 3), o, False)
    for _ in range(300):
        agent._critic_step(buf.sample(64, rng))
    qc = agent.cost_value(torch.from_numpy(buf.obs[:64]))
    assert qc[:, 3].min() > 0.8 and qc[:, :3].max() < 0.2


def test_cvpo_learns_the_feasibility_boundary_with_cost_obs():
    """Short run on the small env with the cost observation: few avoidable violations, beats fixed."""
    from splitldm.rl.oracles.meg import fixed_rates, oracle_rates

    env = rates_env(cost_obs=True)
    cfg = CVPOConfig(total_steps=2_400, learning_starts=480, update_every=32, critic_updates=16, batch_size=128,
                     estep_batch=256, seed=0)
    agent = CVPO.train_on(env, cfg)
    res = evaluate(env, lambda o, e: agent.act(o), episodes=8, seed=900)
    oracle = evaluate(env, oracle_rates, episodes=8, seed=900)
    cheapest = evaluate(env, fixed_rates(0, 2), episodes=8, seed=900)
    assert res["violation_rate"] <= 0.05
    assert res["reward"] > cheapest["reward"] and res["reward"] >= 0.8 * oracle["reward"]


def test_cvpo_trains_saves_loads(tmp_path):
    env = rates_env()
    cfg = CVPOConfig(total_steps=320, learning_starts=96, update_every=32, critic_updates=4, batch_size=64,
                     estep_batch=64, seed=1)
    agent = CVPO.train_on(env, cfg)
    assert len(agent.history["episode_reward"]) == 20 and agent.history["kl_q"]
    # E-step invariant: KL(q || pi_old) <= kl_estep whenever the dual solution is interior (when the
    # cost bound cannot be met within the KL bound, the cost wins and the duals sit at their bounds)
    h = agent.history
    interior = [kl for kl, eta, lam in zip(h["kl_q"], h["eta"], h["lam"]) if eta < 999 and lam < 9999]
    assert all(kl <= cfg.kl_estep * 1.1 for kl in interior)
    agent.save_pretrained(tmp_path / "cvpo")
    again = AutoPolicy.from_pretrained(tmp_path / "cvpo")
    obs = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    assert [agent.act(o) for o in obs] == [again.act(o) for o in obs]
    with pytest.raises(ValueError, match="obs"):
        agent.act(np.array([np.nan, 0, 0], np.float32))
    with pytest.raises(ValueError, match="obs"):
        agent.act(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="Discrete"):
        CVPO.train_on(MEGRates(quality=env.quality, model=SDXL), cfg)
    with pytest.raises(ValueError, match="ppo"):
        PPO.from_pretrained(tmp_path / "cvpo")


def test_ppo_lagrangian_runs_and_round_trips(tmp_path):
    env = rates_env()
    agent = PPOLagrangian.train_on(env, PPOLagConfig(total_steps=512, rollout=256, epochs=2, seed=0))
    assert agent.lam >= 0 and len(agent.history["lam"]) == 2
    agent.save_pretrained(tmp_path / "pl")
    again = PPOLagrangian.from_pretrained(tmp_path / "pl")
    obs = np.zeros(3, np.float32)
    assert agent.act(obs) == again.act(obs)


def test_ppo_power_beats_random_policy(tmp_path):
    env = SeedPower(num_blocks=4, seeds_per_episode=16, mean_snr_db=0.0, curve="analog-mmse")
    agent = PPO.train_on(env, PPOConfig(total_steps=4096, rollout=512, epochs=5, seed=0))
    rng = np.random.default_rng(0)
    trained = evaluate(env, lambda o, e: agent.act(o), episodes=4, seed=500)["reward"]
    random_ = evaluate(env, lambda o, e: rng.uniform(0, 1, 4).astype(np.float32), episodes=4, seed=500)["reward"]
    assert trained > random_
    agent.save_pretrained(tmp_path / "ppo")
    again = PPO.from_pretrained(tmp_path / "ppo")
    o = np.ones(4, np.float32) * 0.1
    assert np.allclose(agent.act(o), again.act(o))
    plot_history(agent.history, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_run_config_validation(tmp_path):
    with pytest.raises(ValueError, match="algorithm"):
        load_run_config({"algorithm": "dqn"})
    with pytest.raises(ValueError, match="hparams"):
        load_run_config({"algorithm": "cvpo", "hparams": {"nope": 1}})
    cfg = load_run_config({"algorithm": "ppo"})
    assert cfg["env"]["id"] == "splitldm/SeedPower-v0"
    with pytest.raises(ValueError, match="obs_dim"):
        CVPO(0, 4)
