"""openpi's flow-matching training loss for Pi0 / Pi0.5, on our parameter tree.

Conventions as openpi's `compute_loss`: t = 1 is noise, t = 0 data; t ~ Beta(1.5, 1) * 0.999 +
0.001 (never exactly 0, so the target is never the data itself); x_t = t * noise + (1 - t) *
actions; the velocity target is u_t = noise - actions; the loss is the squared error averaged over
the action dims only, one value per (batch, horizon) element.

The forward pass is the inference one (`encode_prefix` + `gemma.suffix_forward` with one noise per
observation) rather than openpi's single joint pass over prefix + suffix: the prefix never attends
to the suffix, so the two are the same function, and gradients flow through the KV cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dsrl.base_policies.pi0 import gemma
from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.training import lora

Params = dict[str, Any]
BETA_A, BETA_B = 1.5, 1.0  # openpi's time distribution Beta(1.5, 1)


def predict_velocity(
    config: Pi0Config,
    params: Params,
    obs: pi0_model.Observation | pi0_model.PrefixCache,
    x_t: jax.Array,
    time: jax.Array,
    encoded: tuple[str, ...] | None = None,
) -> jax.Array:
    """The model's velocity v_t for noisy actions x_t (B, H, A) at per-sample times (B,).

    `obs`: an Observation, or its prefix already encoded (a `PrefixCache` from
    `model.encode_prefix` with these params: exact, and what expert-only training on a fixed
    dataset reuses, see `training.prefix_cache`). `encoded`: the cameras to run through SigLIP
    (default all of `config.image_keys`; masked ones are excluded by their mask, as openpi).
    Leaving out a camera masked in the whole batch is exact and saves its SigLIP pass. LoRA
    leaves, if present, are merged in first.
    """
    params = lora.merge(params)
    expert = config.action_expert
    if isinstance(obs, pi0_model.PrefixCache):
        cache = obs
    else:
        encoded = tuple(config.image_keys) if encoded is None else encoded
        cache = pi0_model.encode_prefix(config, params, obs, encoded)
    positions = jnp.sum(cache.mask, axis=-1, dtype=jnp.int32)[:, None] + jnp.arange(
        config.suffix_len, dtype=jnp.int32
    )
    time_emb = pi0_model.posemb_sincos(time, expert.width, min_period=4e-3, max_period=4.0)
    dense = pi0_model._dense
    action_tokens = dense(params["action_in_proj"], x_t)  # (B, H, D1)
    if config.pi05:
        cond = jax.nn.swish(dense(params["time_mlp_in"], time_emb))
        cond = jax.nn.swish(dense(params["time_mlp_out"], cond))[:, None, None]  # (B, 1, 1, D1)
        tokens = action_tokens
    else:
        cond = None
        time_tokens = jnp.broadcast_to(time_emb[:, None], action_tokens.shape)
        h = dense(params["action_time_mlp_in"], jnp.concatenate([action_tokens, time_tokens], -1))
        h = dense(params["action_time_mlp_out"], jax.nn.swish(h))
        state_token = dense(params["state_proj"], cache.state)[:, None]
        tokens = jnp.concatenate([state_token, h], axis=1)
    out = gemma.suffix_forward(
        params["PaliGemma"]["llm"],
        expert,
        tokens[:, None],  # one noise per observation: K = 1
        (cache.k, cache.v),
        cache.mask,
        pi0_model.suffix_attention(config),
        positions,
        cond,
        config.dtype,
        remat=config.remat,
    )
    return dense(params["action_out_proj"], out[:, 0, -config.action_horizon :])


def flow_matching_loss(
    config: Pi0Config,
    params: Params,
    obs: pi0_model.Observation | pi0_model.PrefixCache,
    actions: jax.Array,
    noise: jax.Array,
    time: jax.Array,
    encoded: tuple[str, ...] | None = None,
) -> jax.Array:
    """openpi's `compute_loss` for given noise (B, H, A) and time (B,): float32 (B, H). With
    `config.shared_noise` the noise's row 0 is used for every step (as sampling does)."""
    actions = jnp.asarray(actions, jnp.float32)
    if config.shared_noise:
        noise = jnp.broadcast_to(noise[:, :1], noise.shape)
    t = time[:, None, None]
    x_t = t * noise + (1 - t) * actions
    u_t = noise - actions
    v_t = predict_velocity(config, params, obs, x_t, time, encoded)
    return jnp.mean(jnp.square(v_t - u_t), axis=-1)


def sample_noise_and_time(rng: jax.Array, actions_shape: tuple[int, ...]):
    """noise (B, H, A) and time (B,) from `rng` exactly as openpi draws them: the key is split in
    three (image augmentation, noise, time), so the same key gives openpi's noise and time."""
    _, noise_rng, time_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, actions_shape)
    time = jax.random.beta(time_rng, BETA_A, BETA_B, actions_shape[:-2]) * 0.999 + 0.001
    return noise, time


def augment_images(rng: jax.Array, obs: pi0_model.Observation) -> pi0_model.Observation:
    """openpi's training-time image augmentation (`preprocess_observation(..., train=True)`),
    with the augmax release openpi locks (0.4.1): every camera whose name has no "wrist" is
    cropped to 95 % at a random offset, resized back and rotated by up to 5 degrees; every camera
    then gets augmax's ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5) with its other
    defaults. Each example draws from `rng` split over the batch, the same split for every
    camera, as openpi does. Images stay in [-1, 1]; masks, state and prompt are unchanged."""
    import augmax  # only training with augmentation needs it

    images = {}
    for key, image in obs.images.items():
        unit = image / 2.0 + 0.5  # augmax works on [0, 1]
        ops = []
        if "wrist" not in key:
            height, width = unit.shape[1:3]
            ops += [
                augmax.RandomCrop(int(width * 0.95), int(height * 0.95)),
                augmax.Resize(width, height),
                augmax.Rotate((-5, 5)),
            ]
        ops.append(augmax.ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5))
        per_example = jax.random.split(rng, unit.shape[0])
        images[key] = jax.vmap(augmax.Chain(*ops))(per_example, unit) * 2.0 - 1.0
    return dataclasses.replace(obs, images=images)


def compute_loss(
    config: Pi0Config,
    params: Params,
    rng: jax.Array,
    obs: pi0_model.Observation | pi0_model.PrefixCache,
    actions: jax.Array,
    encoded: tuple[str, ...] | None = None,
    augment: bool = False,
) -> jax.Array:
    """openpi's `compute_loss(rng, observation, actions, train=augment)`: (B, H). The key's
    first third augments the images (`augment_images`, openpi's train=True), the other two draw
    the noise and time, so one key gives openpi's loss with or without augmentation."""
    if augment:
        if isinstance(obs, pi0_model.PrefixCache):
            raise ValueError(
                "image augmentation changes the prefix: it cannot train on a cached prefix "
                "(drop --cache_prefix or --augment)"
            )
        obs = augment_images(jax.random.split(rng, 3)[0], obs)
    noise, time = sample_noise_and_time(rng, actions.shape)
    return flow_matching_loss(config, params, obs, actions, noise, time, encoded)
