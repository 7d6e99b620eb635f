"""The flow-matching base policy and its shipped demo checkpoint."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.base_policies.base import BasePolicy
from dsrl.base_policies.flow_mlp import (
    DEMO_ASSET_DIR,
    FlowMLPConfig,
    FlowMLPPolicy,
    VelocityField,
    flow_matching_loss,
    init_params,
)
from dsrl.envs.demo import DemoEnv, evaluate_noise_strategy
from dsrl.steering import make_noise_param

QUERY_FREQ = 8


@pytest.fixture(scope="module")
def demo_policy():
    return FlowMLPPolicy.load_demo()


def _random_policy(seed=0, **overrides):
    config = FlowMLPConfig(hidden_dims=(32, 32), **overrides)
    params = init_params(config, seed)
    # The output layer starts at zero; perturb it so the field depends on its inputs.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return FlowMLPPolicy(config, jax.tree_util.tree_unflatten(treedef, leaves))


def _obs(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {"policy_state": rng.uniform(-1, 1, (batch, 2)).astype(np.float32)}


def test_implements_base_policy_and_is_deterministic_given_noise():
    policy = _random_policy()
    assert isinstance(policy, BasePolicy)
    rng = np.random.default_rng(0)
    obs, noise = _obs(4), rng.standard_normal((4, 8, 2)).astype(np.float32)
    a = policy.sample_actions(obs, noise)
    assert a.shape == (4, 8, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, policy.sample_actions(obs, noise))
    other = policy.sample_actions(obs, rng.standard_normal((4, 8, 2)).astype(np.float32))
    assert np.all(np.abs(other - a).max(axis=(1, 2)) > 1e-3)


def test_batched_equals_one_at_a_time():
    policy = _random_policy()
    obs, noise = _obs(5, 1), np.random.default_rng(1).standard_normal((5, 8, 2))
    batched = policy.sample_actions(obs, noise)
    for i in range(5):
        single = policy.sample_actions(
            {"policy_state": obs["policy_state"][i : i + 1]}, noise[i : i + 1]
        )
        np.testing.assert_allclose(single[0], batched[i], rtol=1e-5, atol=1e-5)


def test_euler_runs_from_noise_at_t1_to_actions_at_t0():
    """Pi0's convention: x_1 is the noise and one Euler step is x_0 = x_1 - v(x_1, t=1)."""
    policy = _random_policy(num_steps=1)
    obs, noise = _obs(3), np.random.default_rng(2).standard_normal((3, 8, 2)).astype(np.float32)
    velocity = VelocityField(policy.config).apply(
        {"params": policy.params}, noise, jnp.ones(3), obs["policy_state"]
    )
    np.testing.assert_allclose(
        policy.sample_actions(obs, noise), noise - np.asarray(velocity), rtol=1e-5, atol=1e-5
    )


def test_padded_noise_dims_are_read_but_not_returned():
    policy = _random_policy(noise_dim=4)
    assert policy.noise_shape == (8, 4) and policy.action_dim == 2
    obs, noise = _obs(2), np.random.default_rng(3).standard_normal((2, 8, 4)).astype(np.float32)
    a = policy.sample_actions(obs, noise)
    assert a.shape == (2, 8, 2)
    changed = noise.copy()
    changed[..., 2:] += 1.0  # as with Pi0, padding noise still moves the real action dims
    assert not np.allclose(policy.sample_actions(obs, changed), a)


def test_jax_sampler_runs_inside_jit_and_matches(demo_policy):
    obs, noise = _obs(6, 4), np.random.default_rng(4).standard_normal((6, 8, 2)).astype(np.float32)

    @jax.jit
    def inside_an_update(params, state, noise):
        return demo_policy.sample_actions_jax(params, {"policy_state": state}, noise)

    got = inside_an_update(demo_policy.params, obs["policy_state"], noise)
    np.testing.assert_allclose(
        np.asarray(got), demo_policy.sample_actions(obs, noise), rtol=1e-5, atol=1e-5
    )


def test_flow_matching_loss_trains_towards_the_data():
    """A few hundred steps of the pretraining loss fit a single-mode dataset."""
    import optax

    config = FlowMLPConfig(hidden_dims=(64, 64), num_steps=10)
    params = init_params(config, 0)
    states = np.zeros((256, 2), np.float32)
    target = np.tile(np.array([0.5, -0.25], np.float32), (256, 8, 1))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, rng):
        loss, grads = jax.value_and_grad(
            lambda p: flow_matching_loss(config, p, states, target, rng)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.PRNGKey(0)
    for _ in range(250):
        key, sub = jax.random.split(key)
        params, opt_state, _ = step(params, opt_state, sub)
    policy = FlowMLPPolicy(config, params)
    noise = np.random.default_rng(5).standard_normal((64, 8, 2)).astype(np.float32)
    out = policy.sample_actions({"policy_state": states[:64]}, noise)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), [0.5, -0.25], atol=0.1)


