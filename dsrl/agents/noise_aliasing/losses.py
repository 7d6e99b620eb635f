"""DSRL-NA losses as small pure functions of arrays (paper Algorithm 1, lines 4-6).

The TD target, actor and temperature losses are the shared SAC ones (`dsrl.agents.sac`); what is
new is how the action-space critic's knowledge reaches the noise space.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def executed_chunk(chunks: jax.Array, query_freq: int) -> jax.Array:
    """The part of a base-policy chunk the env executes, flattened: (B, H, A) -> (B, qf * A).

    Q^A scores exactly what the buffer stores ("action_chunks" (qf, A) flattened), so the
    bootstrap action a' = pi_dp(s', w') is cut the same way."""
    executed = chunks[:, :query_freq]
    return executed.reshape(executed.shape[0], -1)


def distillation_targets(action_qs: jax.Array, distill_target: str, num_noise_qs: int) -> jax.Array:
    """Q^W regression targets from the online Q^A on (s, pi_dp(s, w)): (N, B) -> (num_noise_qs, B).

    "per_head": Q^W head i learns Q^A head i (the official code; needs num_noise_qs == N).
    "mean": every Q^W head learns the mean over Q^A heads (LeRobot's single distilled value).
    No gradient flows into Q^A."""
    action_qs = jax.lax.stop_gradient(action_qs)
    if distill_target == "per_head":
        if action_qs.shape[0] != num_noise_qs:
            raise ValueError(
                f"per_head distillation needs as many Q^W heads as Q^A heads, got {num_noise_qs} "
                f"and {action_qs.shape[0]}; use distill_target='mean' or equal head counts"
            )
        return action_qs
    if distill_target == "mean":
        mean = action_qs.mean(axis=0, keepdims=True)
        return jnp.broadcast_to(mean, (num_noise_qs, action_qs.shape[1]))
    raise ValueError(f"unknown distill_target {distill_target!r}; choose 'per_head' or 'mean'")


def noise_critic_loss(noise_qs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error over heads and batch, (N, B) each. The official loss sums 0.5 * MSE over
    heads: the same minimiser, and Adam's step does not depend on a constant loss scale."""
    return jnp.mean((noise_qs - jax.lax.stop_gradient(targets)) ** 2)
