"""Make the Hopper CPU proof's base policy: a DPPO DiffusionMLP (DDIM, eta 0) cloned from a
medium-level Hopper-v5 dataset made here.

1. The dataset (scripts/make_hopper_dataset.py, unless --dataset names one it made): SAC in the
   action space stopped when its sampled policy first returns ~1k, then 100k transitions of
   that sampled policy, like D4RL's hopper-medium.
2. DDPM behaviour cloning with `python -m dsrl.base_policies.diffusion.make` (the release's
   Hopper network and sampler, `release_config("hopper")`: DiffusionMLP 3 x 512 ReLU residual,
   4-step chunks, 20 denoising steps sampled by 5 DDIM steps), which also evaluates the clone
   with i.i.d. N(0, I) noise, whole chunks executed, on seeded episodes.
3. The mean return with the all-zero noise too; everything goes into the asset's recipe.json,
   and ONE JSON line with the numbers is printed last.

  python scripts/make_diffusion_hopper.py --out dsrl/assets/diffusion_hopper
  python scripts/make_diffusion_hopper.py --dataset /tmp/hopper.npz --out /tmp/hopper_policy
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="policy directory (new or empty)")
    parser.add_argument("--dataset", default="", help="a train.npz from make_hopper_dataset.py")
    parser.add_argument("--dataset-out", default="/tmp/hopper_medium.npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-return", type=float, default=1000.0)
    parser.add_argument("--dataset-steps", type=int, default=100_000)
    parser.add_argument("--train-steps", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-episodes", type=int, default=20)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} exists and is not empty; name a new directory.")
    if args.dataset and not pathlib.Path(args.dataset).is_file():
        parser.error(f"--dataset {args.dataset} does not exist; leave it out to make one.")
    return args


def zero_noise_return(policy_dir: str, episodes: int, seed: int) -> float:
    """Mean return of the policy with x_T = 0 on the same seeded episodes as make.py's eval."""
    import gymnasium as gym

    from dsrl.base_policies.diffusion import DiffusionMLPPolicy

    policy = DiffusionMLPPolicy.load(policy_dir)
    env = gym.make("Hopper-v5")
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 + seed + episode)
        total, done = 0.0, False
        while not done:
            noise = np.zeros((1, *policy.noise_shape), np.float32)
            chunk = policy.sample_actions({"policy_state": obs[None].astype(np.float32)}, noise)
            for action in chunk[0]:
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
                if done:
                    break
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main(argv=None) -> dict:
    args = parse(argv)
    start = time.time()
    dataset_summary = None
    if not args.dataset:
        import make_hopper_dataset

        args.dataset = args.dataset_out
        dataset_summary = make_hopper_dataset.main(
            [
                "--out", args.dataset,
                "--seed", str(args.seed),
                "--target-return", str(args.target_return),
                "--dataset-steps", str(args.dataset_steps),
            ]
        )  # fmt: skip
    from dsrl.base_policies.diffusion import make

    recipe = make.main(
        [
            "--dataset", args.dataset,
            "--task", "hopper",
            "--out", args.out,
            "--steps", str(args.train_steps),
            "--batch-size", str(args.batch_size),
            "--seed", str(args.seed),
            "--eval-env", "Hopper-v5",
            "--eval-episodes", str(args.eval_episodes),
        ]
    )  # fmt: skip
    with np.load(args.dataset) as data:
        recipe["dataset_mean_return"] = float(np.mean(data["episode_returns"]))
        recipe["dataset_steps"] = int(len(data["states"]))
    recipe["dataset"] = pathlib.Path(args.dataset).name
    recipe["dataset_recipe"] = dataset_summary or "made earlier by scripts/make_hopper_dataset.py"
    recipe["zero_noise_mean_return"] = zero_noise_return(args.out, args.eval_episodes, args.seed)
    recipe["total_seconds"] = round(time.time() - start, 1)
    (pathlib.Path(args.out) / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    summary = {
        "out": args.out,
        "dataset_mean_return": recipe["dataset_mean_return"],
        "iid_mean_return": recipe["eval"]["mean_return"],
        "zero_noise_mean_return": recipe["zero_noise_mean_return"],
        "eval_episodes": args.eval_episodes,
        "total_seconds": recipe["total_seconds"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
