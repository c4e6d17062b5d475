"""Placement (D3QL vs monolithic / fixed chain / greedy / exhaustive optimum) and two-timescale caching
(DDQN + D3PG vs LFU + equal allocation / per-frame oracle / search optimum). Last line: one JSON object.

    python bench/placement_caching.py            # budgets of configs/rl/d3ql.yaml and caching.yaml
    python bench/placement_caching.py --quick    # small budgets (a smoke run; figures are not the claim)

Evaluation uses held-out seeds (100000+), one episode per seed; each policy's figures are pooled over
its episodes (as `splitldm.rl.evaluate` pools them) and ``reward_ci95`` / ``reward_per_request_ci95`` is
the 95 % Student-t interval over the per-episode means (`splitldm.eval.stats.t_interval`; the JSON's
``"interval"`` says so). The JSON carries ``"provenance"`` (`splitldm.eval.provenance`).
Single thread (torch.set_num_threads(1)); training times
are given as wall clock and as this process's CPU time (the fair figure on a shared machine). Plots (reward vs
episodes, reward vs users with the 95 % intervals as error bars) go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings


def pooled(evaluate_one, episodes: int, seed: int, weight: str, means: tuple, sub: dict | None = None) -> dict:
    """Run ``evaluate_one(seed + e)`` (one episode each) for ``e < episodes`` and pool the results.

    ``means``: keys averaged with weight ``r[weight]`` (requests / frames / slots); ``sub``: key ->
    (weight function of one result) for keys averaged over a subset (delivered requests). Adds
    ``<key>_episodes`` (per-episode values) and ``<key>_ci95`` (t-interval over episodes) for "reward".
    """
    import math

    from splitldm.eval.stats import t_interval

    runs = [evaluate_one(seed + e) for e in range(episodes)]
    out: dict = {weight: sum(r[weight] for r in runs)}
    for k in means:
        out[k] = sum(r[k] * r[weight] for r in runs) / out[weight]
    for k, wf in (sub or {}).items():
        pairs = [(r[k], wf(r)) for r in runs if wf(r) > 0 and not math.isnan(r[k])]
        out[k] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else float("nan")
    if "masked_choices" in runs[0]:
        out["masked_choices"] = sum(r["masked_choices"] for r in runs)
    per = [r["reward"] for r in runs]
    iv = t_interval(per)
    out["reward_episodes"] = per
    out["reward_ci95"] = [iv.low, iv.high]
    return out


def plot_with_intervals(per: dict, key: str, users, path: str, ylabel: str) -> None:
    """``per[u][policy][key]`` vs users, one line per policy, error bars = ``key + "_ci95"``."""
    from splitldm.eval.plotting import new_figure, save_figure

    fig, axes = new_figure(figsize=(5, 3.4))
    ax = axes[0][0]
    for name in per[users[0]]:
        ys = [per[u][name][key] for u in users]
        ci = [per[u][name][key + "_ci95"] for u in users]
        ax.errorbar(list(users), ys, yerr=[[y - c[0] for y, c in zip(ys, ci)], [c[1] - y for y, c in zip(ys, ci)]],
                    marker="o", ms=3, capsize=2, label=name)
    ax.set(xlabel="number of users", ylabel=ylabel + " (95% CI over episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=None, help="held-out evaluation episodes per user count")
    ap.add_argument("--out", default="runs/bench_placement_caching", help="folder for the PNG plots")
    ap.add_argument("--only", choices=["placement", "caching"], default=None)
    ap.add_argument("--d3ql-steps", type=int, default=None, help="override the D3QL training steps")
    ap.add_argument("--d3ql-gamma", type=float, default=None, help="override the D3QL discount")
    ap.add_argument("--d3pg-steps", type=int, default=None, help="override the D3PG training slots")
    ap.add_argument("--caching-steps", type=int, default=None, help="override the DDQN training frames")
    ap.add_argument("--d3ql-flat-head", action="store_true",
                    help="ablation: D3QL with one advantage output per action (no per-action head)")
    ap.add_argument("--d3pg-critic", choices=["users", "mlp"], default="users",
                    help="D3PG critic: per-user sum (default) or one MLP over (obs, action) (ablation)")
    args = ap.parse_args(argv)

    t_start = time.time()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="no measured quality table")
    from splitldm.rl.agents.d3ql import D3QL, D3QLConfig
    from splitldm.rl.agents.t2drl import T2DRL, T2DRLConfig
    from splitldm.rl.envs.caching import ModelCaching, ResourceAllocation
    from splitldm.rl.envs.placement import ChainPlacement
    from splitldm.rl.evaluate import (
        evaluate_allocation, evaluate_caching, evaluate_placement, plot_history,
    )
    from splitldm.rl.oracles.caching import equal_allocation, lfu_cache, optimal_allocation, oracle_cache
    from splitldm.rl.oracles.placement import exhaustive_optimum, fixed_chain, greedy_placement, monolithic

    q = args.quick
    held = 100_000
    log = (lambda s: None) if q else (lambda s: print(s, flush=True))
    out: dict = {"quick": q, "argv": sys.argv[1:] if argv is None else list(argv)}
    os.makedirs(args.out, exist_ok=True)

    if args.only in (None, "placement"):
        users = [2, 5, 10, 20]                              # trained on these user counts
        episodes = args.episodes or (3 if q else 20)
        env = ChainPlacement(num_users=users, max_chain=2)
        out["quality_source"] = env.quality_source
        out["placement_train_users"] = users
        t, c = time.time(), time.process_time()
        # per-action head over the env's one-step lookahead features (configs/rl/d3ql.yaml does the same)
        agent = D3QL.train_on(env, D3QLConfig(total_steps=args.d3ql_steps or (800 if q else 10_000),
                                              learning_starts=200 if q else 1_000, per_action_features=not args.d3ql_flat_head,
                                              seed=args.seed, **({} if args.d3ql_gamma is None else {"gamma": args.d3ql_gamma})), log=log)
        out["d3ql_train_s"] = round(time.time() - t, 1)
        out["d3ql_train_cpu_s"] = round(time.process_time() - c, 1)
        plot_history(agent.history, os.path.join(args.out, "d3ql_curve.png"), "D3QL on ChainPlacement", x_key="episode")
        pols = {"d3ql": agent.policy(), "monolithic": monolithic, "fixed_chain_2": fixed_chain(2),
                "greedy": greedy_placement}
        users = users if q else [2, 3, 5, 8, 10, 15, 20]   # evaluated on these (3, 8, 15 not trained on)
        delivered = (lambda r: r["requests"] - round(r["rejected_rate"] * r["requests"]))
        per = {u: {n: pooled(lambda sd: evaluate_placement(env, p, 1, sd, u), episodes, held, "requests",
                             ("reward", "served_rate", "latency_violation_rate", "rejected_rate"),
                             {"latency_s": delivered, "steps": delivered,
                              "mean_chain": delivered}) for n, p in pols.items()} for u in users}
        plot_with_intervals(per, "reward", users, os.path.join(args.out, "placement_vs_users.png"), "reward per request")
        out["placement"] = {str(u): {n: {**{k: round(r[k], 4) for k in ("reward", "served_rate",
                                                                        "latency_violation_rate", "steps", "mean_chain")},
                                         "reward_ci95": [round(v, 4) for v in r["reward_ci95"]]}
                                     for n, r in d.items()} for u, d in per.items()}
        out["d3ql_masked_choices"] = sum(per[u]["d3ql"]["masked_choices"] for u in users)
        # exhaustive optimum on small instances (3 users, 49 actions: ~1e5 sequences each)
        small_users, n_inst = (2, 3) if q else (3, 10)
        opt, got, grd = [], [], []
        t = time.time()
        for k in range(n_inst):
            env.reset(seed=held + 500 + k, options={"num_users": small_users})
            opt.append(exhaustive_optimum(env)[0])
            got.append(evaluate_placement(env, agent.policy(), 1, held + 500 + k, small_users)["reward"] * small_users)
            grd.append(evaluate_placement(env, greedy_placement, 1, held + 500 + k, small_users)["reward"] * small_users)
        out["exhaustive_s"] = round(time.time() - t, 1)
        out.update(small_users=small_users, small_instances=n_inst, optimum_reward=float(np.mean(opt)),
                   d3ql_small_reward=float(np.mean(got)), greedy_small_reward=float(np.mean(grd)),
                   d3ql_gap_to_optimum=float((np.mean(opt) - np.mean(got)) / abs(np.mean(opt))),
                   greedy_gap_to_optimum=float((np.mean(opt) - np.mean(grd)) / abs(np.mean(opt))))

    if args.only in (None, "caching"):
        users = [2, 4, 6]                                  # trained on these user counts
        episodes = args.episodes or (2 if q else 5)
        cenv = ModelCaching(num_users=users, frames_per_episode=5 if q else 20)
        out["caching_train_users"] = users
        t, c = time.time(), time.process_time()
        t2 = T2DRL.train_on(cenv, T2DRLConfig(total_steps=args.d3pg_steps or (500 if q else 8_000),
                                              caching_steps=args.caching_steps or (60 if q else 2_000),
                                              seed=args.seed, d3pg={"critic": args.d3pg_critic, **({"learning_starts": 200} if q else {})},
                                              ddqn={"learning_starts": 30} if q else None), log=log)
        out["t2drl_train_s"] = round(time.time() - t, 1)
        out["t2drl_train_cpu_s"] = round(time.process_time() - c, 1)
        plot_history(t2.ddqn.history, os.path.join(args.out, "ddqn_curve.png"), "DDQN (caching) with D3PG", x_key="episode")
        plot_history(t2.d3pg.history, os.path.join(args.out, "d3pg_curve.png"), "D3PG (allocation)", x_key="episode")
        combos = {"ddqn_d3pg": (t2.cacher, t2.allocator), "lfu_equal": (lfu_cache, None),
                  "lfu_d3pg": (lfu_cache, t2.allocator), "ddqn_equal": (t2.cacher, None),
                  "oracle_d3pg": (oracle_cache(t2.allocator), t2.allocator)}
        if q:
            del combos["oracle_d3pg"]
        users = users if q else [2, 3, 4, 5, 6]            # evaluated on these (3 and 5 not trained on)
        def caching(c, a, u):
            res = pooled(lambda sd: evaluate_caching(cenv, c, a, 1, sd, u), episodes, held, "frames",
                         ("reward", "latency_s", "late_rate", "quality"))
            scale = cenv.S * u  # reward per request = frame reward / (slots x users), as evaluate_caching
            res["reward_per_request"] = res["reward"] / scale
            res["reward_per_request_ci95"] = [v / scale for v in res["reward_ci95"]]
            return res

        per = {u: {n: caching(c, a, u) for n, (c, a) in combos.items()} for u in users}
        plot_with_intervals(per, "reward_per_request", users, os.path.join(args.out, "caching_vs_users.png"),
                            "reward per request")
        out["caching"] = {str(u): {n: {**{k: round(r[k], 4) for k in ("reward_per_request", "late_rate", "quality")},
                                       "reward_per_request_ci95": [round(v, 4) for v in r["reward_per_request_ci95"]]}
                                   for n, r in d.items()} for u, d in per.items()}
        # allocation alone on small slots (3 active users): D3PG vs equal vs grid-search optimum
        slot_env = ResourceAllocation(cacher=lfu_cache, **{**cenv.init_kwargs, "num_users": 3, "max_users": max(users),
                                                            "frames_per_episode": 3 if q else 10})
        t = time.time()
        alloc = {"d3pg": evaluate_allocation(slot_env, lambda o, e: t2.d3pg.act(o), 2, held),
                 "equal": evaluate_allocation(slot_env, equal_allocation, 2, held),
                 "optimum": evaluate_allocation(slot_env, optimal_allocation, 2, held)}
        out["allocation_search_s"] = round(time.time() - t, 1)
        out["allocation_small"] = {n: round(r["reward"], 4) for n, r in alloc.items()}
        out["d3pg_gap_to_optimum"] = (alloc["optimum"]["reward"] - alloc["d3pg"]["reward"]) / abs(alloc["optimum"]["reward"])
        out["equal_gap_to_optimum"] = (alloc["optimum"]["reward"] - alloc["equal"]["reward"]) / abs(alloc["optimum"]["reward"])
        if not q:
            out["caching_gap_to_oracle"] = float(np.mean([(per[u]["oracle_d3pg"]["reward"] - per[u]["ddqn_d3pg"]["reward"])
                                                          / abs(per[u]["oracle_d3pg"]["reward"]) for u in users]))

    tg = {}
    if "placement" in out:
        pl = out["placement"]
        tg["d3ql_within_5pct_of_optimum"] = out["d3ql_gap_to_optimum"] <= 0.05
        tg["d3ql>monolithic_all_users"] = all(pl[u]["d3ql"]["reward"] > pl[u]["monolithic"]["reward"] for u in pl)
        tg["d3ql>fixed_chain_all_users"] = all(pl[u]["d3ql"]["reward"] > pl[u]["fixed_chain_2"]["reward"] for u in pl)
        tg["d3ql_no_masked_choice"] = out["d3ql_masked_choices"] == 0
        tg["d3ql_train_cpu<600s"] = out["d3ql_train_cpu_s"] < 600
    if "caching" in out:
        ca = out["caching"]
        tg["ddqn_d3pg>lfu_equal_all_users"] = all(ca[u]["ddqn_d3pg"]["reward_per_request"] > ca[u]["lfu_equal"]["reward_per_request"]
                                                  for u in ca)
        tg["d3pg>equal_small"] = out["allocation_small"]["d3pg"] > out["allocation_small"]["equal"]
        tg["t2drl_train_cpu<600s"] = out["t2drl_train_cpu_s"] < 600
    out["targets"] = tg
    out["interval"] = ("reward_ci95 / reward_per_request_ci95: 95% Student-t interval over the per-episode mean "
                       "rewards (one held-out seed per episode; splitldm.eval.stats.t_interval); the figures "
                       "themselves are pooled over all requests / frames of the episodes")
    from splitldm.eval.provenance import provenance

    out["provenance"] = provenance(vars(args), {"training": args.seed, "evaluation": held}, None, [])
    out["wall_s"] = round(time.time() - t_start, 1)
    out["cpu_s"] = round(time.process_time(), 1)
    print(json.dumps(out, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
