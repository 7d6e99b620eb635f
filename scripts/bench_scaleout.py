"""Scale-out: loop throughput over env workers (subprocess vs Ray) and the data-parallel learner.

    nice -n 10 python scripts/bench_scaleout.py                       # demo env
    nice -n 10 python scripts/bench_scaleout.py --preset libero_cpu   # real LIBERO
    python scripts/bench_scaleout.py --policy_latency_ms 80 --workers 1,2,4,8 --rounds 4

Prints ONE JSON line. For each backend ("subprocess", "ray") and worker count it runs the
collection half of the training loop exactly as a run does (`run_episodes`: one batched agent
call, one batched base-policy call and one `step_chunk` per query, env workers built by the run
builder from the preset) and reports env steps/s after one warm-up round. The base policy is the
preset's, held to a fixed latency per batched call (`--policy_latency_ms`, sleeping the rest:
Pi0 on an accelerator answers a batch in roughly constant time) so that the bound is the one a
Pi0 run would hit. Per worker count: `ray_over_subprocess` (steps/s ratio; the target is >= 0.87,
i.e. Ray within 1.15x), and per backend the scaling efficiency (steps/s at N over N times
steps/s at 1) and the bound: "base_policy" when the run waited longer for the policy than for
the envs, "cores" when the envs were the wait and the workers fill this machine's cores, else
"env" (the simulator itself). `learner` gives gradient updates/s of the preset's learner on 1
and 2 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=2, measured in a child
process); on a GPU machine `--learner_devices 1,2,4,8` measures real devices the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsrl first

import numpy as np  # noqa: E402

from dsrl.training import loop  # noqa: E402
from dsrl.training.build import (  # noqa: E402
    agent_env_fn,
    make_agent,
    make_base_policy,
    make_steering,
    make_vec_env,
)
from dsrl.training.config_io import load_config  # noqa: E402
from dsrl.training.rollout import run_episodes  # noqa: E402

BACKENDS = ("subprocess", "ray")


class FixedLatencyPolicy:
    """The real base policy, each batched call held to `latency_s` (a stand-in for Pi0)."""

    def __init__(self, policy, latency_s: float):
        self.policy, self.latency_s = policy, latency_s
        self.noise_shape, self.action_dim = policy.noise_shape, policy.action_dim

    def sample_actions(self, observation, noise):
        start = time.perf_counter()
        actions = self.policy.sample_actions(observation, noise)
        time.sleep(max(0.0, self.latency_s - (time.perf_counter() - start)))
        return actions


def _loop_throughput(config, backend: str, workers: int, latency_s: float, rounds: int) -> dict:
    """Env steps/s of `rounds` collection rounds (after one warm-up round) on `workers` env
    workers of `backend`, and where the time went."""
    env = dataclasses.replace(config.env, mode=backend, num_envs=workers)
    config = dataclasses.replace(config, env=env)
    with contextlib.ExitStack() as resources:
        policy = FixedLatencyPolicy(make_base_policy(config), latency_s)
        steering = make_steering(config, policy)
        venv = make_vec_env(config, policy, resources)
        agent = make_agent(config, venv.spec.observation_spec, steering)
        holder = {"agent": agent}

        def act(obs):
            latents, holder["agent"] = holder["agent"].sample_latents(obs)
            return latents

        source = steering.agent_source(act)

        def collect(first_round: int, n: int, timer=None) -> int:
            steps = 0
            for r in range(first_round, first_round + n):
                seeds = loop.train_seeds(config.loop.seed, r * workers, workers)
                episodes = run_episodes(venv, steering, source, seeds, discount=0.99, timer=timer)
                steps += sum(e.length for e in episodes)
            return steps

        collect(0, 1)  # worker start-up, compilation for this batch size
        watch = loop.Stopwatch()
        steps = collect(1, rounds, watch)
        seconds = time.perf_counter() - watch.start
    waits = {k: round(watch.seconds[k], 3) for k in ("env", "base_policy", "agent")}
    return {"steps_per_s": round(steps / seconds, 2), "env_steps": steps, "wait_s": waits}


def _bound(result: dict, workers: int, cores: int) -> str:
    waits = result["wait_s"]
    if waits["base_policy"] >= waits["env"]:
        return "base_policy"
    return "cores" if workers >= cores else "env"


def _learner_child(devices: list[int], preset: str, blocks: int) -> None:
    """(In a child with forced host devices.) Updates/s of the preset's learner per device
    count, on random batches of the preset's shapes."""
    import jax

    from dsrl.agents.execution import ExecutionConfig
    from dsrl.envs.vector import VectorEnv

    config = load_config(preset)
    base_policy = make_base_policy(config)
    steering = make_steering(config, base_policy)
    with VectorEnv([agent_env_fn(config)], mode="inline") as venv:
        spec = venv.spec.observation_spec
    example = loop.example_transition(spec, steering)
    k, b = config.loop.block, config.loop.batch_size
    rng = np.random.default_rng(0)

    def batch_of(x):
        x = np.asarray(x)
        shape = (k, b, *x.shape)
        if x.dtype == np.uint8:
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.standard_normal(shape).astype(x.dtype)

    batches = jax.tree.map(batch_of, example)
    figures = {"local_devices": jax.local_device_count(), "block": k, "batch_size": b}
    for n in devices:
        execution = ExecutionConfig(num_devices=n)
        config_n = dataclasses.replace(config, execution=execution)
        agent = make_agent(config_n, spec, steering)
        agent, _ = agent.update(batches)  # compile
        start = time.perf_counter()
        for _ in range(blocks):
            agent, metrics = agent.update(batches)
        jax.block_until_ready(agent)
        figures[f"updates_per_s_{n}_devices"] = round(blocks * k / (time.perf_counter() - start), 2)
    print(json.dumps(figures))


