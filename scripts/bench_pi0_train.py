"""Benchmark one Pi0 fine-tuning step on this CPU; prints ONE JSON line.

  python scripts/bench_pi0_train.py --variant small --batch 32 --trainable full
  python scripts/bench_pi0_train.py --variant mini --batch 128 --trainable expert --cache_prefix

The step's matmul FLOPs are counted from its jaxpr (every dot_general, times the trip count of
each enclosing scan); XLA's cost analysis is printed too but counts a loop body once, not once per
layer, so it undercounts a scanned transformer by about its depth. Speed is reported as a share
of the machine's float32 matmul FLOP/s (a 2048^3 `jnp.dot`, best of 5, measured in this process
right after each timed step; the median of the per-step ratios is reported), so the number is
comparable across runs on a shared, noisy machine. Random weights; the right-wrist camera is masked for the whole
batch (as LIBERO sends it) and left out of SigLIP (`encoded`), which is exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.extend
import numpy as np

from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.training import optim
from dsrl.base_policies.pi0.training import train_state as ts
from dsrl.utils.flops import matmul_flops, matmul_gflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small", help="Pi0Config.from_name: small, tiny, ...")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trainable", default="full", choices=optim.TRAINABLE)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--cache_prefix",
        action="store_true",
        help="time the step on an encoded prefix (finetune_pi0.py --cache_prefix; expert only)",
    )
    args = parser.parse_args()
    if args.cache_prefix and args.trainable != "expert":
        parser.error("--cache_prefix times expert-only training: add --trainable expert")

    cfg = Pi0Config.from_name(args.variant)
    matmul_before = matmul_gflops()
    params = pi0_model.init_params(cfg, 0)
    masked = ("right_wrist_0_rgb",)
    obs = pi0_model.fake_observation(cfg, args.batch, masked_cameras=masked)
    encoded = tuple(k for k in cfg.image_keys if k not in masked)
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(args.batch, cfg.action_horizon, cfg.action_dim)).astype("f4")
    tc = optim.TrainConfig(trainable=args.trainable)
    state = ts.init_train_state(params, tc)
    kw = {"model_config": cfg, "config": tc, "encoded": encoded}
    if args.cache_prefix:  # what the step reads instead of the images and the prompt
        from dsrl.base_policies.pi0.training import prefix_cache

        obs = prefix_cache.encode_batch(params, obs, config=cfg, encoded=encoded)

    t0 = time.perf_counter()
    compiled = ts.train_step.lower(state, obs, actions, **kw).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    xla_gflop = float(cost["flops"]) / 1e9
    jaxpr = jax.make_jaxpr(lambda s, o, a: ts._step(s, o, a, **kw))(state, obs, actions)
    step_gflop = matmul_flops(jaxpr.jaxpr) / 1e9

    state, info = ts.train_step(state, obs, actions, **kw)  # warm-up
    jax.block_until_ready(info)
    # Each step is followed by a matmul reference taken right after it, and the share is the
    # median of the per-pair ratios: on a shared machine the load changes from second to second.
    times, shares, matmuls = [], [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, info = ts.train_step(state, obs, actions, **kw)
        jax.block_until_ready(info)
        times.append(time.perf_counter() - t)
        matmuls.append(matmul_gflops(reps=5))
        shares.append(step_gflop / times[-1] / matmuls[-1])
    matmul = statistics.median(matmuls + [matmul_before])
    step_s = statistics.median(times)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        json.dumps(
            {
                "variant": args.variant,
                "trainable": args.trainable,
                "cache_prefix": args.cache_prefix,
                "batch": args.batch,
                "params_m": round(n_params / 1e6, 2),
                "compile_s": round(compile_s, 1),
                "step_s_median": round(step_s, 3),
                "step_matmul_gflop": round(step_gflop, 2),
                "xla_cost_gflop_loop_bodies_once": round(xla_gflop, 2),
                "step_matmul_gflops": round(step_gflop / step_s, 2),
                "matmul_gflops": round(matmul, 2),
                "share_of_matmul": round(statistics.median(shares), 3),
                "shares": [round(x, 3) for x in shares],
                "loss": float(info["loss"]),
                "devices": jax.device_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
