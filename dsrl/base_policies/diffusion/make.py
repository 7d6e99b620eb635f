"""Make a base-policy asset: clone a DiffusionMLP from a demonstration dataset, save it with its
sha256, and record how it was made (and, optionally, what it returns in a gymnasium env).

    python -m dsrl.base_policies.diffusion.make --dataset train.npz --task hopper \
        --steps 20000 --out dsrl/assets/diffusion_hopper --eval-env Hopper-v5 --eval-episodes 10

The dataset is DPPO's train.npz format (`states`, `actions`, `traj_lengths`; raw units: the
policy fits and carries DPPO's min-max normalization). The network and sampler are the DSRL
release's for `--task` (`release.release_config`). The output directory holds the policy files
(`DiffusionMLPPolicy.save`, params.sha256 checked at load) and `recipe.json`: the dataset's
sha256, the BC settings, the loss curve and the evaluation returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import time

import numpy as np

from dsrl.base_policies.diffusion.dataset import chunk_episodes, load_dppo_dataset
from dsrl.base_policies.diffusion.release import RELEASE_TASKS, release_config
from dsrl.base_policies.diffusion.train import BCConfig, train_diffusion_policy


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="DPPO-format train.npz (raw units)")
    parser.add_argument("--task", required=True, choices=RELEASE_TASKS)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=BCConfig.steps)
    parser.add_argument("--batch-size", type=int, default=BCConfig.batch_size)
    parser.add_argument("--lr", type=float, default=BCConfig.learning_rate)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-env", default="", help="gymnasium id, e.g. Hopper-v5")
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} exists and is not empty; name a new directory.")
    return parser, args


def main(argv: list[str] | None = None) -> dict:
    parser, args = _parse(argv)
    try:
        data = load_dppo_dataset(args.dataset)
        config = release_config(args.task)
        conds, chunks = chunk_episodes(
            data["states"], data["actions"], data["traj_lengths"], config.network.horizon_steps
        )
        bc = BCConfig(
            steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed
        )
    except (ValueError, FileNotFoundError) as err:  # before any training or writing
        parser.exit(2, f"error: {err}\n")
    start = time.time()
    policy, losses = train_diffusion_policy(config, conds, chunks, bc, log=print)
    recipe = {
        "dataset": str(args.dataset),
        "dataset_sha256": hashlib.sha256(pathlib.Path(args.dataset).read_bytes()).hexdigest(),
        "task": args.task,
        "pairs": int(len(conds)),
        "bc": dataclasses.asdict(bc),
        "losses": losses,
        "train_seconds": round(time.time() - start, 1),
    }
    if args.eval_env:
        recipe["eval"] = _evaluate(policy, args.eval_env, args.eval_episodes, args.seed)
        print(f"eval on {args.eval_env}: mean return {recipe['eval']['mean_return']:.1f}")
    out = pathlib.Path(args.out)
    policy.save(out)
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"wrote {out}")
    return recipe


def _evaluate(policy, env_id: str, episodes: int, seed: int) -> dict:
    import gymnasium as gym

    from dsrl.base_policies.diffusion.rollout import run_base_policy

    env = gym.make(env_id)
    try:
        results = run_base_policy(policy, env, episodes=episodes, seed=10_000 + seed)
    finally:
        env.close()
    returns = [r.episode_return for r in results]
    return {
        "env": env_id,
        "episodes": episodes,
        "returns": returns,
        "mean_return": float(np.mean(returns)),
        "lengths": [r.length for r in results],
    }


if __name__ == "__main__":
    main()
