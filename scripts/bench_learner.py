"""Benchmark the PixelSACLearner update at the reference's LIBERO preset; prints ONE JSON line.

Preset (as in /work/shared/reference/perf_baseline.md): pixels 64x64x3 uint8 + 8-d state, action
32-d, batch 256, conv encoder 4 x 32 (3x3, strides 2,1,1,1, VALID) -> Dense(50) -> LayerNorm ->
tanh, actor MLP 128x3, 10 critic heads 128x3 with LayerNorm, separate encoders, crop + jitter on
obs and next obs. Speed is reported against XLA's own fp32 2048^3 matmul measured in the same
process (`ratio`), because the machines are shared and noisy. For A/B runs:
`DSRL_FAST_CONV_GRAD=0` turns off the CPU kernel-gradient path (dsrl/networks/conv.py),
`DSRL_HUGEPAGE_MALLOC=0` the huge-page malloc restart (dsrl/utils/hugepages.py), and
`--paired_plain_conv 10` times JAX's own conv gradient against dsrl's within this one process.

`--observation state` benchmarks the state-based learner instead (no pixels: MLP-only networks)
at the authors' Robomimic sizes (ajwagen/dsrl cfg/robomimic/dsrl_can.yaml): 23-d state, latent
= the 4 x 7 chunk noise (28-d), actor and 2 critic heads of 3 x 2048 with Tanh + LayerNorm,
batch 256, one update block of UTD = 20 gradient steps.

    JAX_PLATFORMS=cpu python scripts/bench_learner.py [--encoder_sharing shared] [--steps 10]
        [--paired_plain_conv ROUNDS]
    JAX_PLATFORMS=cpu python scripts/bench_learner.py --observation state --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Before the heavy imports: the entry point may re-execute itself once (dsrl.utils.hugepages).
if __name__ == "__main__":
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dsrl.agents import ExecutionConfig, PixelSACLearner  # noqa: E402
from dsrl.agents.pixel_sac import learner as learner_lib  # noqa: E402
from dsrl.networks.conv import OPT_OUT_VAR, fast_path_enabled  # noqa: E402
from dsrl.presets.state_dsrl import release_agent  # noqa: E402
from dsrl.utils.flops import matmul_gflops  # noqa: E402
from dsrl.utils.hugepages import TUNABLE  # noqa: E402
from dsrl.utils.jit import jit  # noqa: E402

# The authors' Robomimic Can sizes (cfg/robomimic/dsrl_can.yaml) for `--observation state`.
STATE_SIZES = {"state_dim": 23, "latent_dim": 4 * 7}
# The release's state agent (state_dsrl.release_agent) at Can's width; its other entries
# (temperature, learning rates, tau) are the learner's defaults.
STATE_CONFIG = {
    k: v for k, v in release_agent("pixel_sac", (2048, 2048, 2048)).items() if k != "algorithm"
}


def make_batches(rng: np.random.Generator, k: int, b: int, hw: int, d: int, a: int) -> dict:
    """K batches of B transitions; `hw` 0: no pixels (a state-based agent)."""

    def obs():
        state = {"state": rng.normal(size=(k, b, d)).astype(np.float32)}
        if not hw:
            return state
        return {"pixels": rng.integers(0, 256, (k, b, hw, hw, 3), dtype=np.uint8), **state}

    return {
        "observations": obs(),
        "next_observations": obs(),
        "latents": rng.uniform(-1, 1, (k, b, a)).astype(np.float32),
        "rewards": -np.ones((k, b), np.float32),
        "masks": np.ones((k, b), np.float32),
        "discounts": np.full((k, b), 0.999**20, np.float32),
    }


def paired_plain_conv(learner: PixelSACLearner, batch: dict, rounds: int) -> dict:
    """Time one gradient step with dsrl's CPU kernel gradient (dsrl/networks/conv.py) against
    JAX's own, alternating the two `rounds` times in this process, so that the machine's slow
    and quiet moments fall on both alike. Returns the plain step's rate and the median of the
    per-round speedups."""
    compiled = {}
    previous = os.environ.get(OPT_OUT_VAR)
    try:
        for name, value in (("fast", "1"), ("plain", "0")):
            os.environ[OPT_OUT_VAR] = value
            jax.clear_caches()  # the switch is read when the step is traced
            compiled[name] = jit(learner_lib.update_step).lower(learner, batch).compile()
            jax.block_until_ready(compiled[name](learner, batch))
    finally:
        if previous is None:
            os.environ.pop(OPT_OUT_VAR, None)
        else:
            os.environ[OPT_OUT_VAR] = previous
        jax.clear_caches()
    seconds = {"fast": [], "plain": []}
    for i in range(rounds):
        for name in ("fast", "plain") if i % 2 == 0 else ("plain", "fast"):
            t = time.perf_counter()
            jax.block_until_ready(compiled[name](learner, batch))
            seconds[name].append(time.perf_counter() - t)
    fast, plain = np.array(seconds["fast"]), np.array(seconds["plain"])
    return {
        "plain_conv_updates_per_s": round(1.0 / float(np.median(plain)), 4),
        "fast_conv_speedup_paired": round(float(np.median(plain / fast)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder_sharing", default="separate", choices=["separate", "shared"])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed gradient steps (one update)")
    parser.add_argument("--update_mode", default="auto", choices=["auto", "scan", "loop"])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument(
        "--best_of", type=int, default=5, help="single gradient steps timed for the best step"
    )
    parser.add_argument(
        "--observation",
        default="pixels",
        choices=["pixels", "state"],
        help="state: the MLP-only learner at the authors' Robomimic sizes (see the docstring)",
    )
    parser.add_argument(
        "--paired_plain_conv",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time JAX's own conv gradient against dsrl's, alternating ROUNDS times (CPU)",
    )
    args = parser.parse_args()

    # The matmul reference is taken before and after the learner work; the higher figure is used,
    # so a slow moment on a shared machine cannot inflate the ratio.
    matmul_before = matmul_gflops()
    compile_times: list[float] = []

    def on_event(event: str, duration: float, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compile_times.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)

    config = PixelSACLearner.default_config()
    config.encoder_sharing = args.encoder_sharing
    if args.observation == "state":
        state_dim, action_dim, hw = STATE_SIZES["state_dim"], STATE_SIZES["latent_dim"], 0
        spec = {"state": ((state_dim,), np.float32)}
        config.update(STATE_CONFIG)
    else:
        state_dim, action_dim, hw = 8, 32, args.image_size
        spec = {"pixels": ((hw, hw, 3), np.uint8), "state": ((state_dim,), np.float32)}
    execution = ExecutionConfig(args.update_mode)
    learner = PixelSACLearner.create(0, spec, action_dim, config, execution=execution)
    rng = np.random.default_rng(0)
    bsz = args.batch_size

    # Warm-up: the first update traces and compiles (the compile we report).
    compile_times.clear()
    t0 = time.perf_counter()
    learner, _ = learner.update(make_batches(rng, 1, bsz, hw, state_dim, action_dim))
    first_call_s = time.perf_counter() - t0
    compile_s = max(compile_times) if compile_times else float("nan")

    batches = make_batches(rng, args.steps, bsz, hw, state_dim, action_dim)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    learner, metrics = learner.update(batches)
    elapsed = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    updates_per_s = args.steps / elapsed
    num_compiles = learner_lib.UPDATE.compile_count()

    # FLOPs of one gradient step from XLA's cost analysis of the compiled step.
    one = learner.prepare_batches(make_batches(rng, 1, bsz, hw, state_dim, action_dim))
    one = jax.tree.map(lambda x: x[0], one)
    cost = learner_lib.UPDATE.step_jit.lower(learner, one).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    update_gflop = float(cost["flops"]) / 1e9

    # Best single gradient step, the way the matmul reference is taken (best of several runs):
    # on a shared machine the block's average also holds the moments other jobs took the cores.
    step_device = jax.device_put(one)
    step_times = []
    for _ in range(args.best_of):
        t = time.perf_counter()
        jax.block_until_ready(learner_lib.UPDATE.step_jit(learner, step_device))
        step_times.append(time.perf_counter() - t)
    best_step_s = min(step_times)
    num_compiles_after = learner_lib.UPDATE.compile_count()

    obs = jax.tree.map(
        lambda x: x[0, :1], make_batches(rng, 1, 1, hw, state_dim, 1)["observations"]
    )
    _, learner = learner.sample_latents(obs)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        _, learner = learner.sample_latents(obs)
        times.append(time.perf_counter() - t)

    mm = max(matmul_before, matmul_gflops())
    achieved = update_gflop * updates_per_s
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    paired = {}
    if args.paired_plain_conv > 0 and fast_path_enabled() and hw:
        paired = paired_plain_conv(learner, one, args.paired_plain_conv)
    print(
        json.dumps(
            {
                "observation": args.observation,
                "encoder_sharing": args.encoder_sharing,
                "update_mode": execution.resolved_mode(),
                "backend": jax.default_backend(),
                "batch_size": bsz,
                "steps": args.steps,
                "updates_per_s": round(updates_per_s, 4),
                "update_gflop": round(update_gflop, 2),
                "achieved_gflops": round(achieved, 2),
                "matmul_gflops": round(mm, 2),
                "ratio": round(achieved / mm, 4),
                "best_step_updates_per_s": round(1.0 / best_step_s, 4),
                "ratio_best_step": round(update_gflop / best_step_s / mm, 4),
                "num_compiles": int(num_compiles),
                "num_compiles_after_best_of": int(num_compiles_after),
                "compile_s": round(compile_s, 2),
                "first_call_s": round(first_call_s, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "sample_latents_ms": round(1000 * float(np.median(times)), 3),
                "page_faults_per_update": round(faults / args.steps),
                "hugepage_malloc": TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":"),
                "fast_conv_grad": fast_path_enabled(),
                "critic_loss_finite": bool(np.isfinite(metrics["critic_loss"])),
                **paired,
            }
        )
    )


if __name__ == "__main__":
    main()
