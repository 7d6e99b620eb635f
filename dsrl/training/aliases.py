"""DSRL-NA's stored aliases: K extra (latent, chunk) pairs per query, from the query's own
base-policy call.

At each query the loop draws K latents z_k ~ N(0, I) per env in the agent's latent space, lifts
them to noise with the steering and asks the base policy for their chunks in the SAME call as the
executed chunk. Pi0 encodes each observation's prefix once and integrates the 1 + K flows as one
batch against it (`sample_actions_multi`), so the aliases cost a fraction of a query each. The
learner distils its noise critic on the stored pairs and never calls the base policy inside its
update (`NoiseAliasingConfig.num_aliases`, docs/dsrl_na.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dsrl.steering import NoiseParam, Steering


def draw_alias_latents(
    rng: np.random.Generator, num_envs: int, num_aliases: int, noise_param: NoiseParam, clip: bool
) -> np.ndarray:
    """float32 (N, K, latent_dim) latents z ~ N(0, I) (clipped to +-action_magnitude with `clip`).

    They are rounded to float16 before the base policy sees them, so the stored float16 latent is
    exactly the one whose chunk is stored."""
    latents = rng.standard_normal((num_envs, num_aliases, noise_param.latent_dim))
    if clip:
        bound = noise_param.action_magnitude
        latents = np.clip(latents, -bound, bound)
    return latents.astype(np.float16).astype(np.float32)


def repeat_observations(observation: Mapping[str, Any], times: int) -> dict[str, Any]:
    """Each observation `times` times, its copies adjacent (batch B -> B * times); strings and
    lists of strings (prompts) are repeated the same way."""
    out: dict[str, Any] = {}
    for key, value in observation.items():
        if isinstance(value, Mapping):
            out[key] = repeat_observations(value, times)
        elif isinstance(value, str | bytes):
            out[key] = value
        elif isinstance(value, list):
            out[key] = [v for v in value for _ in range(times)]
        else:
            out[key] = np.repeat(np.asarray(value), times, axis=0)
    return out


def sample_with_aliases(
    base_policy: Any, observation: Mapping[str, Any], noise: np.ndarray, alias_noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(plans (N, H, A), alias plans (N, K, H, A)), float32, from ONE base-policy call.

    noise: (N, H, D), the executed chunks' noise; alias_noise: (N, K, H, D). A policy with
    `sample_actions_multi(obs, (N, 1 + K, H, D))` (Pi0: one prefix pass per observation) gets
    all 1 + K noises per observation at once; any other policy gets one batch of N * (1 + K)
    observation copies."""
    both = np.concatenate([noise[:, None], alias_noise], axis=1).astype(np.float32)
    n, per_obs = both.shape[:2]
    multi = getattr(base_policy, "sample_actions_multi", None)
    if multi is not None:
        out = np.asarray(multi(observation, both), np.float32)
    else:
        flat = base_policy.sample_actions(
            repeat_observations(observation, per_obs), both.reshape(n * per_obs, *both.shape[2:])
        )
        flat = np.asarray(flat, np.float32)
        out = flat.reshape(n, per_obs, *flat.shape[1:])
    return out[:, 0], out[:, 1:]


def query_with_aliases(
    steering: Steering,
    observation: Mapping[str, Any],
    noise: np.ndarray,
    rng: np.random.Generator,
    num_aliases: int,
    clip: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One steered query with K aliases per observation: (the plans (N, H, A), alias latents
    (N, K, latent_dim), the aliases' executed chunks (N, K, query_freq, A))."""
    num_envs = noise.shape[0]
    latents = draw_alias_latents(rng, num_envs, num_aliases, steering.noise_param, clip)
    alias_noise = steering.noise_param.to_noise(latents.reshape(num_envs * num_aliases, -1))
    alias_noise = alias_noise.reshape(num_envs, num_aliases, *alias_noise.shape[1:])
    plans, alias_plans = sample_with_aliases(steering.base_policy, observation, noise, alias_noise)
    return plans, latents, alias_plans[:, :, : steering.query_freq]
