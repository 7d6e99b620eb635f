"""Env worker faults: real subprocess workers running the demo env, really SIGSTOPped and
SIGKILLed. A stalled or dead worker must cost at most its current episode, never the run; one
that keeps failing must stop the run with a clear error and a checkpoint to resume from."""

from __future__ import annotations

import functools
import logging
import os
import signal
import time

import numpy as np
import pytest
from fault_loop_parts import QUERY_FREQ, demo_steering, replay_buffer, small_learner
from faulty_demo_env import FaultyDemoEnv

from dsrl.envs import make_env
from dsrl.envs.vector import NonFiniteActionError, VectorEnv, WorkerFailedError
from dsrl.training import loop
from dsrl.training.evaluation import evaluate
from dsrl.training.rollout import run_episodes
from dsrl.utils.checkpoints import RunCheckpointer
from dsrl.utils.logging import RunLogger, read_metrics

# Small deadlines keep the tests at seconds; a demo chunk takes milliseconds, so 3 s is far from
# a false alarm even on a loaded 2-core machine.
FAST = {"reset_timeout_s": 3.0, "step_timeout_s": 3.0, "start_timeout_s": 60.0}


@pytest.fixture(autouse=True)
def hard_time_limit():
    """Without deadlines a stalled worker hangs the caller forever: fail instead."""

    def expire(signum, frame):
        raise TimeoutError("the test ran past 120 s: some wait on a worker has no deadline")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def steering():
    return demo_steering()


def demo_workers(n: int, **kwargs) -> VectorEnv:
    return VectorEnv([functools.partial(make_env, "demo", image_size=16)] * n, **FAST, **kwargs)


def faulty_workers(n: int, fault_dir, **kwargs) -> VectorEnv:
    env_fn = functools.partial(FaultyDemoEnv, str(fault_dir), image_size=16)
    return VectorEnv([env_fn] * n, **FAST, **kwargs)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); its /proc state says Z.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def signal_on_query(source, pid: int, sig: int, query: int):
    """Wraps a noise source: at query number `query`, sends `sig` to the worker `pid`, i.e. in
    the middle of an episode, between two chunks."""
    calls = {"n": 0}

    def wrapped(obs):
        calls["n"] += 1
        if calls["n"] == query:
            os.kill(pid, sig)
        return source(obs)

    return wrapped


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
def test_failed_worker_mid_episode_loses_only_its_episode(steering, sig):
    with demo_workers(3) as venv:
        pids = venv.worker_pids
        source = signal_on_query(steering.warmup_source(np.random.default_rng(0)), pids[1], sig, 2)
        started = time.monotonic()
        episodes = run_episodes(venv, steering, source, [1, 2, 3], discount=0.99)
        # A stall costs one deadline, not forever.
        assert time.monotonic() - started < FAST["step_timeout_s"] + 30
        lost, kept = episodes[1], [episodes[0], episodes[2]]
        assert lost.discarded and lost.transitions == [] and not lost.success
        for episode in kept:
            assert not episode.discarded
            assert len(episode.transitions) == episode.num_queries > 1
            last = episode.transitions[-1]
            assert episode.success or episode.length == venv.spec.max_episode_steps
            assert last["masks"] == (0.0 if episode.success else 1.0)
        assert venv.worker_restarts == 1
        assert process_gone(pids[1])
        new_pids = venv.worker_pids
        assert new_pids[1] != pids[1] and new_pids[0] == pids[0] and new_pids[2] == pids[2]
        # The restarted worker runs the same env settings: the same seed gives the same episode
        # as a worker that never failed.
        again = run_episodes(
            venv, steering, steering.warmup_source(np.random.default_rng(5)), [7, 7, 7], discount=1
        )
        assert not any(e.discarded for e in again)
        for key in ("pixels", "state"):
            for episode in again[1:]:
                np.testing.assert_array_equal(
                    episode.transitions[0]["observations"][key],
                    again[0].transitions[0]["observations"][key],
                )
        assert venv.worker_restarts == 1


