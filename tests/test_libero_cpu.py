"""The LIBERO CPU proof: the pick-and-place env, its scripted demonstrator and the shipped flow
MLP base policy (README, "DSRL on real LIBERO, on a CPU"). The learning test on this env steers
the shipped small Pi0 through the same launcher, loop and learner:
tests/test_libero_pi0_cpu.py::test_dsrl_lifts_the_band_pi0_on_real_libero."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsrl.base_policies.flow_mlp import LIBERO_ASSET_DIR, FlowMLPPolicy  # noqa: E402
from dsrl.envs.libero_scripted import POLICY_STATE_DIM, ScriptedPickPlace  # noqa: E402

# The shipped policy's params.npz, as made by scripts/pretrain_flow_mlp_libero.py (README). A new
# policy changes every figure in the README: re-measure them when this changes.
SHIPPED_SHA256 = "48b5bdb98016528714bbebef70b63d6093dfe6ef787f20f8d35d7b563170d88e"


def test_shipped_libero_policy_loads_and_a_damaged_checkpoint_is_refused(damaged_copy):
    recorded = (LIBERO_ASSET_DIR / "params.sha256").read_text().split()[0]
    assert recorded == SHIPPED_SHA256
    policy = FlowMLPPolicy.load_libero()
    assert policy.noise_shape == (16, 8) and policy.action_dim == 7
    assert policy.config.state_dim == POLICY_STATE_DIM
    assert policy.config.shared_noise  # one noise vector per chunk: the one 'repeat' steers
    chunk = policy.sample_actions(
        {"policy_state": np.zeros((2, POLICY_STATE_DIM), np.float32)},
        np.zeros((2, *policy.noise_shape), np.float32),
    )
    assert chunk.shape == (2, 16, 7) and np.all(np.isfinite(chunk))
    damaged = damaged_copy(LIBERO_ASSET_DIR, "params.npz")
    with pytest.raises(ValueError, match="sha256"):
        FlowMLPPolicy.load(damaged)


@pytest.mark.slow
def test_scripted_demonstrator_places_the_pudding_from_suite_initial_states():
    """The demonstrator behind the demos succeeds from the suite's fixed initial states (all 50
    were measured; 3 here to stay short), and the env keeps LIBERO's agent observations."""
    from dsrl.envs import make_env

    env = make_env("libero_pick_place", init_state=0, camera_size=64, max_episode_steps=160)
    try:
        assert env.spec.observation_spec["pixels"][0] == (64, 64, 3)
        assert env.spec.observation_spec["state"][0] == (8,)
        for index in (0, 17, 49):
            env.init_state = index
            obs = env.reset(seed=index)
            assert obs["policy_state"].shape == (POLICY_STATE_DIM,)
            assert obs["pixels"].std() > 5  # a real rendered image
            demonstrator = ScriptedPickPlace()
            terminated = truncated = False
            while not (terminated or truncated):
                action = demonstrator.act(obs["policy_state"])
                obs, _, terminated, truncated, _ = env.step(action, render=False)
            assert terminated, f"initial state {index}: no success within 160 steps"
    finally:
        env.close()


def test_scripted_dwell_holds_open_at_grasp_height_before_closing():
    """`dwell_steps` (the small Pi0's demonstrations): at grasp height the demonstrator holds
    still and open that many steps, then closes in place for `close_steps`, then lifts; with no
    dwell it closes at once (the flow MLP's demonstrations, unchanged)."""
    state = np.zeros(POLICY_STATE_DIM)
    state[2] = 0.05 + 0.015  # the gripper at grasp height right above the object
    state[5:8] = [0.0, 0.0, -0.015]  # object - eef
    state[8:11] = [0.2, 0.0, -0.1]
    for dwell in (0, 3):
        demonstrator = ScriptedPickPlace(dwell_steps=dwell, close_steps=5, phase=1)
        actions = np.array([demonstrator.act(state) for _ in range(dwell + 8)])
        gripper, lift = actions[:, 6], actions[:, 2] > 0.5
        assert (gripper[:dwell] == -1).all() and (gripper[dwell:] == 1).all()
        assert not lift[: dwell + 4].any() and lift[dwell + 4 :].all()
        assert np.abs(actions[: dwell + 4, :3]).max() < 1e-9  # no motion while holding


def _agent_obs_env(agent_obs: str):
    """The Pi0 preset's env (both cameras, Pi0's state), 20-step episodes, with this agent_obs."""
    from dsrl.envs.libero_scripted import LiberoPickPlaceEnv

    return LiberoPickPlaceEnv(
        init_state="sampler",
        camera_size=64,
        policy_image_size=64,
        render_wrist=True,
        pi0_state=True,
        agent_obs=agent_obs,
        max_episode_steps=20,
    )


