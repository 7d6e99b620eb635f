"""The Can CPU base policy: the scripted two-mode demonstrator on robosuite's PickPlaceCan (and its
lift-only path on Lift) and the shipped DDIM DiffusionMLP (docs/diffusion.md, "Can on a CPU").
No learning test yet: the robomimic_can_cpu preset did not hold the target on seed 0 (docs)."""

from __future__ import annotations

import numpy as np
import pytest

from dsrl.base_policies.diffusion import DiffusionMLPPolicy
from dsrl.presets.robomimic_can_cpu import CAN_ASSET_DIR

# The shipped policy's params.npz, as made by scripts/make_diffusion_can.py. A new policy changes
# every figure in docs/diffusion.md: re-measure them when this changes.
SHIPPED_SHA256 = "93018fd2ff05793f77e4f9c08b62c6243d93bfe68942e26fc2d7e7dae791dae0"


def test_shipped_can_policy_loads_and_a_damaged_checkpoint_is_refused(damaged_copy):
    recorded = (CAN_ASSET_DIR / "params.sha256").read_text().split()[0]
    assert recorded == SHIPPED_SHA256
    policy = DiffusionMLPPolicy.load(CAN_ASSET_DIR)
    # The release's Can network and sampler: 4-step chunks of 7-d actions, 8 DDIM steps.
    assert policy.noise_shape == (4, 7) and policy.config.state_dim == 23
    assert policy.config.sampler.ddim_steps == 8 and policy.normalization is not None
    chunk = policy.sample_actions(
        {"policy_state": np.zeros((2, 23), np.float32)}, np.zeros((2, 4, 7), np.float32)
    )
    assert chunk.shape == (2, 4, 7) and np.all(np.isfinite(chunk))
    damaged = damaged_copy(CAN_ASSET_DIR, "params.npz")
    with pytest.raises(ValueError, match="sha256"):
        DiffusionMLPPolicy.load(damaged)


def _scripted_episode(env, seed: int, grasp_height: float, **kwargs) -> tuple[bool, bool, int]:
    from dsrl.envs.robomimic_scripted import ScriptedPickPlace

    demonstrator = ScriptedPickPlace(grasp_height=grasp_height, **kwargs)
    obs = env.reset(seed=seed)
    for step in range(1, env.spec.max_episode_steps + 1):
        obs, reward, terminated, truncated, info = env.step(demonstrator.act(obs["state"]))
        if terminated or truncated:
            return info["success"], terminated, step
    raise AssertionError("the episode did not end at its time limit")


def test_scripted_demonstrator_places_the_can_or_misses_it_by_grasp_height():
    """The two modes behind the demos: closing on the can's body places it in its bin (the episode
    ends there with `end_on_success`), closing 7 cm above its centre grasps air."""
    from dsrl.envs.robomimic import RobomimicEnv

    env = RobomimicEnv("can", max_episode_steps=200, end_on_success=True)
    try:
        success, terminated, steps = _scripted_episode(env, seed=3, grasp_height=0.01)
        assert success and terminated and steps < 200
        success, terminated, steps = _scripted_episode(env, seed=3, grasp_height=0.07)
        assert not success and not terminated and steps == 200
    finally:
        env.close()


def test_scripted_demonstrator_misses_the_can_by_a_lateral_offset():
    """The lateral two-mode demos of `make_diffusion_can.py --miss_offset`: the same body-height
    grasp places the can when centred and misses it 4 cm off the can's axis, across the fingers."""
    from dsrl.envs.robomimic import RobomimicEnv

    env = RobomimicEnv("can", max_episode_steps=200, end_on_success=True)
    try:
        success, terminated, steps = _scripted_episode(env, 5, 0.01, grasp_offset=(0.0, 0.0))
        assert success and terminated and steps < 200
        success, terminated, steps = _scripted_episode(env, 5, 0.01, grasp_offset=(0.0, 0.04))
        assert not success and not terminated and steps == 200
    finally:
        env.close()


def test_scripted_demonstrator_lifts_the_cube_or_misses_it_by_grasp_height():
    """Its lift-only path on robosuite's Lift: grasping the cube's centre lifts it (in < 80 steps),
    closing 5 cm above it grasps air."""
    from dsrl.envs.robomimic import RobomimicEnv

    env = RobomimicEnv("lift", max_episode_steps=80, end_on_success=True)
    lift_only = {"place_xy": None, "hover": 0.1}
    try:
        success, terminated, steps = _scripted_episode(env, 1, grasp_height=0.0, **lift_only)
        assert success and terminated and steps < 80
        success, terminated, steps = _scripted_episode(env, 1, grasp_height=0.05, **lift_only)
        assert not success and steps == 80
    finally:
        env.close()


def test_agent_obs_robot_state_gives_the_agent_the_robot_alone():
    """agent_obs="robot_state": the agent's "state" is the robot's 9 entries of the base policy's
    vector (eef position, quaternion, fingers) on every step, so two placements look alike to the
    agent at reset while the base policy still sees where the can is."""
    from dsrl.envs.robomimic import ROBOT_DIM, RobomimicEnv

    env = RobomimicEnv(task="can", max_episode_steps=5, agent_obs="robot_state")
    full = RobomimicEnv(task="can", max_episode_steps=5)
    try:
        assert env.spec.observation_spec["state"][0] == (ROBOT_DIM,)
        assert env.spec.observation_spec["policy_state"][0] == (23,)
        starts = []
        for seed in (0, 1):
            obs, ref = env.reset(seed=seed), full.reset(seed=seed)
            np.testing.assert_array_equal(obs["policy_state"], ref["state"])
            np.testing.assert_array_equal(obs["state"], obs["policy_state"][:ROBOT_DIM])
            starts.append(obs)
        action = np.zeros(7, np.float32)
        action[0] = 0.5
        obs, *_ = env.step(action)
        assert obs["state"].shape == (ROBOT_DIM,)
        np.testing.assert_array_equal(obs["state"], obs["policy_state"][:ROBOT_DIM])
        # The can's pose differs between the placements; the robot's state at reset barely does.
        can_gap = np.abs(
            starts[0]["policy_state"][ROBOT_DIM:] - starts[1]["policy_state"][ROBOT_DIM:]
        )
        robot_gap = np.abs(starts[0]["state"] - starts[1]["state"])
        assert can_gap.max() > 10 * robot_gap.max()
    finally:
        env.close()
        full.close()
    with pytest.raises(ValueError, match="agent_obs='pixels'.*robot_state"):
        RobomimicEnv(task="can", agent_obs="pixels")
