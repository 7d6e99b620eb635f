"""VectorEnv: chunked stepping in subprocess workers, early episode ends, crashes, registry."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

from dsrl.envs import make_env
from dsrl.envs.base import Env, EnvSpec
from dsrl.envs.vector import ChunkResult, VectorEnv, VectorEnvError, WorkerFailedError, run_chunk


class CounterEnv(Env):
    """Deterministic toy env: the state counts steps; success when the count reaches
    `success_at`. "pixels" hold the step count of the last render, so tests see which steps
    rendered. `crash_at` raises inside step; `die_at` kills the process."""

    def __init__(self, success_at=None, max_steps=10, crash_at=None, die_at=None, fail_init=False):
        if fail_init:
            raise RuntimeError("CounterEnv could not start: fail_init was set")
        self.spec = EnvSpec(
            name="counter",
            observation_spec={"pixels": ((2, 2, 3), np.uint8), "state": ((1,), np.float32)},
            action_dim=1,
            max_episode_steps=max_steps,
        )
        self.success_at, self.crash_at, self.die_at = success_at, crash_at, die_at
        self.t, self.renders, self.last_render = 0, 0, 0

    def _obs(self):
        return {
            "pixels": np.full((2, 2, 3), self.last_render, np.uint8),
            "state": np.array([self.t], np.float32),
            "renders": self.renders,
        }

    def reset(self, seed=None):
        self.t, self.renders, self.last_render = int(seed or 0), 0, int(seed or 0)
        return self._obs()

    def step(self, action, render=True):
        self.t += 1
        if self.t == self.crash_at:
            raise ValueError(f"boom at step {self.t}")
        if self.t == self.die_at:
            os._exit(3)
        if render:
            self.renders += 1
            self.last_render = self.t
        success = self.t == self.success_at
        truncated = not success and self.t >= self.spec.max_episode_steps
        return self._obs(), float(action[0]), success, truncated, {"success": success}

    def render_current(self):
        self.renders += 1
        self.last_render = self.t
        return self._obs()


def _counter(**kw):
    return functools.partial(CounterEnv, **kw)


def _chunk(n_envs, horizon, value=1.0):
    return np.full((n_envs, horizon, 1), value, np.float32)


def test_chunk_renders_once_and_stops_at_success():
    env = CounterEnv(success_at=3)
    env.reset()
    res = run_chunk(env, np.ones((5, 1)))
    assert res.steps_executed == 3 and res.success and res.terminated and not res.truncated
    np.testing.assert_array_equal(res.rewards, [1.0, 1.0, 1.0])
    # Rendered exactly once, at the step that ended the episode.
    assert res.obs["renders"] == 1 and res.obs["pixels"][0, 0, 0] == 3


def test_time_limit_inside_chunk_renders_the_last_step():
    with VectorEnv([_counter(max_steps=7)], mode="inline") as venv:
        venv.reset([0])
        first = venv.step_chunk(_chunk(1, 5))[0]
        assert first.steps_executed == 5 and first.obs["renders"] == 1
        assert first.obs["pixels"][0, 0, 0] == 5
        second = venv.step_chunk(_chunk(1, 5))[0]
        assert second.steps_executed == 2 and second.truncated and not second.terminated
        # The truncating step was the rendered one (no extra render_current call).
        assert second.obs["renders"] == 2 and second.obs["pixels"][0, 0, 0] == 7


def test_record_frames_renders_every_step():
    with VectorEnv([_counter()], mode="inline") as venv:
        venv.reset([0])
        res = venv.step_chunk(_chunk(1, 4), record_frames=True)[0]
    assert res.frames.shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(res.frames[:, 0, 0, 0], [1, 2, 3, 4])


@pytest.mark.slow
def test_subprocess_demo_chunks_match_single_env_stepping():
    """Two DemoEnv workers executing chunks give exactly what one env stepped by hand gives."""
    horizon, n_chunks, seeds = 8, 4, [3, 11]
    actions = np.random.default_rng(0).uniform(-1, 1, size=(n_chunks, 2, horizon, 2))
    with VectorEnv([functools.partial(make_env, "demo") for _ in seeds]) as venv:
        assert venv.num_envs == 2 and venv.spec.action_dim == 2
        first = venv.reset(seeds)
        results = []
        active = np.ones(2, bool)
        for c in range(n_chunks):
            step = venv.step_chunk(actions[c], active=active)
            results.append(step)
            active &= np.array([r is None or not (r.terminated or r.truncated) for r in step])
    for i, seed in enumerate(seeds):
        env = make_env("demo")
        obs = env.reset(seed=seed)
        np.testing.assert_array_equal(obs["pixels"], first[i]["pixels"])
        for c in range(n_chunks):
            res = results[c][i]
            if res is None:
                break
            rewards = []
            for t in range(res.steps_executed):
                obs, reward, term, trunc, _ = env.step(actions[c, i, t], render=True)
                rewards.append(reward)
            np.testing.assert_array_equal(res.rewards, rewards)
            np.testing.assert_array_equal(res.obs["pixels"], obs["pixels"])
            np.testing.assert_array_equal(res.obs["state"], obs["state"])
            assert (res.terminated, res.truncated) == (term, trunc)


@pytest.mark.slow
def test_subprocess_workers_inactive_envs_and_early_end():
    with VectorEnv([_counter(success_at=3), _counter(success_at=100)]) as venv:
        venv.reset([0, 0])
        out = venv.step_chunk(_chunk(2, 5), active=[True, False])
        assert isinstance(out[0], ChunkResult) and out[1] is None
        assert out[0].steps_executed == 3 and out[0].success
        # The inactive env was not stepped: its next chunk starts from step 0.
        again = venv.step_chunk(_chunk(2, 2), active=[False, True])
        assert again[1].obs["state"][0] == 2


@pytest.mark.slow
def test_worker_exception_names_env_and_traceback():
    with VectorEnv([_counter(), _counter(crash_at=2)]) as venv:
        venv.reset([0, 0])
        with pytest.raises(VectorEnvError, match=r"env 1 \(counter\)") as err:
            venv.step_chunk(_chunk(2, 3))
        assert "boom at step 2" in str(err.value) and "Traceback" in str(err.value)
        # The workers survive an env exception: a reset makes them usable again.
        assert len(venv.reset([5, 5])) == 2


@pytest.mark.slow
def test_dead_worker_and_failed_construction_are_reported():
    # With no restart allowed, a death is reported with its exit code (tests/test_faults_workers
    # covers the restarts).
    with VectorEnv([_counter(die_at=1)], max_worker_failures=1) as venv:
        venv.reset([0])
        with pytest.raises(WorkerFailedError, match="died.*exit code 3"):
            venv.step_chunk(_chunk(1, 2))
    with pytest.raises(VectorEnvError, match="fail_init was set"):
        VectorEnv([_counter(fail_init=True)])


@pytest.mark.slow
def test_close_stops_the_worker_processes():
    venv = VectorEnv([_counter(), _counter()])
    procs = list(venv._workers.procs)
    assert all(p.is_alive() for p in procs)
    venv.close()
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


def test_bad_shapes_are_rejected_with_the_expected_shape():
    with VectorEnv([_counter(), _counter()], mode="inline") as venv:
        venv.reset()
        with pytest.raises(ValueError, match=r"num_envs=2, T, action_dim=1"):
            venv.step_chunk(np.zeros((3, 4, 1)))
        with pytest.raises(ValueError, match="seeds"):
            venv.reset([1, 2, 3])


def test_make_env_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"'libero'.*'aloha'|'aloha'.*'libero'"):
        make_env("mujoco_ant")


def test_importing_envs_does_not_import_simulators():
    code = (
        "import sys, dsrl.envs, dsrl.envs.vector, dsrl.envs.image_utils; "
        "bad = [m for m in ('robosuite', 'libero', 'dm_control', 'gym_aloha', 'mujoco') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__) + "/..")