def _learner(devices: list[int], preset: str, blocks: int) -> dict:
    env = dict(os.environ)
    if "cpu" in env.get("JAX_PLATFORMS", "cpu"):
        flag = f"--xla_force_host_platform_device_count={max(devices)}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    cmd = [sys.executable, __file__, "--preset", preset, "--learner_child"]
    cmd += ["--learner_devices", ",".join(map(str, devices)), "--learner_blocks", str(blocks)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    first = figures[f"updates_per_s_{devices[0]}_devices"]
    for n in devices[1:]:
        figures[f"speedup_{n}_devices"] = round(figures[f"updates_per_s_{n}_devices"] / first, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="demo, or libero_cpu for real LIBERO")
    parser.add_argument("--workers", default="1,2,4", help="env worker counts")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--policy_latency_ms", type=float, default=75.0, help="Pi0: ~75 ms a chunk on a 4090"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (one episode/worker)")
    parser.add_argument("--learner_devices", default="1,2")
    parser.add_argument("--learner_blocks", type=int, default=3, help="timed update blocks")
    parser.add_argument("--learner_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    devices = [int(n) for n in args.learner_devices.split(",") if n]
    if args.learner_child:
        _learner_child(devices, args.preset, args.learner_blocks)
        return

    config = load_config(args.preset, overrides=[("log.wandb_mode", "disabled")])
    workers = [int(n) for n in args.workers.split(",")]
    backends = args.backends.split(",")
    cores = os.cpu_count() or 1
    if "ray" in backends:
        from dsrl.envs.ray_workers import ensure_ray

        ensure_ray(num_cpus=max(workers))  # one local Ray for every measurement
    latency_s = args.policy_latency_ms / 1000
    loop_figures: dict[str, dict] = {b: {} for b in backends}
    for n in workers:
        for backend in backends:
            result = _loop_throughput(config, backend, n, latency_s, args.rounds)
            result["bound"] = _bound(result, n, cores)
            loop_figures[backend][str(n)] = result
    for backend in backends:
        base = loop_figures[backend][str(workers[0])]["steps_per_s"] / workers[0]
        for n in workers:
            row = loop_figures[backend][str(n)]
            row["scaling_efficiency"] = round(row["steps_per_s"] / (n * base), 3)
    figures = {
        "preset": args.preset,
        "cores": cores,
        "policy_latency_ms": args.policy_latency_ms,
        "rounds": args.rounds,
        "loop": loop_figures,
    }
    if set(BACKENDS) <= set(backends):
        figures["ray_over_subprocess"] = {
            str(n): round(
                loop_figures["ray"][str(n)]["steps_per_s"]
                / loop_figures["subprocess"][str(n)]["steps_per_s"],
                3,
            )
            for n in workers
        }
    if devices:
        figures["learner"] = _learner(devices, args.preset, args.learner_blocks)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