def test_stalled_reset_is_retried_on_a_restarted_worker(steering, caplog):
    with demo_workers(2) as venv:
        pids = venv.worker_pids
        os.kill(pids[0], signal.SIGSTOP)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="dsrl.envs.vector"):
            obs = venv.reset([11, 12])
        # No episode was lost, and the warning says so (env/discarded_episodes stays 0).
        assert "no episode is lost" in caplog.text and "discarded" not in caplog.text
        assert time.monotonic() - started < FAST["reset_timeout_s"] + 30
        assert venv.worker_restarts == 1 and venv.worker_pids[0] != pids[0]
        assert process_gone(pids[0])
        # Same seed, fresh worker: the observation a healthy worker gives.
        reference = make_env("demo", image_size=16).reset(seed=11)
        np.testing.assert_array_equal(obs[0]["pixels"], reference["pixels"])
        results = venv.step_chunk(np.zeros((2, QUERY_FREQ, 2), np.float32))
        assert not any(r.worker_restarted for r in results)


def test_stepping_a_restarted_env_before_its_reset_is_refused(steering):
    with demo_workers(1) as venv:
        venv.reset([0])
        os.kill(venv.worker_pids[0], signal.SIGKILL)
        (result,) = venv.step_chunk(np.zeros((1, QUERY_FREQ, 2), np.float32))
        assert result.worker_restarted and result.truncated and result.steps_executed == 0
        assert result.obs is not None and "pixels" in result.obs
        with pytest.raises(ValueError, match=r"envs \[0\] were restarted.*reset"):
            venv.step_chunk(np.zeros((1, QUERY_FREQ, 2), np.float32))
        venv.reset([0])
        (result,) = venv.step_chunk(np.zeros((1, QUERY_FREQ, 2), np.float32))
        assert not result.worker_restarted and result.steps_executed == QUERY_FREQ


def test_evaluation_reruns_an_episode_lost_to_a_worker_failure(steering, tmp_path):
    """Evaluation covers its fixed seeds even when a worker dies: the lost episode is re-run.
    With a deterministic noise source the re-run is the same episode, so the metrics equal a
    run without the fault."""
    noise_shape = tuple(steering.base_policy.noise_shape)

    def zero_noise(obs):
        return None, np.zeros((len(obs["state"]), *noise_shape), np.float32)

    seeds = [21, 22, 23, 24]
    with demo_workers(2) as venv:
        clean = evaluate(venv, steering, zero_noise, seeds)
    (tmp_path / "SIGKILL@3.fault").touch()  # 2 resets per round: fires in the second round
    with faulty_workers(2, tmp_path) as venv:
        faulted = evaluate(venv, steering, zero_noise, seeds)
        assert venv.worker_restarts == 1
    assert not list(tmp_path.glob("*.fault"))
    assert not any(e.discarded for e in faulted.episodes)
    assert faulted.metrics == clean.metrics
    assert [e.length for e in faulted.episodes] == [e.length for e in clean.episodes]


def test_a_worker_that_always_fails_stops_with_a_clear_error(tmp_path):
    (tmp_path / "always-SIGKILL@0.fault").touch()
    with faulty_workers(2, tmp_path, max_worker_failures=3) as venv:
        venv.reset([0, 1])
        actions = np.zeros((2, QUERY_FREQ, 2), np.float32)
        for failures in (1, 2):
            results = venv.step_chunk(actions)
            assert all(r.worker_restarted for r in results)
            assert venv.worker_restarts == 2 * failures
            venv.reset([0, 1])
        with pytest.raises(
            WorkerFailedError, match=r"env 0 \(demo\) failed 3 times in a row"
        ) as err:
            venv.step_chunk(actions)
    message = str(err.value)
    assert "exit code -9" in message and "step_timeout_s" in message


