"""The Ray backend: env workers and the base policy as real Ray actors on a local Ray.

One Ray instance serves the whole module (starting one takes seconds); it is shut down at the
end, and no Ray process outlives the module. The env workers must give exactly the transitions
of the subprocess workers for the same seeds, and a really killed worker must cost at most its
current episode."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_loop_parts import demo_steering, replay_buffer, small_learner
from faulty_demo_env import FaultyDemoEnv

from dsrl.envs import make_env
from dsrl.envs.vector import VectorEnv
from dsrl.training import cli, loop
from dsrl.training.rollout import run_episodes
from dsrl.utils.logging import RunLogger, read_metrics

ray = pytest.importorskip("ray")

TESTS = str(Path(__file__).resolve().parent)
FAST = {"reset_timeout_s": 5.0, "step_timeout_s": 5.0, "start_timeout_s": 60.0}


def _descendants(root: int) -> set[int]:
    """Process ids below `root` (Ray's GCS and raylet are children of the driver, its workers
    children of the raylet)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200] or str(pid)
    except OSError:
        return str(pid)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module. The Ray workers see tests/ on their path (the faulty env
    lives there), as spawned subprocess workers do. After shutdown_local_ray() no process Ray
    started may survive."""
    from dsrl.envs.ray_workers import ensure_ray, shutdown_local_ray

    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, old_path]))
    try:
        assert ensure_ray(num_cpus=4)
        yield ray
    finally:
        commands = {pid: _command(pid) for pid in _descendants(os.getpid())}
        started = {pid: c for pid, c in commands.items() if "ray" in c}  # not multiprocessing's
        shutdown_local_ray()
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path
    deadline = time.monotonic() + 30
    while (stray := {p for p in started if not process_gone(p)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not stray, f"Ray processes outlived ray.shutdown(): {[started[p] for p in stray]}"


@pytest.fixture(scope="module")
def steering():
    return demo_steering()


def demo_env_fns(n: int):
    return [functools.partial(make_env, "demo", image_size=16)] * n


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie still answers kill(0)
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_ray_workers_give_the_subprocess_workers_transitions(local_ray, steering):
    """Same seeds, same warm-up noise: every stored transition is equal, array for array."""
    seeds = [11, 12]
    episodes = {}
    for mode in ("subprocess", "ray"):
        with VectorEnv(demo_env_fns(2), mode=mode, **FAST) as venv:
            source = steering.warmup_source(np.random.default_rng(7))
            episodes[mode] = run_episodes(venv, steering, source, seeds, discount=0.99)
            if mode == "ray":
                assert all(pid != os.getpid() for pid in venv.worker_pids)
    for sub, ray_ep in zip(episodes["subprocess"], episodes["ray"], strict=True):
        assert (sub.length, sub.success, sub.env_return) == (
            ray_ep.length,
            ray_ep.success,
            ray_ep.env_return,
        )
        assert len(sub.transitions) == len(ray_ep.transitions) > 1
        for a, b in zip(sub.transitions, ray_ep.transitions, strict=True):
            for key in ("latents", "rewards", "masks", "discounts"):
                np.testing.assert_array_equal(a[key], b[key])
            for obs_key in ("observations", "next_observations"):
                for k in ("pixels", "state"):
                    np.testing.assert_array_equal(a[obs_key][k], b[obs_key][k])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_a_killed_or_stalled_ray_worker_loses_only_its_episode(local_ray, steering, sig):
    """A real signal to a Ray env worker's process mid-episode: a kill is seen at once, a stall
    at the step deadline; either way the actor is replaced and only its episode is lost."""
    with VectorEnv(demo_env_fns(3), mode="ray", ray_num_cpus_per_worker=0.5, **FAST) as venv:
        pids = venv.worker_pids
        calls = {"n": 0}
        warmup = steering.warmup_source(np.random.default_rng(0))

        def kill_on_second_query(obs):
            calls["n"] += 1
            if calls["n"] == 2:  # mid-episode, between two chunks
                os.kill(pids[1], sig)
            return warmup(obs)

        started = time.monotonic()
        episodes = run_episodes(venv, steering, kill_on_second_query, [1, 2, 3], discount=0.99)
        assert time.monotonic() - started < FAST["step_timeout_s"] + 30
        assert episodes[1].discarded and episodes[1].transitions == []
        for episode in (episodes[0], episodes[2]):
            assert not episode.discarded and len(episode.transitions) == episode.num_queries > 1
        assert venv.worker_restarts == 1
        deadline = time.monotonic() + 30  # Ray force-kills a stopped worker after a grace period
        while not process_gone(pids[1]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process_gone(pids[1])
        new = venv.worker_pids
        assert new[1] not in (None, pids[1]) and (new[0], new[2]) == (pids[0], pids[2])
        # The new actor runs the same env: the same seed gives the same first observation.
        again = run_episodes(
            venv,
            steering,
            steering.warmup_source(np.random.default_rng(5)),
            [7, 7, 7],
            discount=1.0,
        )
        assert not any(e.discarded for e in again)
        first = [e.transitions[0]["observations"]["pixels"] for e in again]
        np.testing.assert_array_equal(first[1], first[0])


def test_training_goes_on_after_a_ray_worker_kills_itself(local_ray, steering, tmp_path):
    """A SIGKILL inside a Ray env worker during training: restarted, its episode discarded and
    counted in the logged metrics, and the run reaches its gradient-step budget."""
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "SIGKILL@6.fault").touch()  # during the 2nd collection round
    env_fn = functools.partial(FaultyDemoEnv, str(faults), image_size=16)
    run_dir = tmp_path / "run"
    with VectorEnv([env_fn] * 2, mode="ray", **FAST) as venv:
        logger = RunLogger(run_dir, {"test": True}, project="t", wandb_mode="disabled")
        try:
            result = loop.train(
                env=venv,
                steering=steering,
                agent=small_learner(venv.spec, steering),
                buffer=replay_buffer(venv.spec, steering),
                config=loop.LoopConfig(
                    seed=3,
                    max_steps=24,
                    batch_size=8,
                    multi_grad_step=1,
                    update_block=4,
                    start_online_updates=20,
                    eval_episodes=0,
                    log_interval=4,
                    progress=False,
                ),
                logger=logger,
            )
        finally:
            logger.close()
        assert venv.worker_restarts == 1
    assert not list(faults.glob("*.fault"))  # the fault really happened
    assert result.state.grad_steps == 24
    rows = [r for r in read_metrics(run_dir) if "env/worker_restarts" in r]
    assert rows[-1]["env/worker_restarts"] == 1 and rows[-1]["env/discarded_episodes"] == 1


def test_ray_base_policy_one_batched_actor_call_per_query(local_ray, steering):
    """The policy is built in its actor (another process) from a factory, gives the local
    policy's actions, answers K noises per observation in one call, and serves a whole rollout
    over Ray env workers with one call per query for all of them."""
    from dsrl.base_policies.flow_mlp import FlowMLPPolicy
    from dsrl.base_policies.ray_actor import RayBasePolicy
    from dsrl.training.rollout import stack_observations

    local = FlowMLPPolicy.load_demo()
    remote = RayBasePolicy(FlowMLPPolicy.load_demo)
    try:
        assert remote.actor_pid != os.getpid()
        assert (remote.noise_shape, remote.action_dim) == (local.noise_shape, local.action_dim)
        env = make_env("demo", image_size=16)
        obs = stack_observations([env.reset(seed=s) for s in (1, 2)])
        noise = np.random.default_rng(0).standard_normal((2, 3, *local.noise_shape))
        noise = noise.astype(np.float32)
        np.testing.assert_array_equal(
            remote.sample_actions(obs, noise[:, 0]), local.sample_actions(obs, noise[:, 0])
        )
        multi = remote.sample_actions_multi(obs, noise)
        assert multi.shape == (2, 3, *local.sample_actions(obs, noise[:, 0]).shape[1:])
        for k in range(3):
            np.testing.assert_allclose(
                multi[:, k], local.sample_actions(obs, noise[:, k]), atol=1e-6
            )
        assert remote.num_calls() == 2

        ray_steering = dataclasses.replace(steering, base_policy=remote)
        with VectorEnv(demo_env_fns(2), mode="ray", **FAST) as venv:
            source = steering.warmup_source(np.random.default_rng(3))
            episodes = run_episodes(venv, ray_steering, source, [1, 2], discount=0.99)
        assert remote.num_calls() == 2 + max(e.num_queries for e in episodes)
    finally:
        remote.close()


@pytest.mark.parametrize("algorithm", ["pixel_sac", "dsrl_na"])
def test_launcher_run_on_ray_env_workers_and_a_ray_base_policy(
    local_ray, tmp_path, capsys, algorithm
):
    """examples/launch_train_sim.py end to end with --env_backend ray and the base policy in a
    Ray actor (the run that used to hang: the policy actor no longer takes a CPU from the env
    workers). DSRL-NA gets its distillation targets from aliases stored at each query (one
    multi-noise call to the actor), never from the actor inside its update."""
    argv = [
        "--env", "demo", "--env_backend", "ray", "--config.base_policy.ray=true",
        "--num_envs", "2", "--max_steps", "32", "--start_online_updates", "30",
        "--eval_interval", "1000", "--eval_episodes", "2", "--logdir", str(tmp_path),
        "--no_progress", "--config.loop.num_video_episodes=0", "--algorithm", algorithm,
    ] + (["--num_aliases", "4"] if algorithm == "dsrl_na" else [])  # fmt: skip
    assert cli.main_sim(argv) == 0
    (run_dir,) = tmp_path.iterdir()
    rows = read_metrics(run_dir)
    assert rows[-1]["env_steps"] > 0 and rows[-1]["env/worker_restarts"] == 0
    evals = [r for r in rows if "evaluation_mode/success_rate" in r]
    assert len(evals) == 2  # at step 0 and at the end
    assert "DSRL, deterministic (actor mode)" in capsys.readouterr().out
    if algorithm == "dsrl_na":  # the distillation ran, on the stored aliases
        trained = [r for r in rows if "training/noise_critic_loss" in r]
        assert trained and np.isfinite(trained[-1]["training/noise_critic_loss"])


def test_ray_backend_without_ray_installed_is_one_clear_error(tmp_path):
    """A Python without Ray (a module named ray that refuses to import stands in for it): the
    launcher stops with one error line naming the fix, and leaves no run directory."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('No module named ray')\n")
    logdir = tmp_path / "runs"
    out = subprocess.run(
        [
            sys.executable, str(Path(TESTS).parent / "examples" / "launch_train_sim.py"),
            "--env", "demo", "--env_backend", "ray", "--logdir", str(logdir), "--no_progress",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(blocker), "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "pip install ray==2.60.0" in errors[0] and "--env_backend subprocess" in errors[0]
    assert not logdir.exists() or not any(logdir.iterdir())
