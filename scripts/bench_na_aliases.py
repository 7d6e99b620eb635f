"""Pi0 time per query with K stored DSRL-NA aliases; prints ONE JSON line.

  python scripts/bench_na_aliases.py                       # tiny and dummy, K = 0, 4, 16
  python scripts/bench_na_aliases.py --variants full --dtype bfloat16 --num_envs 4   # on a GPU

One query is what the training loop runs per decision (`dsrl.training.rollout.run_episodes`):
Pi0Policy's whole call (image resize, tokenizer, model, unnormalisation) on a LIBERO observation
for `num_envs` envs. K = 0 is today's `sample_actions` with the agent's noise; K > 0 is
`dsrl.training.aliases.query_with_aliases`, the executed chunk and K alias chunks per env from
one prefix pass (`sample_actions_multi`). Random weights (`--pi0_checkpoint random`), Pi0's
LIBERO chunk (50 x 32 noise, 20 executed steps). Reported per variant: the fastest of
`--repeats` wall times per query for each K (the minimum: on a shared machine other jobs only
ever add time), and k{K}_over_k0; `max_k16_over_k0` is the worst variant's ratio (target: at
most 1.5).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from dsrl.base_policies.pi0 import Pi0Policy
from dsrl.steering import Steering, make_noise_param
from dsrl.training.aliases import query_with_aliases


def libero_observation(num_envs: int, rng: np.random.Generator) -> dict:
    """A batched LIBERO robot observation as the env gives it (256x256 cameras, 8-d state)."""
    return {
        "agentview_image": rng.integers(0, 256, (num_envs, 256, 256, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (num_envs, 256, 256, 3), dtype=np.uint8),
        "state": rng.normal(size=(num_envs, 8)).astype(np.float32),
        "prompt": ["pick up the black bowl between the plate and the ramekin and place it on the "
                   "plate"] * num_envs,
    }  # fmt: skip


def time_queries(variant: str, args: argparse.Namespace) -> dict[str, float]:
    policy = Pi0Policy.from_checkpoint(
        "random", "libero", variant=variant, dtype=args.dtype, num_steps=args.num_steps,
        action_horizon=args.action_horizon,
    )  # fmt: skip
    steering = Steering(policy, make_noise_param("repeat", policy.noise_shape, 1.0), 20)
    rng = np.random.default_rng(0)
    obs = libero_observation(args.num_envs, rng)
    latents = rng.standard_normal((args.num_envs, steering.latent_dim)).astype(np.float32)
    noise = steering.noise_param.to_noise(latents)
    out: dict[str, float] = {}
    for k in (int(s) for s in args.aliases.split(",")):
        alias_rng = np.random.default_rng(1)

        def query(k=k, alias_rng=alias_rng):
            if k == 0:
                return policy.sample_actions(obs, noise)
            return query_with_aliases(steering, obs, noise, alias_rng, k, False)

        query()  # compile
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(query())
            walls.append(time.perf_counter() - start)
        out[f"k{k}_s"] = round(min(walls), 4)
    for k in (int(s) for s in args.aliases.split(",") if int(s)):
        out[f"k{k}_over_k0"] = round(out[f"k{k}_s"] / out["k0_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="tiny,dummy", help="Pi0Config names")
    parser.add_argument("--aliases", default="0,4,16", help="K values; 0 must come first")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--num_envs", type=int, default=1, help="observations per query")
    parser.add_argument("--num_steps", type=int, default=10, help="flow-integration steps")
    parser.add_argument("--action_horizon", type=int, default=50, help="Pi0-LIBERO's 50")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.aliases.startswith("0,"):
        parser.error("--aliases must start with 0 (the baseline the ratios divide by)")
    result = {
        "backend": jax.default_backend(),
        "dtype": args.dtype,
        "num_envs": args.num_envs,
        "num_steps": args.num_steps,
        "action_horizon": args.action_horizon,
    }
    ratios = []
    for variant in args.variants.split(","):
        for key, value in time_queries(variant, args).items():
            result[f"{variant}_{key}"] = value
        if f"{variant}_k16_over_k0" in result:
            ratios.append(result[f"{variant}_k16_over_k0"])
    if ratios:
        result["max_k16_over_k0"] = max(ratios)
        result["target_k16_over_k0"] = 1.5
    print(json.dumps(result))


if __name__ == "__main__":
    main()
