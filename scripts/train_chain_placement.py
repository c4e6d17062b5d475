"""Train the D3QL placement policy of a served 3-node chain (`splitldm.serve.chain`, zoo ``d3ql-placement``).

    OMP_NUM_THREADS=1 python scripts/train_chain_placement.py --steps 6000 --out splitldm/checkpoints/d3ql-placement

The environment is `ChainPlacement` with 3 nodes (node 0 the access node, then the two relays of
``serve-edge --chain``), `splitldm.serve.chain.PLACEMENT_ENV`; the folder gets the agent
(``save_pretrained``) and ``placement.json`` (the environment's arguments), read back by
`splitldm.serve.chain.D3QLPlacement.from_pretrained`. Prints one JSON line: the mean episode reward
of the trained policy and of the greedy one-step rule on 50 held-out frames.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from splitldm.rl.agents.d3ql import D3QL, D3QLConfig
from splitldm.rl.envs.placement import ChainPlacement
from splitldm.serve.chain import PLACEMENT_ENV, save_placement


def _evaluate(env: ChainPlacement, act, seeds) -> float:
    total = []
    for seed in seeds:
        obs, info = env.reset(seed=int(seed))
        done, r_sum = False, 0.0
        while not done:
            obs, r, done, _, info = env.step(act(obs, info["action_mask"]))
            r_sum += r
        total.append(r_sum)
    return float(np.mean(total))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    env = ChainPlacement(**PLACEMENT_ENV)
    t0 = time.time()
    cfg = D3QLConfig(total_steps=args.steps, hidden=64, learning_starts=500, buffer_size=20_000, target_every=250,
                     per_action_features=True, action_embed=8, eps_fraction=0.4, seed=args.seed)
    agent = D3QL.train_on(env, cfg, log=print)
    save_placement(agent, args.out)
    seeds = range(10_000, 10_050)
    greedy = _evaluate(env, lambda obs, m: int(np.argmax(np.where(m, obs[-len(m):], -1))), seeds)
    trained = _evaluate(env, lambda obs, m: agent.act(obs, m), seeds)
    print(json.dumps({"out": args.out, "steps": args.steps, "train_s": round(time.time() - t0, 1),
                      "eval_frames": 50, "d3ql_reward": round(trained, 3), "greedy_reward": round(greedy, 3)}))


if __name__ == "__main__":
    main()
