"""State-based envs: gymnasium MuJoCo (v5) and robosuite with robomimic's low-dim keys, run
through the ordinary rollout with the release's reward convention (env rewards summed over the
executed chunk)."""

from __future__ import annotations

import functools

import gymnasium
import numpy as np
import pytest

from dsrl.base_policies.flow_mlp import FlowMLPConfig, FlowMLPPolicy, init_params
from dsrl.envs import make_env
from dsrl.envs.vector import VectorEnv
from dsrl.steering import Steering, make_noise_param
from dsrl.training.rollout import run_episodes

CHUNK = 4


def random_flow_policy(state_dim: int, action_dim: int) -> FlowMLPPolicy:
    config = FlowMLPConfig(
        horizon=CHUNK,
        action_dim=action_dim,
        noise_dim=action_dim,
        state_dim=state_dim,
        hidden_dims=(16,),
        num_steps=2,
    )
    return FlowMLPPolicy(config, init_params(config, 0))


def test_gym_hopper_obs_and_rewards_match_gymnasium():
    env = make_env("gym", task="hopper", max_episode_steps=50)
    assert set(env.spec.observation_spec) == {"state", "policy_state"}  # no pixels
    assert env.spec.reward_convention == "env_sum" and env.spec.action_dim == 3
    obs = env.reset(seed=5)
    raw = gymnasium.make("Hopper-v5")
    raw_obs, _ = raw.reset(seed=5)
    np.testing.assert_allclose(obs["state"], raw_obs.astype(np.float32))
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (11,)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, 3)
        obs, reward, terminated, truncated, info = env.step(action)
        raw_obs, raw_reward, *_ = raw.step(action)
        assert reward == pytest.approx(raw_reward) and info["success"] is False
        np.testing.assert_allclose(obs["state"], raw_obs.astype(np.float32), rtol=1e-6)
    env.close()


@pytest.mark.parametrize("task,dims", [("walker2d", (17, 6)), ("halfcheetah", (17, 6))])
def test_gym_other_tasks_build(task, dims):
    env = make_env("gym", task=task)
    assert (env.spec.observation_spec["state"][0][0], env.spec.action_dim) == dims
    assert env.spec.max_episode_steps == 1000
    env.close()


def test_gym_rollout_reward_is_the_chunk_sum_and_agent_sees_state_only():
    envs = VectorEnv(
        [functools.partial(make_env, "gym", task="hopper", max_episode_steps=30)] * 2,
        mode="inline",
    )
    policy = random_flow_policy(11, 3)
    steering = Steering(policy, make_noise_param("full", policy.noise_shape, 1.5), CHUNK)
    source = steering.warmup_source(np.random.default_rng(0))
    episodes = run_episodes(envs, steering, source, [0, 1], discount=0.99)
    for episode in episodes:
        rewards = [t["rewards"] for t in episode.transitions]
        # The agent's reward per query is the env's reward summed over the executed chunk.
        assert sum(rewards) == pytest.approx(episode.env_return, rel=1e-5)
        assert episode.agent_return == pytest.approx(episode.env_return, rel=1e-5)
        assert episode.length <= 30 and not episode.success
        assert set(episode.transitions[0]["observations"]) == {"state"}
        masks = [t["masks"] for t in episode.transitions]
        # Only a fall (termination) is terminal; a timeout keeps bootstrapping.
        assert all(m == 1.0 for m in masks[:-1])
        assert episode.transitions[0]["discounts"] == pytest.approx(0.99**CHUNK)
    envs.close()


def test_robomimic_lift_keys_seeding_and_sparse_reward():
    env = make_env("robomimic", task="lift", max_episode_steps=12)
    # robot0_eef_pos 3 + robot0_eef_quat 4 + robot0_gripper_qpos 2 + object 10
    assert env.spec.observation_spec["state"][0] == (19,)
    assert env.spec.reward_convention == "env_sum" and env.spec.action_dim == 7
    first = env.reset(seed=3)["state"]
    np.testing.assert_array_equal(env.reset(seed=3)["state"], first)
    second = env.reset(seed=4)["state"]
    assert not np.array_equal(second, first)  # the cube moved
    raw = env._env._get_observations(force_update=True)
    keys = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object-state")
    np.testing.assert_allclose(second, np.concatenate([raw[k] for k in keys]), rtol=1e-6)
    _, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert (reward, terminated, truncated, info["success"]) == (-1.0, False, False, False)

    # Lift the cube well above the table: solved steps pay 0 (sparse 1 minus the offset 1),
    # and the episode goes on to its time limit (the release does not stop on success).
    sim, cube = env._env.sim, env._env.cube
    pose = np.array(sim.data.get_joint_qpos(cube.joints[0]))
    pose[2] += 0.15
    sim.data.set_joint_qpos(cube.joints[0], pose)
    sim.forward()
    _, reward, terminated, _, info = env.step(np.zeros(7))
    assert (reward, terminated, info["success"]) == (0.0, False, True)
    for _ in range(10):
        *_, truncated, _ = env.step(np.zeros(7))
    assert truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(7))
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task,dim,steps", [("can", 23, 300), ("square", 23, 400)])
def test_robomimic_can_square_obs(task, dim, steps):
    env = make_env("robomimic", task=task)
    assert env.spec.observation_spec["state"][0] == (dim,)
    assert env.spec.max_episode_steps == steps
    obs = env.reset(seed=0)
    assert obs["state"].shape == (dim,) and obs["policy_state"].dtype == np.float32
    env.close()


def test_bad_task_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown Gym task"):
        make_env("gym", task="ant")
    with pytest.raises(ValueError, match="unknown Robomimic task"):
        make_env("robomimic", task="transport")
