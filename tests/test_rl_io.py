"""One way to save and load every RL policy: save_pretrained / from_pretrained (config.json +
safetensors, nothing pickled), AutoPolicy, the hub branch (never reached offline, never downloading
here), the previous format, and the deprecated aliases (still working, warning)."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from splitldm.rl.agents.auto import POLICY_CLASSES, AutoPolicy
from splitldm.rl.agents.common import PolicyMixin, _flatten, load_policy_files, save_policy
from splitldm.rl.agents.cvpo import CVPO, CVPOConfig
from splitldm.rl.agents.d3pg import D3PG, D3PGConfig
from splitldm.rl.agents.d3ql import D3QL, D3QLConfig
from splitldm.rl.agents.ddqn import DDQN, DDQNConfig
from splitldm.rl.agents.ppo import PPO, PPOConfig
from splitldm.rl.agents.ppo_lagrangian import PPOLagConfig, PPOLagrangian
from splitldm.rl.agents.t2drl import T2DRL, T2DRLConfig


def _perturb(agent, seed=0):
    """Move every saved weight away from its seeded init and fill the training state, so a round trip
    that forgot something cannot pass by re-running the constructor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in agent._weights().values():
            for p in (w.parameters() if isinstance(w, torch.nn.Module) else [w]):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    agent.history["step"].extend([10, 20])
    agent.history["episode_reward"].extend([1.5, -0.25])
    for name, v in (("eta", 0.37), ("lam", 2.5), ("updates", 17)):
        if hasattr(agent, name):
            setattr(agent, name, v)
    return agent


def make_agents():
    torch.manual_seed(0)
    return {
        "CVPO": CVPO(3, 4, CVPOConfig(hidden=8, seed=1)),
        "PPO": PPO(4, 4, PPOConfig(hidden=8, seed=2)),
        "PPOLagrangian": PPOLagrangian(3, 4, PPOLagConfig(hidden=8, seed=3)),
        "D3QL": D3QL(6, 3, D3QLConfig(hidden=8, per_action_features=True, seed=4)),
        "DDQN": DDQN(6, 3, DDQNConfig(hidden=8, seed=5)),
        "D3PG": D3PG(12, 6, D3PGConfig(hidden=8, critic="users", active_stride=4, denoise_steps=3, seed=6)),
    }


def _t2drl():
    ddqn = _perturb(DDQN(7, 5, DDQNConfig(hidden=8, seed=7)), 7)
    d3pg = _perturb(D3PG(12, 4, D3PGConfig(hidden=8, denoise_steps=2, seed=8)), 8)
    return T2DRL(ddqn, d3pg, T2DRLConfig(total_steps=10, caching_steps=5, d3pg={"hidden": 8}, seed=9),
                 {"num_users": [2, 3], "frames_per_episode": 3})


def _same(a, b):
    fa, fb = _flatten(a._weights()), _flatten(b._weights())
    assert fa.keys() == fb.keys()
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert a._init_config() == b._init_config()
    assert json.loads(json.dumps(a._training_state(), default=float)) == b._training_state()


@pytest.mark.parametrize("name", ["CVPO", "PPO", "PPOLagrangian", "D3QL", "DDQN", "D3PG"])
def test_save_pretrained_round_trip(tmp_path, name):
    agent = _perturb(make_agents()[name])
    d = agent.save_pretrained(tmp_path / name)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "training_state.json"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["_class_name"] == name and "_splitldm_version" in cfg
    assert cfg["config"]["seed"] == agent.cfg.seed and cfg["obs_dim"] == agent.obs_dim  # constructor config
    assert load_file(str(d / "model.safetensors")).keys() == _flatten(agent._weights()).keys()
    again = type(agent).from_pretrained(d)
    assert type(again) is type(agent)
    _same(agent, again)
    if name in ("CVPO", "D3PG"):  # target networks start as the loaded online networks
        for online, targ in (("q_r", "q_r_targ"), ("q1", "q1_targ")):
            if hasattr(agent, online):
                for p, pt in zip(getattr(again, online).parameters(), getattr(again, targ).parameters()):
                    assert torch.equal(p, pt)
    auto = AutoPolicy.from_pretrained(str(d))
    assert type(auto) is type(agent)
    _same(agent, auto)


def test_acting_survives_the_round_trip(tmp_path):
    a = make_agents()
    obs = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    d3ql = _perturb(a["D3QL"])
    again = D3QL.from_pretrained(d3ql.save_pretrained(tmp_path / "q"))
    assert [again.act(o) for o in obs] == [d3ql.act(o) for o in obs]
    ppo = _perturb(a["PPO"])
    again = PPO.from_pretrained(ppo.save_pretrained(tmp_path / "p"))
    o = np.full(4, 0.3, np.float32)
    assert np.array_equal(again.act(o), ppo.act(o))
    assert torch.equal(again.log_std, ppo.log_std)


def test_t2drl_round_trip_is_a_folder_per_component(tmp_path):
    agent = _t2drl()
    d = agent.save_pretrained(tmp_path / "t")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "d3pg", "ddqn"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["_class_name"] == "T2DRL" and cfg["components"] == {"ddqn": "DDQN", "d3pg": "D3PG"}
    assert json.loads((d / "ddqn" / "config.json").read_text())["_class_name"] == "DDQN"
    for again in (T2DRL.from_pretrained(d), AutoPolicy.from_pretrained(d)):
        assert isinstance(again, T2DRL)
        _same(agent.ddqn, again.ddqn)
        _same(agent.d3pg, again.d3pg)
        assert again.cfg == agent.cfg and again.env_kwargs == agent.env_kwargs