def _train(venv, steering, run_dir, **overrides):
    config = dict(
        seed=3,
        max_steps=40,
        batch_size=8,
        multi_grad_step=1,
        update_block=4,
        start_online_updates=20,
        discount=0.99,
        eval_interval=1000,
        eval_episodes=0,
        log_interval=4,
        checkpoint_interval=8,
        progress=False,
    )
    config.update(overrides)
    spec = venv.spec
    agent = small_learner(spec, steering)
    buffer = replay_buffer(spec, steering)
    logger = RunLogger(run_dir, {"test": True}, project="t", wandb_mode="disabled")
    checkpointer = RunCheckpointer(run_dir)
    try:
        result = loop.train(
            env=venv,
            steering=steering,
            agent=agent,
            buffer=buffer,
            config=loop.LoopConfig(**config),
            logger=logger,
            checkpointer=checkpointer,
        )
        return result, buffer
    finally:
        logger.close()


def test_training_goes_on_after_a_stalled_and_a_killed_worker(steering, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "SIGSTOP@4.fault").touch()  # during the 2nd collection round
    (faults / "SIGKILL@8.fault").touch()  # during the 4th
    with faulty_workers(2, faults) as venv:
        result, buffer = _train(venv, steering, tmp_path / "run")
        assert venv.worker_restarts == 2
    state = result.state
    assert state.grad_steps == 40
    assert not list(faults.glob("*.fault"))  # both faults really happened
    rows = [r for r in read_metrics(tmp_path / "run") if "env/worker_restarts" in r]
    assert rows[-1]["env/worker_restarts"] == 2 and rows[-1]["env/discarded_episodes"] == 2
    # Only whole episodes were stored: each trajectory ends in a success (reward 0) or at the
    # time limit (48 steps = 6 queries); half an episode would end in neither.
    assert len(buffer.trajectory_bounds) == state.num_online_trajs
    for start, end in buffer.trajectory_bounds:
        rewards = buffer.get(np.arange(start, end) % buffer.capacity)["rewards"]
        assert rewards[-1] == 0.0 or len(rewards) == 6


def test_training_stopped_by_a_failing_worker_leaves_a_checkpoint_to_resume(steering, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    # From the 4th collection round on (both workers have reset 6 times), every step kills its
    # worker: after 2 failures in a row the run must stop.
    (faults / "always-SIGKILL@7.fault").touch()
    with faulty_workers(2, faults, max_worker_failures=2) as venv:
        with pytest.raises(WorkerFailedError, match="failed 2 times in a row"):
            _train(venv, steering, tmp_path / "run", max_steps=400, checkpoint_interval=1000)
    # No interval checkpoint could have been written (interval 1000): this one is the hook's.
    checkpointer = RunCheckpointer(tmp_path / "run")
    assert checkpointer.verify(checkpointer.latest_step())
    template = small_learner(venv.spec, steering)
    agent, state, buffer = loop.restore(checkpointer, template)
    assert state.num_online_trajs == 6 and state.grad_steps == checkpointer.latest_step() > 0
    assert len(buffer) == state.num_online_samples
    assert len(buffer.trajectory_bounds) == 6


@pytest.mark.parametrize("mode", ["inline", "subprocess"])
def test_non_finite_actions_never_reach_an_env(tmp_path, mode):
    """A diverged policy's NaN chunk is refused before any env steps (the demo env would fail on
    it with 'cannot convert float NaN to integer'; a robot would move)."""
    env_fn = functools.partial(FaultyDemoEnv, str(tmp_path), image_size=16)
    kwargs = FAST if mode == "subprocess" else {}
    with VectorEnv([env_fn] * 2, mode=mode, **kwargs) as venv:
        first = venv.reset([3, 4])
        actions = np.zeros((2, QUERY_FREQ, 2), np.float32)
        actions[1, 2, 0] = np.nan
        with pytest.raises(NonFiniteActionError, match=r"env\(s\) \[1\] hold NaN or inf"):
            venv.step_chunk(actions)
        # Nothing was stepped: env 0 still continues its episode from the reset observation.
        results = venv.step_chunk(np.zeros((2, QUERY_FREQ, 2), np.float32), active=[True, False])
        assert results[0].steps_executed == QUERY_FREQ and results[1] is None
        reference = make_env("demo", image_size=16)
        reference.reset(seed=3)
        np.testing.assert_array_equal(first[0]["pixels"], reference.reset(seed=3)["pixels"])
        assert (tmp_path / "resets").stat().st_size == 2
