"""Env speed: steps/s rendering every step vs only at query boundaries, reset time, memory.

    python scripts/bench_envs.py --env libero --render_every 20
    python scripts/bench_envs.py --env aloha --render_every 50 --num_envs 2

Prints ONE JSON line. Per-process numbers come from one env in this process; with --num_envs N
the chunked throughput of a subprocess VectorEnv of N workers is measured as well (total env
steps/s over all workers).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from dsrl.envs import make_env  # noqa: E402
from dsrl.envs.vector import VectorEnv, run_chunk  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _env_kwargs(args) -> dict:
    if args.env == "libero":
        return {"suite": args.suite, "task_id": args.task_id, "camera_size": args.camera_size}
    return {}


def _hold_actions(env, obs, n: int) -> np.ndarray:
    """Actions that keep the robot near still, so no episode ends early by accident."""
    if env.spec.name.startswith("aloha"):
        return np.repeat(obs["state"][None].astype(np.float64), n, axis=0)
    if env.spec.name.startswith("libero"):
        rng = np.random.default_rng(0)
        act = rng.uniform(-0.2, 0.2, size=(n, 7))
        act[:, 6] = -1.0
        return act
    return np.random.default_rng(0).uniform(-1, 1, size=(n, env.spec.action_dim))


def _steps_per_s(env, obs, n_steps: int, render_every: int) -> float:
    actions = _hold_actions(env, obs, n_steps)
    done, start = 0, time.perf_counter()
    while done < n_steps:
        res = run_chunk(env, actions[done : done + render_every])
        done += res.steps_executed
        if res.terminated or res.truncated:
            obs = env.reset(seed=done)
    return n_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="libero", choices=["libero", "aloha", "demo"])
    parser.add_argument("--render_every", type=int, default=20, help="query_freq: steps per render")
    parser.add_argument(
        "--steps_every", type=int, default=20, help="steps timed rendering each step"
    )
    parser.add_argument("--steps_chunked", type=int, default=200, help="steps timed chunked")
    parser.add_argument("--resets", type=int, default=3)
    parser.add_argument("--num_envs", type=int, default=0, help="also time a subprocess VectorEnv")
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task_id", type=int, default=0)
    parser.add_argument("--camera_size", type=int, default=256)
    args = parser.parse_args()

    kwargs = _env_kwargs(args)
    rss_start = _rss_mb()
    start = time.perf_counter()
    env = make_env(args.env, max_episode_steps=100_000, **kwargs)
    make_s = time.perf_counter() - start

    start = time.perf_counter()
    obs = env.reset(seed=0)
    first_reset_s = time.perf_counter() - start
    start = time.perf_counter()
    for seed in range(1, args.resets + 1):
        obs = env.reset(seed=seed)
    reset_s = (time.perf_counter() - start) / args.resets

    every = _steps_per_s(env, obs, args.steps_every, render_every=1)
    chunked = _steps_per_s(env, obs, args.steps_chunked, render_every=args.render_every)
    result = {
        "env": args.env,
        **kwargs,
        "render_every": args.render_every,
        "steps_per_s_render_every_step": round(every, 2),
        "steps_per_s_render_at_query": round(chunked, 2),
        "speedup": round(chunked / every, 2),
        "make_s": round(make_s, 2),
        "first_reset_s": round(first_reset_s, 3),
        "reset_s": round(reset_s, 3),
        "rss_mb": round(_rss_mb(), 1),
        "rss_before_env_mb": round(rss_start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    env.close()

    if args.num_envs > 0:
        fns = [functools.partial(make_env, args.env, max_episode_steps=100_000, **kwargs)] * (
            args.num_envs
        )
        with VectorEnv(fns) as venv:
            first = venv.reset(list(range(args.num_envs)))
            n_chunks = max(1, args.steps_chunked // args.render_every)
            chunk = np.stack(
                [_hold_actions(env, o, args.render_every) for o in first]
            )  # (N, T, A): the same chunk repeated keeps the robots near still
            start, steps = time.perf_counter(), 0
            for _ in range(n_chunks):
                steps += sum(r.steps_executed for r in venv.step_chunk(chunk))
            result["num_envs"] = args.num_envs
            result["vector_total_steps_per_s"] = round(steps / (time.perf_counter() - start), 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