def test_nothing_pickled(tmp_path):
    for name, agent in make_agents().items():
        agent.save_pretrained(tmp_path / name)
    _t2drl().save_pretrained(tmp_path / "t2drl")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".json", ".safetensors") for p in files)
    assert set(POLICY_CLASSES) == {"CVPO", "PPO", "PPOLagrangian", "D3QL", "DDQN", "D3PG", "T2DRL"}
    assert all(issubclass(c, PolicyMixin) for c in POLICY_CLASSES.values())


def test_wrong_class_and_bad_input(tmp_path):
    a = make_agents()
    a["D3PG"].save_pretrained(tmp_path / "d3pg")
    with pytest.raises(ValueError, match="D3PG policy, not a DDQN"):
        DDQN.from_pretrained(tmp_path / "d3pg")
    a["DDQN"].save_pretrained(tmp_path / "ddqn")
    with pytest.raises(ValueError, match="DDQN policy, not a D3QL"):
        D3QL.from_pretrained(tmp_path / "ddqn")  # a subclass's folder is not the parent's
    with pytest.raises(TypeError, match="pretrained_model_name_or_path"):
        CVPO.from_pretrained(3)
    with pytest.raises(TypeError, match="save_directory"):
        a["CVPO"].save_pretrained(None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="save_directory"):
        a["CVPO"].save_pretrained(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        CVPO.from_pretrained(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        AutoPolicy.from_pretrained(tmp_path / "empty")
    a["CVPO"].save_pretrained(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        CVPO.from_pretrained(tmp_path / "noweights")


def test_hub_is_tried_only_online_and_only_for_what_is_not_local(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kw):  # stands in for the hub: never downloads
        calls.append(repo_id)
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    agent = _perturb(make_agents()["PPOLagrangian"])
    agent.save_pretrained(tmp_path / "snap")
    # offline: a name that is not a local folder is an error, the hub is not asked
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        PPOLagrangian.from_pretrained("someone/some-policy")
    assert calls == []
    # online: a local folder is still read directly; only a non-local name goes to the hub
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _same(agent, PPOLagrangian.from_pretrained(tmp_path / "snap"))
    assert calls == []
    _same(agent, PPOLagrangian.from_pretrained("someone/some-policy"))
    _same(agent, AutoPolicy.from_pretrained("someone/some-policy"))
    assert calls == ["someone/some-policy"] * 2

    def failing(repo_id, **kw):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(FileNotFoundError, match="hub could not provide it"):
        PPOLagrangian.from_pretrained("someone/other")


def _legacy_save(agent, d):
    """What the previous ``save`` wrote (policy.safetensors + policy.json), through the old helper."""
    state = {k: v for k, v in agent._training_state().items()}
    weights = dict(agent._weights())
    if isinstance(agent, PPO):  # the previous format kept log_std in a holder module "std"
        holder = torch.nn.Module()
        holder.log_std = weights.pop("log_std")
        weights["std"] = holder
    with pytest.warns(DeprecationWarning, match="save_policy"):
        save_policy(d, weights, {"algorithm": agent.algorithm, **agent._init_config(), **state})


def test_previous_format_still_loads(tmp_path):
    for name, agent in make_agents().items():
        agent = _perturb(agent)
        _legacy_save(agent, tmp_path / name)
        assert (tmp_path / name / "policy.json").exists() and not (tmp_path / name / "config.json").exists()
        _same(agent, type(agent).from_pretrained(tmp_path / name))
        _same(agent, AutoPolicy.from_pretrained(tmp_path / name))
        with pytest.warns(DeprecationWarning, match="load_policy_files"):
            weights, meta = load_policy_files(tmp_path / name, agent.algorithm)
        assert meta["algorithm"] == agent.algorithm and weights
    with pytest.raises(ValueError, match="directory"):
        PPO.from_pretrained(tmp_path / "CVPO")
    t = _t2drl()
    _legacy_save(t.ddqn, tmp_path / "t" / "ddqn")
    _legacy_save(t.d3pg, tmp_path / "t" / "d3pg")
    (tmp_path / "t" / "policy.json").write_text(json.dumps({"algorithm": "t2drl", "config": asdict(t.cfg),
                                                            "env_kwargs": t.env_kwargs}))
    again = T2DRL.from_pretrained(tmp_path / "t")
    _same(t.ddqn, again.ddqn)
    assert again.cfg == t.cfg
    (tmp_path / "t" / "policy.json").write_text('{"algorithm": "t2drl", "config": NaN}')  # strict JSON
    with pytest.raises(ValueError, match="policy.json"):
        T2DRL.from_pretrained(tmp_path / "t")


def test_deprecated_aliases_work_and_warn(tmp_path):
    agent = _perturb(make_agents()["CVPO"])
    with pytest.warns(DeprecationWarning, match="CVPO.save is deprecated.*save_pretrained"):
        d = agent.save(tmp_path / "c")
    assert (d / "config.json").exists() and (d / "model.safetensors").exists()  # the new format
    with pytest.warns(DeprecationWarning, match="CVPO.load is deprecated.*from_pretrained"):
        again = CVPO.load(d)
    _same(agent, again)
    from splitldm.rl.train import load_agent

    with pytest.warns(DeprecationWarning, match="load_agent is deprecated.*AutoPolicy.from_pretrained"):
        again = load_agent(d)
    _same(agent, again)
    t = _t2drl()
    with pytest.warns(DeprecationWarning, match="T2DRL.save is deprecated"):
        t.save(tmp_path / "t")
    with pytest.warns(DeprecationWarning, match="T2DRL.load is deprecated"):
        again = T2DRL.load(tmp_path / "t")
    _same(t.d3pg, again.d3pg)

