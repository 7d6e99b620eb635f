"""The SAC pieces both DSRL learners are made of, as small pure functions (rlpd / jaxrl2 style).

Each step takes the train state it changes and plain arrays or closures, and returns the new state
with its metrics. Nothing here knows about pixels, noise or a base policy:

  DSRL-SAC  = augmentation + `soft_td_target` + `critic_step` + `target_update` + `actor_step`
              + `temperature_step`, the critic scoring the agent's latent;
  DSRL-NA   = the same steps, the critic scoring the executed action chunk (its bootstrap action
              comes from the base policy), the actor scoring latents with a distilled noise-space
              critic, plus its own distillation step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from dsrl.agents.config import SACConfig
from dsrl.networks import reduce_ensemble

Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------------- losses
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


# ------------------------------------------------------------------------------------ steps
def soft_td_target(
    cfg: SACConfig,
    batch: Mapping[str, jax.Array],
    next_qs: jax.Array,
    next_log_probs: jax.Array,
    temperature: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """The TD target (B,) from the target critic's heads on (s', a'), next_qs (N, B): reduced
    over all heads, or over a random REDQ subset of `cfg.num_min_qs` heads (0 = all), with the
    entropy bonus when `cfg.backup_entropy`."""
    next_q = reduce_ensemble(next_qs, cfg.critic_reduction, key, cfg.num_min_qs or None)
    return td_target(
        batch["rewards"],
        batch["discounts"],
        batch["masks"],
        next_q,
        next_log_probs if cfg.backup_entropy else None,
        temperature,
    )


def critic_step(
    critic: TrainState,
    q_fn: Callable[[Any], Any],
    target: jax.Array,
    penalized: bool = False,
) -> tuple[TrainState, Metrics]:
    """One gradient step of the critic: q_fn(params) -> (num_qs, B) regresses on `target` (B,).
    With `penalized`, q_fn(params) -> (qs, penalty) and the scalar penalty (e.g. the
    conservative term, computed from the same forward pass) is added to the loss."""

    def loss_fn(params):
        qs, penalty = q_fn(params) if penalized else (q_fn(params), jnp.zeros(()))
        return critic_loss(qs, target) + penalty, (qs, penalty)

    (loss, (qs, penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(critic.params)
    metrics = {"critic_loss": loss, "q": qs.mean(), "critic_grad_norm": optax.global_norm(grads)}
    if penalized:
        metrics["critic_penalty"] = penalty
    return critic.apply_gradients(grads=grads), metrics


def target_update(params: Any, target_params: Any, tau: float) -> Any:
    """Polyak averaging over ALL critic params (encoder and bottleneck included, as the reference)."""
    return optax.incremental_update(params, target_params, tau)


def actor_step(
    actor: TrainState,
    dist_fn: Callable[[Any], Any],
    q_fn: Callable[[jax.Array], jax.Array],
    temperature: jax.Array,
    reduction: str,
    key: jax.Array,
    mean_reg: float = 0.0,
    data_latents: jax.Array | None = None,
    awr_beta: float = 0.0,
) -> tuple[TrainState, jax.Array, Metrics]:
    """One actor step, plus `mean_reg` times the mean squared norm of the pre-tanh mean when it
    is > 0 (the original SAC's policy mean regularizer).

    `awr_beta` = 0: SAC's reparameterised step, mean(alpha * log pi(z|s) - reduce(Q(s, z))).
    `awr_beta` > 0: advantage-weighted regression (AWR / AWAC's weights) of the pre-tanh mean mu
    on the batch's own latents z_d (B, A), mean(w * |mu(s) - clip(atanh(z_d / bound),
    +-AWR_PRE_TANH_CLIP)|^2), w = exp(min(A / awr_beta, log(AWR_MAX_WEIGHT))), A =
    reduce(Q(s, z_d)) - reduce(Q(s, z)) with z the actor's sample. No critic gradient reaches
    the actor, so it moves only towards latents that were tried. Its spread is held fixed by the
    learner (SACConfig.actor_awr_std) and `temperature` is unused; docs/training.md ("The
    advantage-weighted actor") lists the learnt spreads that failed on Can.

    dist_fn(params) -> the tanh-Gaussian over latents; q_fn(latents) -> critic heads (N, B).
    Returns the new actor, the sampled log-probs (for the temperature step) and the metrics."""
    weighted = awr_beta > 0  # static
    if weighted and data_latents is None:
        raise ValueError("actor_step: awr_beta > 0 needs the batch's latents (data_latents)")

    def loss_fn(params):
        dist = dist_fn(params)
        latents, log_probs = dist.sample_and_log_prob(key)
        if weighted:
            q = reduce_ensemble(q_fn(jax.lax.stop_gradient(latents)), reduction)
            q_data = reduce_ensemble(q_fn(data_latents), reduction)
            weights = advantage_weights(q_data - q, awr_beta)
            # The pre-tanh mean regresses on the tried latents' pre-tanh values, the better
            # ones weighing more. (In the bounded space the tanh would shrink the fit towards 0:
            # E[tanh(u + noise)] is nearer 0 than tanh(u).) Clipped: the warm-up's N(0, I)
            # draws clipped to the bound have no pre-tanh value.
            target = jnp.clip(dist.pre_tanh(data_latents), -AWR_PRE_TANH_CLIP, AWR_PRE_TANH_CLIP)
            loss = fit = jnp.mean(weights * jnp.sum(jnp.square(dist.loc - target), axis=-1))
            extra = {
                "awr_fit": fit,
                "awr_weight_mean": weights.mean(),
                "awr_weight_max": weights.max(),
            }
        else:
            q = reduce_ensemble(q_fn(latents), reduction)
            loss = actor_loss(temperature, log_probs, q)
            extra = {}
        if mean_reg > 0:  # static: 0 leaves the step as it always was
            loss = loss + mean_reg * jnp.mean(jnp.sum(jnp.square(dist.loc), axis=-1))
        return loss, (dist, log_probs, q, latents, extra)

    (loss, (dist, log_probs, q, latents, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        actor.params
    )
    metrics = {
        "actor_loss": loss,
        "q_pi_in_actor": q.mean(),
        "latents_abs_max": jnp.abs(latents).max(),
        "actor_grad_norm": optax.global_norm(grads),
        **extra,
        **policy_metrics(dist),
    }
    return actor.apply_gradients(grads=grads), log_probs, metrics


# AWAC / CRR cap the exponentiated advantage so one overvalued sample cannot take the batch.
AWR_MAX_WEIGHT = 100.0
# The pre-tanh regression target's bound: tanh(3) = 0.995 of the latents' bound.
AWR_PRE_TANH_CLIP = 3.0


def advantage_weights(advantages: jax.Array, beta: float) -> jax.Array:
    """exp(A / beta), capped at AWR_MAX_WEIGHT, with no gradient; advantages (B,)."""
    scaled = jnp.minimum(advantages / beta, math.log(AWR_MAX_WEIGHT))
    return jax.lax.stop_gradient(jnp.exp(scaled))


def temperature_step(
    temp: TrainState, log_probs: jax.Array, target_entropy: float
) -> tuple[TrainState, Metrics]:
    """SAC's temperature step from the actor step's log-probs."""
    entropy = -log_probs.mean()

    def loss_fn(params):
        return temperature_loss(jnp.exp(params["log_temp"]), entropy, target_entropy)

    loss, grads = jax.value_and_grad(loss_fn)(temp.params)
    metrics = {"entropy": entropy, "temperature": temperature(temp), "temperature_loss": loss}
    return temp.apply_gradients(grads=grads), metrics


def delay_actor(
    step: jax.Array, train_actor_steps: int, old: Any, new: Any
) -> tuple[Any, jax.Array]:
    """`new` once `step` (the critic's gradient-step counter before this step) has reached
    `train_actor_steps`, else `old`: critic-only updates for the first `train_actor_steps`
    gradient steps. A select on a traced counter, so the update compiles once. Returns the
    chosen pytree and the 0/1 flag (the metric "actor_updated")."""
    updating = step >= train_actor_steps
    chosen = jax.tree.map(lambda n, o: jnp.where(updating, n, o), new, old)
    return chosen, updating.astype(jnp.float32)


# ---------------------------------------------------------------------------------- helpers
def temperature(temp: TrainState) -> jax.Array:
    return jnp.exp(temp.params["log_temp"])


def make_train_state(apply_fn: Any, params: Any, lr: float) -> TrainState:
    # A strongly typed step counter: a Python int 0 would make the first update a different jit
    # cache entry from all later ones (two compilations).
    state = TrainState.create(apply_fn=apply_fn, params=params, tx=optax.adam(lr))
    return state.replace(step=jnp.zeros((), jnp.int32))


def make_temperature(init_temperature: float, lr: float) -> TrainState:
    log_temp = {"log_temp": jnp.asarray(math.log(init_temperature), jnp.float32)}
    return make_train_state(None, log_temp, lr)


def policy_metrics(dist: Any) -> Metrics:
    """Pre-tanh mean / std statistics of the actor's distribution, under the reference's names."""
    loc, scale = dist.loc, dist.scale
    return {
        "mean_pi_norm": jnp.linalg.norm(loc, axis=-1).mean(),
        "std_pi_norm": jnp.linalg.norm(scale, axis=-1).mean(),
        "mean_pi_avg": loc.mean(),
        "mean_pi_max": loc.max(),
        "mean_pi_min": loc.min(),
        "std_pi_avg": scale.mean(),
        "std_pi_max": scale.max(),
        "std_pi_min": scale.min(),
    }
