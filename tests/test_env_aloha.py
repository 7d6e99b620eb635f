"""The real Aloha TransferCube env (gym-aloha + dm_control, EGL) and the image helpers."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsrl.base_policies.pi0.transforms import aloha_inputs  # noqa: E402
from dsrl.envs import make_env  # noqa: E402
from dsrl.envs.image_utils import flip_180, resize, resize_with_pad  # noqa: E402
from dsrl.envs.wrappers import POLICY_STATE_KEYS, DropAgentState  # noqa: E402

# -- image helpers (no simulator) -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(480, 640, 3), (256, 256, 3), (100, 37, 3), (2, 60, 90, 3)])
def test_resize_with_pad_matches_openpi_client(shape):
    image_tools = pytest.importorskip("openpi_client.image_tools")
    images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    ours = resize_with_pad(images, 224, 224)
    np.testing.assert_array_equal(ours, image_tools.resize_with_pad(images, 224, 224))


def test_letterbox_keeps_aspect_and_pads_with_black():
    image = np.full((480, 640, 3), 200, np.uint8)
    out = resize_with_pad(image, 224, 224)
    # 480x640 -> 168x224, centred: 28 black rows above and below.
    assert out.shape == (224, 224, 3)
    assert (out[:28] == 0).all() and (out[-28:] == 0).all() and (out[28:-28] == 200).all()
    assert resize(image, 64, 64).shape == (64, 64, 3)  # stretched, no padding
    assert (resize(image, 64, 64) == 200).all()


def test_image_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        resize(np.zeros((8, 8, 3), np.float32), 4, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        resize_with_pad(np.zeros((8, 8), np.uint8), 4, 4)
    with pytest.raises(ValueError, match="bicubic"):
        resize(np.zeros((8, 8, 3), np.uint8), 4, 4, method="cubic")
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(flip_180(image), image[::-1, ::-1])


# -- the env ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env():
    env = make_env("aloha_cube", max_episode_steps=6, seed=0)
    yield env
    env.close()


@pytest.mark.slow
def test_observations_and_seeded_reset(env):
    obs = env.reset(seed=3)
    assert env.spec.action_dim == 14 and env.spec.max_reward == 4.0
    assert env.spec.observation_spec == {
        "pixels": ((64, 64, 3), np.uint8),
        "state": ((14,), np.float32),
    }
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    assert obs["cam_high"].shape == (224, 224, 3) and obs["state"].dtype == np.float32
    assert obs["prompt"] == "Transfer cube"
    top = env.last_raw_observation["images"]["top"]
    assert top.shape == (480, 640, 3) and set(env.last_raw_observation["images"]) == {"top"}
    np.testing.assert_array_equal(obs["cam_high"], resize_with_pad(top, 224, 224))
    np.testing.assert_array_equal(obs["pixels"], resize(top, 64, 64, "bicubic"))
    # The letterbox bars are black, the picture between them is not.
    assert obs["cam_high"][:27].max() == 0 and obs["cam_high"][30:-30].max() > 0

    cube = env.physics.named.data.qpos["red_box_joint"][:3].copy()
    again = env.reset(seed=3)
    np.testing.assert_array_equal(env.physics.named.data.qpos["red_box_joint"][:3], cube)
    np.testing.assert_array_equal(again["cam_high"], obs["cam_high"])
    env.reset(seed=4)
    assert not np.allclose(env.physics.named.data.qpos["red_box_joint"][:3], cube)


def _batch_of_one(obs: dict) -> dict:
    return {k: v[None] for k, v in obs.items() if isinstance(v, np.ndarray)}


@pytest.mark.slow
def test_pi0_reads_the_robot_state_when_the_agent_state_is_dropped(env):
    """--add_states 0 on Aloha: the agent's "state" is empty, Pi0 still gets the 14 joints."""
    obs = env.reset(seed=5)
    dropped = DropAgentState(env, POLICY_STATE_KEYS["aloha"]).reset(seed=5)
    assert dropped["state"].shape == (0,)
    full, without = aloha_inputs(_batch_of_one(obs)), aloha_inputs(_batch_of_one(dropped))
    assert without["state"].shape == (1, 14)
    np.testing.assert_array_equal(without["state"], full["state"])


@pytest.mark.slow
def test_render_false_skips_rendering_and_time_limit(env):
    obs = env.reset(seed=0)
    hold = obs["state"].astype(np.float64)
    hold[0] += 0.3  # rotate the left waist: the scene changes
    for t in range(env.spec.max_episode_steps):
        render = t == 3
        new, reward, terminated, truncated, info = env.step(hold, render=render)
        assert ("images" in env.last_raw_observation) == render
        if t < 3:
            np.testing.assert_array_equal(new["cam_high"], obs["cam_high"])
        if render:
            assert not np.array_equal(new["cam_high"], obs["cam_high"])
        assert not terminated and not info["success"]
        assert truncated == (t == env.spec.max_episode_steps - 1)


@pytest.mark.slow
def test_success_when_the_cube_is_held_by_the_left_gripper_only(env):
    obs = env.reset(seed=0)
    physics = env.physics
    finger = physics.model.name2id("vx300s_left/10_left_gripper_finger", "geom")
    # Put the cube against the left finger, in the air: the task's own contact check gives 4.
    with physics.reset_context():
        position = physics.data.geom_xpos[finger].copy()
        physics.named.data.qpos["red_box_joint"] = np.concatenate([position, [1.0, 0, 0, 0]])
    assert env.task_reward() == 4.0
    _, reward, terminated, truncated, info = env.step(obs["state"].astype(np.float64), render=False)
    assert reward == 4.0 and terminated and info["success"] and not truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(obs["state"].astype(np.float64))


@pytest.mark.slow
def test_cube_on_the_table_is_not_success(env):
    obs = env.reset(seed=0)
    _, reward, terminated, _, info = env.step(obs["state"].astype(np.float64), render=False)
    assert reward < 4.0 and not terminated and not info["success"]


@pytest.mark.slow
def test_pad_option_letterboxes_agent_pixels():
    env = make_env("aloha", agent_resize="pad", image_size=32)
    try:
        obs = env.reset(seed=0)
        assert obs["pixels"].shape == (32, 32, 3)
        assert obs["pixels"][:3].max() == 0  # 480x640 -> 24x32 with 4 black rows on top
    finally:
        env.close()
    with pytest.raises(ValueError, match="'stretch' or 'pad'"):
        make_env("aloha", agent_resize="crop")
