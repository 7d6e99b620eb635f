"""DemoEnv: the embedded pixel task the demo and the learning tests run on."""

import dataclasses

import numpy as np
import pytest

from dsrl.envs.base import Env
from dsrl.envs.demo import (
    LEFT,
    RIGHT,
    DemoEnv,
    DemoEnvConfig,
    min_steps_to_goal,
    scripted_action,
)

QUERY_FREQ = 8  # the recommended demo preset


def _rollout(env, seed, actions):
    out = [env.reset(seed)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return out


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return np.array_equal(a, b)


def test_is_an_env_and_observations_match_spec():
    for size in (32, 64):
        env = DemoEnv(image_size=size)
        assert isinstance(env, Env)
        obs = env.reset(0)
        for key, (shape, dtype) in env.spec.observation_spec.items():
            assert obs[key].shape == shape and obs[key].dtype == dtype, key
        assert obs["pixels"].shape == (size, size, 3)
        assert obs["policy_state"].dtype == np.float32
        assert env.spec.action_dim == 2 and env.spec.max_reward == 1.0


def test_seeded_reset_is_deterministic_and_seeds_differ():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(30, 2))
    a, b = DemoEnv(), DemoEnv()
    assert _equal(_rollout(a, 7, actions), _rollout(b, 7, actions))
    starts = {tuple(DemoEnv().reset(s)["state"][:2]) for s in range(20)}
    cues = {(a.reset(s), a.state.cue)[1] for s in range(20)}
    assert len(starts) == 20 and cues == {LEFT, RIGHT}


def _with_cue(env, cue):
    return env.set_state(dataclasses.replace(env.state, cue=cue), render=True)


def test_cue_is_visible_in_pixels_only():
    env = DemoEnv()
    env.reset(3)
    left, right = _with_cue(env, LEFT), _with_cue(env, RIGHT)
    changed_rows = np.nonzero(np.any(left["pixels"] != right["pixels"], axis=(1, 2)))[0]
    # The two cues render differently, and only in the cue strip at the top of the image.
    assert changed_rows.size > 0 and changed_rows.max() < 4
    # The base policy's and the agent's low-dim inputs carry no cue.
    np.testing.assert_array_equal(left["policy_state"], right["policy_state"])
    np.testing.assert_array_equal(left["state"], right["state"])
    np.testing.assert_array_equal(left["policy_state"], env.state.position.astype(np.float32))


def test_delayed_cue_is_grey_until_its_step():
    env = DemoEnv(cue_visible_from_step=5)
    env.reset(0)
    hidden_left = _with_cue(env, LEFT)["pixels"].copy()
    hidden_right = _with_cue(env, RIGHT)["pixels"]
    np.testing.assert_array_equal(hidden_left[:3], hidden_right[:3])
    for _ in range(5):
        obs = env.step(np.zeros(2))[0]
    assert not np.array_equal(obs["pixels"][:3], hidden_left[:3])


def test_success_needs_several_queries():
    """No policy can reach a goal within two chunks of QUERY_FREQ steps: the first query's noise
    cannot decide the episode by itself."""
    config = DemoEnvConfig()
    assert min_steps_to_goal(config) > 2 * QUERY_FREQ
    env = DemoEnv(config)
    for seed in range(50):
        env.reset(seed)
        goal = np.asarray(config.left_goal if env.state.cue == LEFT else config.right_goal)
        for _ in range(config.max_episode_steps):
            direction = goal - env.state.position  # straight line at full speed
            _, reward, terminated, _, info = env.step(direction / np.linalg.norm(direction))
            if terminated:
                break
        assert info["success"] and reward == 1.0
        assert env.state.t > 2 * QUERY_FREQ


def test_demonstrator_reaches_either_goal_and_wrong_goal_traps():
    config = DemoEnvConfig()
    env = DemoEnv(config)
    outcomes = {}
    for side in (LEFT, RIGHT):
        env.reset(1)
        for _ in range(config.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(
                scripted_action(env.state.position, side, config), render=False
            )
            if terminated or truncated:
                break
        outcomes[side] = (info["success"], info["trapped"], reward, terminated, truncated)
    cue = env.state.cue
    # The paying side ends the episode with reward 1; the other one traps until the time limit.
    assert outcomes[cue] == (True, False, 1.0, True, False)
    assert outcomes[1 - cue] == (False, True, 0.0, False, True)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_trapped_agent_cannot_leave():
    env = DemoEnv()
    env.reset(2)
    other = env.config.right_goal if env.state.cue == LEFT else env.config.left_goal
    env.set_state(dataclasses.replace(env.state, position=np.asarray(other, float)))
    _, _, _, _, info = env.step(np.zeros(2))
    assert info["trapped"]
    before = env.state.position.copy()
    obs, reward, terminated, _, _ = env.step(np.array([0.0, -1.0]))
    np.testing.assert_array_equal(env.state.position, before)
    assert reward == 0.0 and not terminated and np.all(obs["state"][2:] == 0)


def test_render_false_skips_drawing_but_state_is_fresh():
    env = DemoEnv()
    reset_obs = env.reset(0)
    first = reset_obs["pixels"].copy()
    obs = env.step(np.array([1.0, 0.0]), render=False)[0]
    np.testing.assert_array_equal(obs["pixels"], first)
    assert obs["state"][0] > reset_obs["state"][0]
    env.reset(0)
    obs = env.step(np.array([1.0, 0.0]), render=True)[0]
    assert not np.array_equal(obs["pixels"], first)


def test_action_norm_is_clipped_to_one_step():
    env = DemoEnv()
    start = env.reset(0)["policy_state"]
    obs = env.step(np.array([30.0, 40.0]))[0]
    np.testing.assert_allclose(
        np.linalg.norm(obs["policy_state"] - start), env.config.max_step, rtol=1e-5
    )


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match="image_sizee"):
        DemoEnv(image_sizee=32)
    with pytest.raises(ValueError, match="multiple of 16"):
        DemoEnv(image_size=30)
    env = DemoEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.zeros((8, 2)))
