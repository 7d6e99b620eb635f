"""Pi0 time per query with K stored DSRL-NA aliases; prints ONE JSON line.

  python scripts/bench_na_aliases.py                       # tiny and dummy, K = 0, 4, 16
  python scripts/bench_na_aliases.py --variants full --dtype bfloat16 --num_envs 4   # on a GPU

One query is what the training loop runs per decision (`dsrl.training.rollout.run_episodes`):
Pi0Policy's whole call (image resize, tokenizer, model, unnormalisation) on a LIBERO observation
for `num_envs` envs. K = 0 is today's `sample_actions` with the agent's noise; K > 0 is
`dsrl.training.aliases.query_with_aliases`, the executed chunk and K alias chunks per env from
one prefix pass (`sample_actions_multi`). Random weights (`--pi0_checkpoint random`), Pi0's
LIBERO chunk (50 x 32 noise, 20 executed steps). Reported per variant and K: the
fastest of `--repeats` wall times per query (on a shared machine other jobs only ever add time)
and the median CPU seconds of the process (all threads), with the ratios k{K}_over_k0 (wall) and
k{K}_over_k0_cpu; `max_k16_over_k0` is the worst timed variant's wall ratio (target: at most
1.5). Also the FLOPs per query, counted from the config (`query_flops`), for the variants in
`--flops_variants`, `full` included: {variant}_gflop_k0 and {variant}_flops_k{K}_over_k0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout's dsrl, whatever is installed
    sys.path.insert(0, str(ROOT))

from dsrl.base_policies.pi0 import Pi0Policy  # noqa: E402
from dsrl.base_policies.pi0.config import Pi0Config  # noqa: E402
from dsrl.steering import Steering, make_noise_param  # noqa: E402
from dsrl.training.aliases import query_with_aliases  # noqa: E402


def libero_observation(num_envs: int, rng: np.random.Generator) -> dict:
    """A batched LIBERO robot observation as the env gives it (256x256 cameras, 8-d state)."""
    return {
        "agentview_image": rng.integers(0, 256, (num_envs, 256, 256, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (num_envs, 256, 256, 3), dtype=np.uint8),
        "state": rng.normal(size=(num_envs, 8)).astype(np.float32),
        "prompt": ["pick up the black bowl between the plate and the ramekin and place it on the "
                   "plate"] * num_envs,
    }  # fmt: skip


def query_flops(config: Pi0Config, num_aliases: int, num_steps: int, cameras: int = 2) -> float:
    """Matmul FLOPs of one query (one observation) with K aliases, counted from the config:
    SigLIP on `cameras` images, PaliGemma on the prefix, the action expert on 1 + K flows of
    `num_steps` Euler steps (attention scores included; norms and embeddings left out). For the
    sizes no CPU here can time (`full`); XLA's cost analysis counts a loop body only once."""

    def gemma(g, tokens: int, keys: int) -> float:
        projections = 2 * g.width * g.head_dim * (g.num_heads + g.num_kv_heads)
        scores = 2 * g.num_heads * g.head_dim * keys
        return 2.0 * tokens * g.depth * (projections + scores + 3 * g.width * g.mlp_dim)

    vit = config.vision
    per_image = config.tokens_per_image
    vision = (
        cameras
        * 2.0
        * vit.depth
        * per_image
        * (4 * vit.width**2 + 2 * vit.width * vit.mlp_dim + 2 * per_image * vit.width)
    )
    prefix = cameras * per_image + config.max_token_len
    suffix = 1 + config.action_horizon  # the state token and the action tokens
    flows = (1 + num_aliases) * num_steps
    return (
        vision
        + gemma(config.paligemma, prefix, prefix)
        + flows * gemma(config.action_expert, suffix, prefix + suffix)
    )


def time_queries(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Per K: the fastest wall time and the median CPU time (all threads) of one query. The K
    values take turns within each repeat, so a burst of load from other jobs hits them alike."""
    policy = Pi0Policy.from_checkpoint(
        "random", "libero", variant=variant, dtype=args.dtype, num_steps=args.num_steps,
        action_horizon=args.action_horizon,
    )  # fmt: skip
    steering = Steering(policy, make_noise_param("repeat", policy.noise_shape, 1.0), 20)
    rng = np.random.default_rng(0)
    obs = libero_observation(args.num_envs, rng)
    latents = rng.standard_normal((args.num_envs, steering.latent_dim)).astype(np.float32)
    noise = steering.noise_param.to_noise(latents)
    alias_rng = np.random.default_rng(1)

    def query(k: int):
        if k == 0:  # today's query: the executed chunk only
            return policy.sample_actions(obs, noise)
        return query_with_aliases(steering, obs, noise, alias_rng, k, False)

    ks = [int(s) for s in args.aliases.split(",")]
    walls: dict[int, list[float]] = {k: [] for k in ks}
    cpus: dict[int, list[float]] = {k: [] for k in ks}
    for k in ks:
        jax.block_until_ready(query(k))  # compile
    for _ in range(args.repeats):
        for k in ks:
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(query(k))
            walls[k].append(time.perf_counter() - wall)
            cpus[k].append(time.process_time() - cpu)
    out: dict[str, float] = {}
    for k in ks:
        out[f"k{k}_s"] = round(min(walls[k]), 4)
        out[f"k{k}_cpu_s"] = round(float(np.median(cpus[k])), 4)
    for k in ks[1:]:
        out[f"k{k}_over_k0"] = round(out[f"k{k}_s"] / out["k0_s"], 3)
        out[f"k{k}_over_k0_cpu"] = round(out[f"k{k}_cpu_s"] / out["k0_cpu_s"], 3)
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
    parser.add_argument(
        "--flops_variants", default="tiny,dummy,full", help="counted, not timed (query_flops)"
    )
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
    for variant in args.flops_variants.split(","):
        config = Pi0Config.from_name(variant, action_horizon=args.action_horizon)
        base = query_flops(config, 0, args.num_steps)
        result[f"{variant}_gflop_k0"] = round(base / 1e9, 3)
        for k in (4, 16):
            ratio = query_flops(config, k, args.num_steps) / base
            result[f"{variant}_flops_k{k}_over_k0"] = round(ratio, 3)
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
