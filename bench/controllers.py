"""Controllers against oracles: CVPO vs exhaustive search and PPO-Lagrangian on MEGRates, PPO power vs
equal power, water-filling and the per-seed numerical optimum on SeedPower (the seed codec's measured
curve; the PPO trained here and the shipped ``ppo-power``), MEG split vs generate-then-download
latency. Last line: one JSON object.

    python bench/controllers.py            # training budgets of configs/rl/*.yaml, 20 held-out episodes
    python bench/controllers.py --quick    # small budgets (a smoke run; figures are not the claim)

Same seeds for every controller; evaluation episodes use held-out seeds (100000+) never seen in
training. Single thread (torch.set_num_threads(1)). CVPO and PPO-Lagrangian see MEGRates with
``cost_obs=True`` (the cost model's per-action load predicted from the observed SNR); CVPO is also
trained on the plain SNR observation (``cvpo_snr_obs_*``) for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=None, help="held-out evaluation episodes")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="no measured quality table")
    from splitldm.analysis.costs import download_cost, split_cost
    from splitldm.rl.agents.cvpo import CVPO, CVPOConfig
    from splitldm.rl.agents.ppo import PPO, PPOConfig
    from splitldm.rl.agents.ppo_lagrangian import PPOLagConfig, PPOLagrangian
    from splitldm.rl.envs.meg import MEGRates, SeedPower
    from splitldm.rl.evaluate import evaluate
    from splitldm.rl.oracles.meg import equal_power, oracle_index, oracle_power, oracle_rates, water_filling

    q = args.quick
    episodes = args.episodes or (4 if q else 20)
    held_out = 100_000
    log = (lambda s: None) if q else (lambda s: print(s, flush=True))
    out: dict = {"quick": q, "episodes": episodes}

    env = MEGRates(flat=True, cost_obs=True)
    env_snr = MEGRates(flat=True)  # the plain observation [SNR, previous latency, previous energy]
    out["quality_source"] = env.quality_source
    # --- MEG rates: CVPO vs PPO-Lagrangian vs oracle (same training budget)
    steps = 2_000 if q else CVPOConfig().total_steps
    t = time.time()
    cvpo = CVPO.train_on(env, CVPOConfig(total_steps=steps, learning_starts=500 if q else 1_000, seed=args.seed),
                         log=log)
    out["cvpo_train_s"] = round(time.time() - t, 1)
    t = time.time()
    ppol = PPOLagrangian.train_on(env, PPOLagConfig(total_steps=steps, seed=args.seed), log=log)
    out["ppo_lagrangian_train_s"] = round(time.time() - t, 1)
    t = time.time()
    cvpo_snr = CVPO.train_on(env_snr, CVPOConfig(total_steps=steps, learning_starts=500 if q else 1_000,
                                                 seed=args.seed), log=log)
    out["cvpo_snr_obs_train_s"] = round(time.time() - t, 1)
    t = time.time()
    ppol_snr = PPOLagrangian.train_on(env_snr, PPOLagConfig(total_steps=steps, seed=args.seed), log=log)
    out["ppo_lagrangian_snr_obs_train_s"] = round(time.time() - t, 1)
    out["train_steps"] = steps
    r_c = evaluate(env, lambda o, e: cvpo.act(o), episodes, held_out)
    r_p = evaluate(env, lambda o, e: ppol.act(o), episodes, held_out)
    r_s = evaluate(env_snr, lambda o, e: cvpo_snr.act(o), episodes, held_out)
    r_ps = evaluate(env_snr, lambda o, e: ppol_snr.act(o), episodes, held_out)
    r_o = evaluate(env, oracle_rates, episodes, held_out)
    out.update(
        oracle_reward=r_o["reward"], cvpo_reward=r_c["reward"], ppo_lagrangian_reward=r_p["reward"],
        cvpo_vs_oracle=r_c["reward"] / r_o["reward"], ppo_lagrangian_vs_oracle=r_p["reward"] / r_o["reward"],
        cvpo_violation_rate=r_c["violation_rate"], ppo_lagrangian_violation_rate=r_p["violation_rate"],
        cvpo_avoidable_rate=r_c["avoidable_rate"], ppo_lagrangian_avoidable_rate=r_p["avoidable_rate"],
        cvpo_snr_obs_reward=r_s["reward"], cvpo_snr_obs_vs_oracle=r_s["reward"] / r_o["reward"],
        cvpo_snr_obs_violation_rate=r_s["violation_rate"],
        ppo_lagrangian_snr_obs_reward=r_ps["reward"], ppo_lagrangian_snr_obs_vs_oracle=r_ps["reward"] / r_o["reward"],
        ppo_lagrangian_snr_obs_violation_rate=r_ps["violation_rate"],
        oracle_violation_rate=r_o["violation_rate"], infeasible_tasks=r_o["infeasible_tasks"],
        tasks=r_o["tasks"])
    # 95 % t-intervals of each mean reward over the held-out episodes (rl.evaluate: reward_ci)
    out["reward_ci95_half_width"] = {name: r["reward_ci"]["half_width"] for name, r in (
        ("oracle", r_o), ("cvpo", r_c), ("ppo_lagrangian", r_p), ("cvpo_snr_obs", r_s), ("ppo_lagrangian_snr_obs", r_ps))}

    # --- MEG split vs generate-then-download at the default channel (mid-range distance, no fade)
    snr = env.channel.mean_snr_db()
    n, r = env.actions[cvpo.act(env.observation(snr))]
    n_o, r_o_ = env.actions[oracle_index(env, snr)]
    meg = split_cost(env.flops, n, 0, r, snr)
    dl_same = download_cost(env.flops, n, snr)
    dl_full = download_cost(env.flops, 12, snr)
    out.update(default_snr_db=snr, meg_steps=n, meg_merge_ratio=r, oracle_steps=n_o, oracle_merge_ratio=r_o_,
               meg_latency_s=meg.latency_s, download_latency_s=dl_same.latency_s,
               download_12_latency_s=dl_full.latency_s,
               latency_reduction=1 - meg.latency_s / dl_same.latency_s,
               latency_reduction_vs_12_steps=1 - meg.latency_s / dl_full.latency_s)

    # --- SeedPower on the seed codec's measured curve: PPO (trained here with the budget of
    # configs/rl/ppo_power.yaml, and the shipped ppo-power) vs equal power / water-filling / optimum
    import yaml

    from splitldm.rl.agents.auto import AutoPolicy
    from splitldm.zoo import checkpoints_dir

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    hp = dict(yaml.safe_load((root / "configs/rl/ppo_power.yaml").read_text())["hparams"])
    if q:
        hp["total_steps"] = 8_192
    penv = SeedPower()  # curve="codec"
    out["power_curve_source"] = penv.curve_source
    t = time.time()
    ppo = PPO.train_on(penv, PPOConfig(**{**hp, "seed": args.seed}), log=log)
    out["ppo_train_s"] = round(time.time() - t, 1)
    out["ppo_train_steps"] = hp["total_steps"]
    shipped = AutoPolicy.from_pretrained(checkpoints_dir() / "ppo-power")
    ep_o = max(1, episodes // 4)  # the numerical optimum is slow: on the first quarter of the episodes
    power = {"ppo_power": evaluate(penv, lambda o, e: ppo.act(o), episodes, held_out),
             "ppo_power_shipped": evaluate(penv, lambda o, e: shipped.act(o), episodes, held_out),
             "water_filling": evaluate(penv, water_filling, episodes, held_out),
             "equal_power": evaluate(penv, equal_power, episodes, held_out),
             "oracle_power": evaluate(penv, oracle_power, ep_o, held_out)}
    out.update({f"{name}_reward": r["reward"] for name, r in power.items()}, oracle_power_episodes=ep_o)
    out["reward_ci95_half_width"].update({name: r["reward_ci"]["half_width"] for name, r in power.items()})
    out["ppo_power_vs_oracle"] = evaluate(penv, lambda o, e: ppo.act(o), ep_o, held_out)["reward"] / out["oracle_power_reward"]
    out["ppo_power_shipped_vs_oracle"] = (evaluate(penv, lambda o, e: shipped.act(o), ep_o, held_out)["reward"]
                                          / out["oracle_power_reward"])

    out["targets"] = {
        "cvpo_vs_oracle>=0.95": out["cvpo_vs_oracle"] >= 0.95,
        "cvpo_violation_rate<=0.01": out["cvpo_violation_rate"] <= 0.01,
        "cvpo_fewer_violations_than_ppo_lagrangian": out["cvpo_violation_rate"] < out["ppo_lagrangian_violation_rate"],
        # the same comparison on the plain observation [SNR, previous latency, previous energy]
        "cvpo_fewer_violations_than_ppo_lagrangian_snr_obs":
            out["cvpo_snr_obs_violation_rate"] < out["ppo_lagrangian_snr_obs_violation_rate"],
        "ppo_power>=water_filling": out["ppo_power_reward"] >= out["water_filling_reward"],
        "ppo_power>=equal_power": out["ppo_power_reward"] >= out["equal_power_reward"],
        "ppo_power_shipped_vs_oracle>=0.98": out["ppo_power_shipped_vs_oracle"] >= 0.98,
        "latency_reduction>=0.5": out["latency_reduction"] >= 0.5,
        "train_each<600s": max(out["cvpo_train_s"], out["ppo_lagrangian_train_s"], out["cvpo_snr_obs_train_s"],
                               out["ppo_lagrangian_snr_obs_train_s"], out["ppo_train_s"]) < 600,
    }
    from splitldm.eval.provenance import provenance

    out["reward_ci95_half_width"] = {k: round(v, 4) for k, v in out["reward_ci95_half_width"].items()}
    out["interval"] = "95% Student-t interval of the mean reward over the held-out episodes (per-episode means)"
    out["provenance"] = provenance({**vars(args), "episodes": episodes, "held_out_seed": held_out},
                                   {"train": args.seed, "held_out_first": held_out}, models=["ppo-power", "quality", "power-curve"])
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
