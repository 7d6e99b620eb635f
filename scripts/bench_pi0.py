"""Benchmark the JAX Pi0 model; prints ONE JSON line.

  python scripts/bench_pi0.py --variant dummy --dtype float32 --batch 2 --num_steps 10

Random weights. The observation has three cameras with the third (right wrist) masked for the
whole batch, as LIBERO sends it, and a full 48-token prompt: the setting openpi's own Pi0 was
timed in (shared/reference/perf_baseline.md: 7.6 s wall, 14.2 CPU-s per call on the 2-core box).
Reported: compile_s (first call minus a warm call), sample_actions latency (median wall and CPU
seconds), K-noise latency for one observation (K = 1, 16, 64; one prefix pass each), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import numpy as np

from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0.config import Pi0Config


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median (wall s, CPU s) of `repeats` calls, each blocked until its result is ready."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant", default="dummy", help="full | dummy | tiny | pi05_* (Pi0Config.from_name)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num_steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--multi_k", default="1,16,64", help="noise counts for one observation")
    parser.add_argument("--multi_repeats", type=int, default=3)
    parser.add_argument(
        "--all_cameras",
        action="store_true",
        help="also time with no camera masked (3 SigLIP passes)",
    )
    args = parser.parse_args()

    config = Pi0Config.from_name(args.variant, dtype=args.dtype)
    t0 = time.perf_counter()
    model = pi0_model.Pi0.create(config, seed=0)
    jax.block_until_ready(model.params)
    init_s = time.perf_counter() - t0
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))

    masked = (config.image_keys[-1],)
    obs = pi0_model.fake_observation(
        config, args.batch, masked_cameras=masked, prompt_len=config.max_token_len
    )
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(args.batch, *model.noise_shape)).astype(np.float32)

    def sample():
        return model.sample_actions(None, obs, noise=noise, num_steps=args.num_steps)

    t0 = time.perf_counter()
    jax.block_until_ready(sample())
    first_call_s = time.perf_counter() - t0
    wall, cpu = _timed(sample, args.repeats)
    result = {
        "variant": args.variant,
        "dtype": args.dtype,
        "batch": args.batch,
        "num_steps": args.num_steps,
        "backend": jax.default_backend(),
        "param_bytes": param_bytes,
        "init_s": round(init_s, 3),
        "first_call_s": round(first_call_s, 3),
        "compile_s": round(first_call_s - wall, 3),
        "sample_actions_wall_s": round(wall, 4),
        "sample_actions_cpu_s": round(cpu, 4),
    }

    if args.all_cameras:
        obs_all = pi0_model.fake_observation(config, args.batch, prompt_len=config.max_token_len)

        def sample_all():
            return model.sample_actions(None, obs_all, noise=noise, num_steps=args.num_steps)

        jax.block_until_ready(sample_all())
        wall_all, cpu_all = _timed(sample_all, args.repeats)
        result["sample_actions_all_cameras_wall_s"] = round(wall_all, 4)
        result["sample_actions_all_cameras_cpu_s"] = round(cpu_all, 4)

    obs1 = pi0_model.fake_observation(
        config, 1, masked_cameras=masked, prompt_len=config.max_token_len
    )
    for k in (int(s) for s in args.multi_k.split(",") if s):
        noise_k = rng.normal(size=(1, k, *model.noise_shape)).astype(np.float32)

        def multi(noise_k=noise_k):
            return model.sample_actions_multi(obs1, noise_k, num_steps=args.num_steps)

        jax.block_until_ready(multi())
        wall_k, cpu_k = _timed(multi, args.multi_repeats)
        result[f"multi_k{k}_wall_s"] = round(wall_k, 4)
        result[f"multi_k{k}_cpu_s"] = round(cpu_k, 4)

    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
