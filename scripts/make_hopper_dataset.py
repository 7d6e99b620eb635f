"""Make a medium-level Hopper-v5 dataset here (dsrl.base_policies.hopper_data): SAC in the action
space, stopped when its sampled policy's mean return over 5 episodes first reaches
--target-return, then `--dataset-steps` transitions of that sampled policy (whole episodes) in
DPPO's train.npz layout (states, actions, traj_lengths; plus rewards, terminals and
episode_returns). Prints progress and, last, ONE JSON line with the numbers.

  python scripts/make_hopper_dataset.py --out /tmp/hopper_medium.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the .npz to write (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-return", type=float, default=1000.0)
    parser.add_argument("--max-env-steps", type=int, default=300_000)
    parser.add_argument("--dataset-steps", type=int, default=100_000)
    args = parser.parse_args(argv)
    if pathlib.Path(args.out).exists():
        parser.error(f"--out {args.out} exists; name a new file.")
    if not args.out.endswith(".npz"):
        parser.error(f"--out {args.out} must end in .npz.")
    if args.dataset_steps < 1000:
        parser.error("--dataset-steps must be >= 1000.")
    return args


def make_dataset(args) -> dict:
    from dsrl.base_policies.hopper_data import ActionSACConfig, collect_dataset, train_until

    cfg = ActionSACConfig(
        seed=args.seed, target_return=args.target_return, max_env_steps=args.max_env_steps
    )
    start = time.time()
    state, history = train_until(cfg)
    sac_seconds = time.time() - start
    data = collect_dataset(state.actor, args.dataset_steps, args.seed)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **data)
    returns = data["episode_returns"]
    return {
        "out": str(out),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "seed": args.seed,
        "target_return": args.target_return,
        "sac_env_steps": history[-1]["env_steps"] if history else 0,
        "sac_eval_history": history,
        "sac_seconds": round(sac_seconds, 1),
        "dataset_steps": int(len(data["states"])),
        "dataset_episodes": int(len(returns)),
        "dataset_mean_return": float(returns.mean()),
        "dataset_return_std": float(returns.std()),
        "dataset_mean_length": float(data["traj_lengths"].mean()),
        "total_seconds": round(time.time() - start, 1),
    }


def main(argv=None) -> dict:
    summary = make_dataset(parse(argv))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