def test_agent_obs_policy_state_gives_the_agent_the_policy_state_and_no_pixels():
    """`agent_obs="policy_state"`: the agent's spec and observation hold only "state", which is
    the base policy's own 11-d vector (object and basket relative to the gripper), while the
    cameras the base policy reads are still rendered on query steps and withheld on others. A
    misspelt choice is refused before the simulator is built."""
    from dsrl.envs.libero_scripted import LiberoPickPlaceEnv

    with pytest.raises(ValueError, match="agent_obs='pixels' is not one of"):
        LiberoPickPlaceEnv(agent_obs="pixels")
    env = _agent_obs_env("policy_state")
    try:
        assert env.spec.observation_spec == {"state": ((POLICY_STATE_DIM,), np.float32)}
        obs = env.reset(seed=3)
        assert "pixels" not in obs
        assert obs["state"].shape == (POLICY_STATE_DIM,)
        np.testing.assert_array_equal(obs["state"], obs["observation/state"])
        first, z0 = obs["agentview_image"].copy(), float(obs["state"][2])
        assert first.shape == (64, 64, 3) and first.std() > 0  # rendered for the base policy
        for _ in range(3):
            obs, *_ = env.step(np.array([0, 0, 1, 0, 0, 0, -1], np.float32), render=False)
        np.testing.assert_array_equal(obs["agentview_image"], first)  # skipped steps: no render
        assert obs["state"][2] > z0 + 0.005  # the agent's state follows the arm up
        obs, *_ = env.step(np.zeros(7, np.float32), render=True)
        assert not np.array_equal(obs["agentview_image"], first)  # the arm moved up
    finally:
        env.close()
    # Without pi0_state, a Pi0 base still reads the 8-d robot state, not the agent's new one.
    env = LiberoPickPlaceEnv(
        init_state="sampler",
        camera_size=64,
        policy_image_size=64,
        agent_obs="policy_state",
        max_episode_steps=20,
    )
    try:
        obs = env.reset(seed=3)
        assert obs["observation/state"].shape == (8,) and obs["state"].shape == (POLICY_STATE_DIM,)
    finally:
        env.close()


def test_agent_obs_robot_state_gives_the_agent_the_robot_state_alone():
    """`agent_obs="robot_state"`: the agent's spec and observation hold only the 8-d robot
    "state" (no pixels, nothing about the layout), identical at reset across layouts up to the
    arm's start, while the base policy still reads its own state and both cameras."""

    env = _agent_obs_env("robot_state")
    try:
        assert env.spec.observation_spec == {"state": ((8,), np.float32)}
        first = env.reset(seed=3)
        assert "pixels" not in first and first["state"].shape == (8,)
        assert first["observation/state"].shape == (POLICY_STATE_DIM,)  # the base's own state
        assert first["agentview_image"].std() > 0 and first["wrist_image"].std() > 0
        other = env.reset(seed=4)
        # Another layout: the policy's state (object poses) differs, the robot's barely does.
        assert np.abs(other["observation/state"] - first["observation/state"]).max() > 1e-3
        np.testing.assert_allclose(other["state"], first["state"], atol=0.01)
        for _ in range(3):
            obs, *_ = env.step(np.array([0, 0, 1, 0, 0, 0, -1], np.float32), render=False)
        assert obs["state"][2] > other["state"][2] + 0.005  # it follows the arm up
    finally:
        env.close()


def test_linger_steps_ends_a_failed_demo_soon_after_its_release():
    """`record_demo(linger_steps=N)` (make_pi0_libero.py --linger_steps): a demonstration whose
    grasp slips ends N steps after the demonstrator opens over the basket, where it would
    otherwise stand still to the step limit; everything before the cut is the same episode."""
    from dsrl.envs.libero_scripted import LiberoPickPlaceEnv, record_demo

    env = LiberoPickPlaceEnv(init_state="sampler", pi0_state=True, max_episode_steps=180)
    keys = {"state": "observation/state"}
    try:
        demo = dict(offset_x=(0.0, 0.0), offset_y=(0.05, 0.06), action_noise=0.1, keys=keys)
        _, full, full_ok, _ = record_demo(env, 5, **demo, render=False)
        frames, cut, cut_ok, _ = record_demo(env, 5, **demo, render=False, linger_steps=3)
    finally:
        env.close()
    assert not full_ok and not cut_ok and len(full) == 180
    assert 100 < len(cut) < 170 and len(frames["state"]) == len(cut)
    np.testing.assert_array_equal(cut, full[: len(cut)])
    assert (cut[-3:, 6] == -1).all() and (cut[:, 6] == 1).any()  # closed once, open at the end
    assert (full[len(cut) :, 6] == -1).all()  # what was cut only held the gripper open
