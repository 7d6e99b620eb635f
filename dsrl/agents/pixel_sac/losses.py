"""SAC losses as small pure functions of arrays (no networks inside), shared with DSRL-NA."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def td_target(
    rewards: jax.Array,
    discounts: jax.Array,
    masks: jax.Array,
    next_q: jax.Array,
    next_log_probs: jax.Array | None = None,
    temperature: jax.Array | None = None,
) -> jax.Array:
    """r + discount * mask * (Q'(s', a') [- alpha * log pi(a'|s')]); all (B,).

    The discount is per transition (gamma ** executed steps of the chunk). Passing
    `next_log_probs` and `temperature` adds the entropy bonus to the backup (backup_entropy)."""
    soft_next_q = next_q
    if next_log_probs is not None:
        soft_next_q = next_q - temperature * next_log_probs
    return rewards + discounts * masks * soft_next_q


def critic_loss(qs: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared TD error over heads and batch; qs (num_qs, B), target (B,)."""
    return jnp.mean((qs - jax.lax.stop_gradient(target)[None]) ** 2)


def actor_loss(temperature: jax.Array, log_probs: jax.Array, q: jax.Array) -> jax.Array:
    """mean(alpha * log pi(a|s) - Q(s, a)); log_probs, q (B,)."""
    return jnp.mean(temperature * log_probs - q)


def temperature_loss(
    temperature: jax.Array, entropy: jax.Array, target_entropy: float
) -> jax.Array:
    """alpha * (H - H_target): alpha grows when the policy's entropy falls below the target.
    As in the reference the loss is on alpha (= exp(log_alpha)), not on log alpha."""
    return temperature * (jax.lax.stop_gradient(entropy) - target_entropy)
