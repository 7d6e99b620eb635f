"""Chunk-boundary smoothing (dsrl.envs.smoothing): the blend and the cap on known chunks, reset
at episode start, the same smoothing in a subprocess worker and on the (simulated) real robot,
and off = today's chunks exactly."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from dsrl.envs import make_env
from dsrl.envs.droid import DroidConfig, DroidEnv, SimulatedRobotEnv
from dsrl.envs.keyboard import ScriptedKeyboard
from dsrl.envs.smoothing import ChunkSmoother, ChunkSmoothing
from dsrl.envs.vector import VectorEnv
from dsrl.training.config_io import load_config
from dsrl.training.flags import ConfigError
from tests.test_vector_env import CounterEnv

W = np.array([1, 2, 3]) / 4  # cross-fade weights of the new chunk for blend_steps=3


def _col(values) -> np.ndarray:
    return np.asarray(values, np.float32)[:, None]


def _run(smoother: ChunkSmoother, chunk, tail=None, steps=None) -> np.ndarray:
    out = smoother.smooth(chunk)
    smoother.executed(chunk, out, len(chunk) if steps is None else steps, tail)
    return out


def test_blend_cross_fades_from_the_previous_plan_then_its_last_action():
    s = ChunkSmoother(ChunkSmoothing(blend_steps=3))
    np.testing.assert_array_equal(_run(s, _col([0, 0])), _col([0, 0]))  # first chunk: as is
    # No tail: the new chunk fades in from the last executed action (0).
    got = _run(s, _col([4, 4, 4, 4]), tail=_col([8, 8]))
    np.testing.assert_allclose(got[:, 0], [*(W * 4), 4])
    # With the previous chunk's unexecuted tail (8, 8), then its last action (4) past it.
    got = _run(s, _col([0, 0, 0, 0, 0]))
    np.testing.assert_allclose(got[:, 0], [(1 - W[0]) * 8, (1 - W[1]) * 8, (1 - W[2]) * 4, 0, 0])


def test_cap_bounds_every_step_change_across_chunk_boundaries_and_resets():
    s = ChunkSmoother(ChunkSmoothing(max_action_delta=0.5))
    first = _run(s, _col([3, 3, 2]))  # the episode's first action is free, then capped
    np.testing.assert_allclose(first[:, 0], [3, 3, 2.5])
    np.testing.assert_allclose(_run(s, _col([0, 0, 0]))[:, 0], [2.0, 1.5, 1.0])
    s.reset()  # a new episode starts from nothing
    np.testing.assert_allclose(_run(s, _col([-2, -2]))[:, 0], [-2, -2])


def test_blend_then_cap_and_a_partial_chunk():
    s = ChunkSmoother(ChunkSmoothing(blend_steps=2, max_action_delta=1.0))
    _run(s, _col([0, 0, 0, 0]), steps=2)  # 2 of 4 ran: the plan is the other 2
    got = _run(s, _col([6, 6, 6, 6]))
    # blend: 2, 4 (from the plan 0, 0), then 6, 6; cap 1 per step from 0: 1, 2, 3, 4
    np.testing.assert_allclose(got[:, 0], [1, 2, 3, 4])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"blend_steps": -1}, "blend_steps must be >= 0"),
        ({"max_action_delta": float("nan")}, "max_action_delta must be a finite number"),
        ({"max_action_delta": -0.1}, "max_action_delta must be a finite number >= 0"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChunkSmoothing(**kwargs)
    section = {"blend_steps": "env.blend_steps", "max_action_delta": "env.max_action_delta"}
    (name,) = kwargs
    with pytest.raises(ConfigError, match=f"{section[name]} must be .*--{name}"):
        load_config("demo", flags={name: str(kwargs[name])})
    default = load_config("demo").env  # off by default
    assert (default.blend_steps, default.max_action_delta) == (0, 0.0)


def test_off_is_todays_chunks_exactly():
    """Smoothing off (the default) executes exactly the given chunks."""
    actions = np.random.default_rng(0).uniform(-1, 1, size=(3, 2, 8, 2)).astype(np.float32)

    def rollout(smoothing):
        venv = VectorEnv([functools.partial(make_env, "demo")] * 2, "inline", smoothing=smoothing)
        with venv:
            venv.reset([3, 4])
            out = [venv.step_chunk(a, tails=a[:, :3]) for a in actions]
        return [(r.rewards, r.obs["state"], r.actions) for step in out for r in step]

    plain, off = rollout(None), rollout(ChunkSmoothing())
    for (rew_a, state_a, act_a), (rew_b, state_b, act_b) in zip(plain, off, strict=True):
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(state_a, state_b)
        np.testing.assert_array_equal(act_a, act_b)
    assert np.array_equal(plain[2][2], actions[1, 0][: len(plain[2][2])])


def test_subprocess_worker_smooths_and_resets_with_the_episode():
    """CounterEnv's reward is the executed action: the worker ran the blended chunk, and a
    reset starts the next episode unsmoothed."""
    smoothing = ChunkSmoothing(blend_steps=3)
    with VectorEnv([functools.partial(CounterEnv, max_steps=50)], smoothing=smoothing) as venv:
        venv.reset([0])
        venv.step_chunk(np.zeros((1, 2, 1)), tails=np.full((1, 2, 1), 2.0))
        res = venv.step_chunk(np.ones((1, 4, 1)))[0]
        np.testing.assert_allclose(res.rewards, [2 * (1 - W[0]) + W[0], 2 * (1 - W[1]) + W[1],
                                                 W[2], 1])  # fmt: skip
        np.testing.assert_allclose(res.actions[:, 0], res.rewards)
        venv.reset([0])
        np.testing.assert_array_equal(venv.step_chunk(np.ones((1, 4, 1)))[0].rewards, 1)


def test_the_real_robot_receives_the_smoothed_chunks():
    """The DROID env (simulated robot) behind the inline VectorEnv that build_run makes for a
    real run: the robot is sent the capped actions."""
    cfg = DroidConfig(
        left_camera_id="1", right_camera_id="2", wrist_camera_id="3", image_size=32,
        control_hz=0, max_episode_steps=12,
    )  # fmt: skip
    robot = SimulatedRobotEnv(cfg.camera_ids())
    env = DroidEnv(cfg, robot=robot, keyboard=ScriptedKeyboard(["\n"], []))
    smoothing = ChunkSmoothing(max_action_delta=0.25)
    with VectorEnv([lambda: env], mode="inline", smoothing=smoothing) as venv:
        venv.reset([None])
        venv.step_chunk(np.zeros((1, 2, 8), np.float32))
        chunk = np.zeros((1, 3, 8), np.float32)
        chunk[..., 0] = 1.0
        venv.step_chunk(chunk)
    np.testing.assert_allclose([a[0] for a in robot.actions], [0, 0, 0.25, 0.5, 0.75])