def test_save_load_round_trip(tmp_path):
    policy = _random_policy(noise_dim=3, num_steps=4)
    policy.save(tmp_path / "flow")
    loaded = FlowMLPPolicy.load(tmp_path / "flow")
    assert loaded.config == policy.config
    obs, noise = _obs(3), np.random.default_rng(6).standard_normal((3, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        loaded.sample_actions(obs, noise), policy.sample_actions(obs, noise)
    )


def test_shared_noise_reads_one_noise_vector_per_chunk(tmp_path):
    """shared_noise: the chunk depends on the noise's first row only (the one 'repeat' steering
    sets), and the setting survives save/load; without it every row counts."""
    rng = np.random.default_rng(8)
    noise = rng.standard_normal((3, 8, 2)).astype(np.float32)
    other_rows = noise.copy()
    other_rows[:, 1:] = rng.standard_normal((3, 7, 2))
    tiled = np.repeat(noise[:, :1], 8, axis=1)
    shared = _random_policy(shared_noise=True)
    shared.save(tmp_path / "shared")
    loaded = FlowMLPPolicy.load(tmp_path / "shared")
    assert loaded.config.shared_noise
    out = loaded.sample_actions(_obs(3), noise)
    np.testing.assert_array_equal(loaded.sample_actions(_obs(3), other_rows), out)
    np.testing.assert_array_equal(loaded.sample_actions(_obs(3), tiled), out)
    per_step = _random_policy(shared_noise=False)
    assert not np.allclose(
        per_step.sample_actions(_obs(3), other_rows), per_step.sample_actions(_obs(3), noise)
    )


def test_bad_inputs_give_clear_errors(tmp_path):
    policy = _random_policy()
    with pytest.raises(ValueError, match=r"\(B, 8, 2\)"):
        policy.sample_actions(_obs(2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="batch mismatch"):
        policy.sample_actions(_obs(2), np.zeros((3, 8, 2)))
    with pytest.raises(KeyError, match="policy_state"):
        policy.sample_actions({"state": np.zeros((2, 4))}, np.zeros((2, 8, 2)))
    with pytest.raises(ValueError, match="leading axis"):
        policy.sample_actions({"policy_state": np.zeros(2)}, np.zeros((1, 8, 2)))
    with pytest.raises(FileNotFoundError, match="config.json"):
        FlowMLPPolicy.load(tmp_path)
    with pytest.raises(ValueError, match="pad"):
        FlowMLPConfig(noise_dim=1)
    # Params that do not fit the config are refused at load time.
    policy.save(tmp_path / "bad")
    wider = dataclasses.replace(policy.config, hidden_dims=(16, 16))
    (tmp_path / "bad" / "config.json").write_text(json.dumps(wider.to_json()))
    with pytest.raises(ValueError, match="does not match"):
        FlowMLPPolicy.load(tmp_path / "bad")


# The shipped checkpoint ------------------------------------------------------------------------


def test_shipped_asset_is_small_and_loads(demo_policy):
    size = sum(f.stat().st_size for f in DEMO_ASSET_DIR.iterdir())
    assert size < 1_000_000
    env = DemoEnv()
    assert demo_policy.action_dim == env.spec.action_dim
    assert demo_policy.noise_shape[0] >= QUERY_FREQ


SEEDS = list(range(100_000, 100_200))


def _iid(rng, n):
    return rng.standard_normal((n, 8, 2)).astype(np.float32)


def test_base_policy_picks_a_goal_by_chance(demo_policy):
    """With i.i.d. noise the base policy cannot see the cue: it succeeds about half the time."""
    success = evaluate_noise_strategy(demo_policy, SEEDS, _iid, QUERY_FREQ)
    assert 0.3 <= success.mean() <= 0.7


def test_steering_the_noise_can_solve_the_task(demo_policy):
    """An oracle that picks the best of 16 noises per query succeeds almost always."""
    success = evaluate_noise_strategy(demo_policy, SEEDS, _iid, QUERY_FREQ, oracle_candidates=16)
    assert success.mean() >= 0.9


def test_one_repeat_action_per_cue_solves_the_task(demo_policy):
    """In the recommended preset (repeat noise, |action| <= 1) a cue-dependent constant agent
    action exists that succeeds: the steering policy the RL agent has to find."""
    param = make_noise_param("repeat", demo_policy.noise_shape, action_magnitude=1.0)
    successes = []
    for seed in SEEDS[:100]:
        env = DemoEnv()
        obs = env.reset(seed)
        action = np.array([[1.0 if env.state.cue == 1 else -1.0, 0.0]], np.float32)
        done = False
        while not done:
            chunk = demo_policy.sample_actions(
                {"policy_state": obs["policy_state"][None]}, param.to_noise(action)
            )[0]
            for a in chunk[:QUERY_FREQ]:
                obs, _, terminated, truncated, info = env.step(a, render=False)
                done = terminated or truncated
                if done:
                    break
        successes.append(info["success"])
    assert np.mean(successes) >= 0.9


def test_first_query_does_not_decide_the_episode(demo_policy):
    """From the same start and the same first-query noise, later noises still reach either goal:
    the critic has to assign credit across queries."""
    rng = np.random.default_rng(9)
    env = DemoEnv()
    first = rng.standard_normal((1, 8, 2)).astype(np.float32)
    outcomes = set()
    for _ in range(24):
        obs = env.reset(123)
        noise, done = first, False
        while not done:
            chunk = demo_policy.sample_actions({"policy_state": obs["policy_state"][None]}, noise)
            for a in chunk[0, :QUERY_FREQ]:
                obs, _, terminated, truncated, info = env.step(a, render=False)
                done = terminated or truncated
                if done:
                    break
            noise = rng.standard_normal((1, 8, 2)).astype(np.float32)
        outcomes.add(bool(info["success"]))
    assert outcomes == {True, False}
