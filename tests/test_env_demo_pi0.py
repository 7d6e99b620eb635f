"""The demo task in LIBERO's layout (dsrl/envs/demo_pi0.py): what the GPU check's loop runs Pi0 on.

Real components: the registry's env, the real tiny random-weight Pi0 policy with the LIBERO
robot transforms, the demo task underneath.
"""

from __future__ import annotations

import numpy as np
import pytest

from dsrl.base_policies.pi0.policy import Pi0Policy
from dsrl.envs import make_env
from dsrl.envs.demo import DemoEnv


def test_observations_have_liberos_layout_and_pi0_drives_the_demo_task():
    env = make_env("demo_pi0", image_size=32, policy_image_size=48, max_episode_steps=12)
    # The LIBERO preset's task kwargs are accepted (one task here).
    make_env("demo_pi0", suite="libero_90", task_id=57, init_state="random")
    assert env.spec.action_dim == 7 and env.spec.max_episode_steps == 12
    assert env.spec.observation_spec == {
        "pixels": ((32, 32, 3), np.uint8),
        "state": ((8,), np.float32),
    }
    obs = env.reset(seed=3)
    demo_obs = DemoEnv(image_size=32).reset(seed=3)
    np.testing.assert_array_equal(obs["pixels"], demo_obs["pixels"])
    np.testing.assert_array_equal(obs["state"][:4], demo_obs["state"])
    assert not obs["state"][4:].any()
    for key in ("agentview_image", "wrist_image"):
        assert obs[key].shape == (48, 48, 3) and obs[key].dtype == np.uint8
    assert not np.array_equal(obs["agentview_image"], obs["wrist_image"])  # two cameras
    assert obs["prompt"] == env.spec.prompt

    policy = Pi0Policy.from_checkpoint("random", "libero", variant="tiny", dtype="float32", seed=0)
    noise = np.random.default_rng(0).normal(size=(1, *policy.noise_shape)).astype(np.float32)
    batch = {k: (v if k == "prompt" else v[None]) for k, v in obs.items()}
    chunk = policy.sample_actions(batch, noise)[0]
    assert chunk.shape[-1] == 7
    steps, done = 0, False
    for action in chunk:
        obs, reward, terminated, truncated, info = env.step(action, render=False)
        steps += 1
        if terminated or truncated:
            done = True
            break
    # The demo agent moved (Pi0's first two action dims), and the episode ends on the demo's clock.
    assert not np.allclose(obs["state"][:2], demo_obs["state"][:2])
    while not done:
        obs, reward, terminated, truncated, info = env.step(np.zeros(7))
        steps += 1
        done = terminated or truncated
    assert steps <= 12 and isinstance(info["success"], bool)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(7))


def test_bad_options_and_actions_get_one_clear_error():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['camera_size'\]"):
        make_env("demo_pi0", camera_size=128)
    with pytest.raises(ValueError, match="multiple of 16"):
        make_env("demo_pi0", image_size=40)
    env = make_env("demo_pi0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(2))
