"""State-based DSRL: a learner whose observation spec has no "pixels" builds MLP-only networks
(the authors' Gym/Robomimic release) through the same PixelSACLearner / NoiseAliasingLearner."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.agents import PixelSACLearner
from dsrl.agents.noise_aliasing import NoiseAliasingConfig, NoiseAliasingLearner
from dsrl.agents.pixel_sac import PixelSACConfig
from dsrl.base_policies.base import JaxBasePolicy
from dsrl.steering import make_noise_param

STATE_DIM, HORIZON, ACTION_DIM = 11, 4, 3
SPEC = {"state": ((STATE_DIM,), np.float32)}


def state_config(cls=PixelSACConfig, **overrides):
    values = dict(
        hidden_dims=(32, 32, 32),
        activation="tanh",
        actor_layer_norm=True,
        num_qs=2,
        critic_reduction="min",
        backup_entropy=True,
        target_entropy=0.0,
    )
    return cls(**{**values, **overrides})


def batches(rng, k, b, latent_dim, chunk=None):
    def obs():
        return {
            "state": rng.standard_normal((k, b, STATE_DIM)).astype(np.float32),
            "policy_state": rng.standard_normal((k, b, STATE_DIM)).astype(np.float32),
        }

    out = {
        "observations": obs(),
        "next_observations": obs(),
        "latents": rng.uniform(-1, 1, (k, b, latent_dim)).astype(np.float32),
        "rewards": rng.standard_normal((k, b)).astype(np.float32),
        "masks": np.ones((k, b), np.float32),
        "discounts": np.full((k, b), 0.99**4, np.float32),
    }
    if chunk is not None:
        out["action_chunks"] = rng.uniform(-1, 1, (k, b, *chunk)).astype(np.float32)
    return out


def module_names(params) -> set[str]:
    return {
        str(getattr(p, "key", p))
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
        for p in path
    }


@pytest.mark.parametrize("sharing", ["separate", "shared"])
def test_state_sac_learner_is_mlp_only_and_learns(sharing):
    learner = PixelSACLearner.create(0, SPEC, 12, state_config(encoder_sharing=sharing))
    assert not learner.has_pixels
    names = module_names((learner.critic.params, learner.actor.params))
    # No conv encoder and no bottleneck: MLPs (Dense + LayerNorm) on the raw state only.
    assert not {n for n in names if "Conv" in n or "encoder" in n or "bottleneck" in n}
    kernel = learner.critic.params["network"]["heads"]["MLP_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (2, 12 + STATE_DIM, 32)  # [latent, state] -> hidden, per head
    actor_params = learner.actor.params.get("network", learner.actor.params)  # "shared": no input
    assert "LayerNorm_0" in actor_params["MLP_0"]

    rng = np.random.default_rng(0)
    before = jax.tree.map(np.asarray, learner.critic.params)
    for _ in range(2):
        learner, metrics = learner.update(batches(rng, 3, 16, 12))
    assert np.isfinite(metrics["critic_loss"]) and np.isfinite(metrics["actor_loss"])
    assert int(learner.critic.step) == 6
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, learner.critic.params)
    assert all(jax.tree.leaves(changed))

    one, learner = learner.sample_latents({"state": np.zeros(STATE_DIM, np.float32)})
    assert one.shape == (12,) and np.all(np.abs(one) <= 1.0)
    many = learner.mode_latents({"state": np.zeros((5, STATE_DIM), np.float32)})
    assert many.shape == (5, 12)


def test_actor_mean_reg_holds_the_actors_pre_tanh_mean_back():
    obs = {"state": np.random.default_rng(2).standard_normal((64, STATE_DIM)).astype(np.float32)}
    norms = {}
    for reg in (0.0, 1.0):
        config = state_config(actor_mean_reg=reg, actor_lr=3e-3, critic_lr=3e-3)
        learner = PixelSACLearner.create(0, SPEC, 12, config)
        rng = np.random.default_rng(0)  # the same batches for both
        for _ in range(6):
            data = batches(rng, 10, 32, 12)
            data["rewards"] = data["latents"].sum(-1)  # the critic learns: larger latents pay
            learner, metrics = learner.update(data)
        assert np.isfinite(metrics["actor_loss"])
        norms[reg] = float(np.linalg.norm(np.asarray(learner.policy(obs).loc), axis=-1).mean())
    # Same seed and data: only the regularizer differs, and it pulls the mean towards 0.
    assert norms[1.0] < 0.75 * norms[0.0], norms
    with pytest.raises(ValueError, match="actor_mean_reg must be a finite number >= 0"):
        state_config(actor_mean_reg=-1.0)


def test_advantage_weighted_actor_moves_towards_better_tried_latents_not_past_them():
    """The critic pays for larger latents (Q = 2 * sum(z)), but every latent tried lies in
    [-0.5, 0.5]. SAC's actor climbs the critic's extrapolation to the box's corner; the
    advantage-weighted one moves towards the better tried latents and stays among them."""
    obs = {"state": np.random.default_rng(2).standard_normal((64, STATE_DIM)).astype(np.float32)}
    modes = {}
    for beta in (0.0, 0.3):
        config = state_config(
            actor_awr_beta=beta,
            actor_awr_std=0.4,
            actor_lr=3e-3,
            critic_lr=3e-3,
            init_temperature=0.01,
        )
        learner = PixelSACLearner.create(0, SPEC, 4, config)
        rng = np.random.default_rng(0)  # the same batches for both
        for _ in range(20):
            data = batches(rng, 10, 64, 4)
            data["latents"] = (0.5 * data["latents"]).astype(np.float32)
            data["rewards"] = 2.0 * data["latents"].sum(-1)
            data["masks"][:] = 0.0
            learner, metrics = learner.update(data)
        assert np.isfinite(metrics["actor_loss"])
        modes[beta] = learner.mode_latents(obs)
        if beta:  # its exploration is the configured spread, not a learnt one
            np.testing.assert_allclose(np.asarray(learner.policy(obs).scale), 0.4)
    assert modes[0.0].mean() > 0.8, modes[0.0].mean()  # SAC: near the +1 corner, never tried
    assert modes[0.3].mean() > 0.05, modes[0.3].mean()  # towards the better tried latents
    assert np.abs(modes[0.3]).max() < 0.6, np.abs(modes[0.3]).max()  # and among them
    assert float(np.max(metrics["awr_weight_max"])) <= 100.0 * (1 + 1e-5)  # the cap
    with pytest.raises(ValueError, match="actor_awr_beta must be a finite number >= 0"):
        state_config(actor_awr_beta=-1.0)
    with pytest.raises(ValueError, match="actor_awr_std must be a finite number > 0"):
        state_config(actor_awr_beta=1.0, actor_awr_std=0.0)
    with pytest.raises(ValueError, match="use it with --algorithm dsrl_sac"):
        state_config(NoiseAliasingConfig, actor_awr_beta=1.0)


def test_activation_option_changes_the_networks_function():
    obs = {"state": np.random.default_rng(1).standard_normal((4, STATE_DIM)).astype(np.float32)}
    tanh = PixelSACLearner.create(0, SPEC, 6, state_config())
    relu = PixelSACLearner.create(0, SPEC, 6, state_config(activation="relu"))
    # Same seed, same parameters; only the hidden activation differs.
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, tanh.actor.params, relu.actor.params)))
    assert not np.allclose(np.asarray(tanh.policy(obs).loc), np.asarray(relu.policy(obs).loc))
    with pytest.raises(ValueError, match="activation must be one of"):
        state_config(activation="swish2")


def test_state_spec_errors_are_clear():
    with pytest.raises(ValueError, match="no 'state' key"):
        PixelSACLearner.create(0, {"pixels": ((8, 8, 3), np.uint8)}, 4, state_config())
    with pytest.raises(ValueError, match="state of d >= 1"):
        PixelSACLearner.create(0, {"state": ((0,), np.float32)}, 4, state_config())
    learner = PixelSACLearner.create(0, SPEC, 4, state_config())
    with pytest.raises(ValueError, match="do not match"):
        learner.mode_latents({"state": np.zeros((2, STATE_DIM + 1), np.float32)})


def linear_policy() -> JaxBasePolicy:
    def apply_fn(params, obs, noise):
        return params["scale"] * noise + obs["policy_state"][:, None, :ACTION_DIM]

    return JaxBasePolicy(
        apply_fn=apply_fn,
        params={"scale": jnp.asarray(0.5)},
        observation_spec={"policy_state": ((STATE_DIM,), np.float32)},
        noise_shape=(HORIZON, ACTION_DIM),
        action_dim=ACTION_DIM,
    )


@pytest.mark.parametrize("qw_encoder", ["separate", "shared"])
def test_state_na_learner_runs_its_noise_critic_steps(qw_encoder):
    noise_param = make_noise_param("full", (HORIZON, ACTION_DIM), 1.5)
    cfg = state_config(
        NoiseAliasingConfig, noise_critic_encoder=qw_encoder, utd=20, noise_critic_grad_steps=10
    )
    learner = NoiseAliasingLearner.create(
        0, SPEC, noise_param.latent_dim, cfg, base_policy=linear_policy(), noise_param=noise_param
    )
    names = module_names((learner.action_critic.params, learner.noise_critic.params))
    assert not {n for n in names if "Conv" in n or "bottleneck" in n}
    rng = np.random.default_rng(0)
    qw_before = jax.tree.map(np.asarray, learner.noise_critic.params)
    learner, metrics = learner.update(batches(rng, 4, 8, noise_param.latent_dim, (HORIZON, 3)))
    assert int(learner.action_critic.step) == 4
    # The release's ratio: 10 noise-critic steps per 20 critic steps -> 2 for a block of 4.
    assert int(learner.noise_critic.step) == 2
    assert all(np.isfinite(v) for v in metrics.values())
    moved = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), qw_before, learner.noise_critic.params
    )
    assert all(jax.tree.leaves(moved))


def test_an_image_under_another_key_is_not_silently_ignored():
    spec = {"image": ((16, 16, 3), np.uint8), "state": ((3,), np.float32)}
    with pytest.raises(ValueError, match="no 'pixels' key but image"):
        PixelSACLearner.create(0, spec, 4, state_config())
