"""DSRL-NA: an action-space critic distilled into a noise-space critic (NoiseAliasingLearner).

Paper Algorithm 1 with the official code's details (see docs/dsrl_na.md). What differs from
DSRL-SAC is written here; the SAC steps themselves are dsrl.agents.sac's.
  critic/actor step (K per `update` call), on a batch of stored transitions:
    1. Q^A(s, a) by TD on the EXECUTED chunks a in the buffer ("action_chunks", flattened), with
       a' = pi_dp(s', noise(z')), z' ~ pi(.|s') drawn by the current actor and turned into an
       action chunk by the frozen base policy INSIDE this jitted step; target
       y = r + discount * mask * (reduce_i Qbar^A_i(s', a') [- alpha * log pi(z'|s')]);
    2. soft update of Qbar^A;
    3. actor: mean(alpha * log pi(z|s) - reduce_i Q^W_i(s, z)); z stays within
       +-action_magnitude (tanh-Gaussian), which the official code does not enforce;
    4. temperature as in SAC.
  distillation step (round(K * noise_critic_grad_steps / utd) per call, after the K steps):
    z ~ N(0, I) in the latent space, a = pi_dp(s, noise(z)); Q^W(s, z) regresses on the ONLINE
    Q^A(s, a), head by head ("per_head") or on the head mean ("mean"). Q^W has no target.

The latent z is the steering's (e.g. 32-d for "repeat"); `noise_fn` (the steering's
`NoiseParam.to_noise`) lifts it to the base policy's (H, D) noise. No gradient ever flows through
the base policy: it only produces regression inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from dsrl.agents import sac, spec
from dsrl.agents.common import (
    PIXELS,
    STATE,
    Learner,
    augment,
    build_networks,
    critic_module,
    dummy_observation,
)
from dsrl.agents.execution import BlockRunner
from dsrl.agents.noise_aliasing import losses
from dsrl.agents.noise_aliasing.config import NoiseAliasingConfig
from dsrl.base_policies.base import JaxBasePolicy, as_jax_base_policy


class NoiseAliasingLearner(Learner):
    """Immutable DSRL-NA agent over pixels + state. Every method returns a new learner.

    Params: `action_critic` = Q^A (encoder, bottleneck, vmapped heads over [features, flattened
    executed chunk]; its module is `critic_def`); `noise_critic` = Q^W (its own encoder + heads
    over [features, z], or heads only when `noise_critic_encoder="shared"`); `actor` as in
    PixelSACLearner.
    """

    actor: TrainState
    action_critic: TrainState
    target_action_critic_params: Any
    noise_critic: TrainState
    temp: TrainState
    rng: jax.Array
    query_freq: int = flax.struct.field(pytree_node=False)
    noise_critic_def: nn.Module = flax.struct.field(pytree_node=False)
    base_policy: JaxBasePolicy = flax.struct.field(pytree_node=False)
    noise_fn: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)

    CONFIG = NoiseAliasingConfig

    @classmethod
    def build(
        cls,
        seed: int,
        agent_spec: dict[str, Any],
        fields: dict[str, Any],
        *,
        base_policy: Any = None,
        noise_param: Any = None,
        noise_fn: Callable[[jax.Array], jax.Array] | None = None,
        query_freq: int | None = None,
    ) -> NoiseAliasingLearner:
        """`create(seed, observation_spec, latent_dim, config, *, execution, ...)` with:
        base_policy: a JaxBasePolicy or a FlowMLPPolicy (see `as_jax_base_policy`).
        noise_param / noise_fn: how latents (B, latent_dim) become noise (B, H, D): a
        `dsrl.steering.NoiseParam` (its `to_noise`, which works inside jit) or a JAX function.
        query_freq: executed steps per chunk (the buffer's "action_chunks" length); default H.
        """
        cfg, latent_dim = fields["config"], fields["latent_dim"]
        if base_policy is None:
            raise ValueError(
                "NoiseAliasingLearner.create needs base_policy=... (a FlowMLPPolicy or a "
                "JaxBasePolicy): DSRL-NA turns noise into action chunks inside its update"
            )
        policy = as_jax_base_policy(base_policy)
        if noise_fn is None:
            if noise_param is None:
                raise ValueError(
                    "NoiseAliasingLearner.create needs noise_param=<dsrl.steering.NoiseParam> "
                    "(or noise_fn) to map latents to the base policy's noise"
                )
            noise_fn = noise_param.to_noise
        horizon = int(policy.noise_shape[0])
        query_freq = horizon if query_freq is None else int(query_freq)
        if not 1 <= query_freq <= horizon:
            raise ValueError(f"query_freq={query_freq} must be in [1, horizon={horizon}]")
        try:
            noise_out = jax.eval_shape(noise_fn, jax.ShapeDtypeStruct((1, latent_dim), jnp.float32))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"the noise map cannot take latents (B, {latent_dim}) inside jit: {e}; its "
                "latent_dim must be this learner's"
            ) from e
        if tuple(noise_out.shape[1:]) != tuple(policy.noise_shape):
            raise ValueError(
                f"noise_fn maps latents (B, {latent_dim}) to noise {tuple(noise_out.shape)}, but "
                f"the base policy expects (B, *{tuple(policy.noise_shape)})"
            )
        clash = sorted(set(policy.observation_spec) & {PIXELS, STATE})
        if clash:
            raise ValueError(f"base-policy observation keys {clash} clash with the agent's keys")

        chunk_dim = query_freq * int(policy.action_dim)
        nets = build_networks(seed, cfg, agent_spec, latent_dim, chunk_dim, num_extra_keys=1)
        latents = jnp.zeros((1, latent_dim), jnp.float32)
        if cfg.noise_critic_encoder == "separate":
            noise_critic_def = critic_module(cfg, nets.encoder)
            qw_inputs = dummy_observation(agent_spec[PIXELS], agent_spec[STATE][0])
        else:
            noise_critic_def = critic_module(cfg, None)
            qw_inputs = jnp.zeros((1, cfg.bottleneck_dim + agent_spec[STATE][0]))
        qw_params = noise_critic_def.init(nets.extra_keys[0], qw_inputs, latents)["params"]
        return cls(
            **fields,
            **nets.learner_fields(),
            action_critic=nets.critic,
            target_action_critic_params=jax.tree.map(jnp.array, nets.critic.params),
            noise_critic=sac.make_train_state(
                noise_critic_def.apply, qw_params, cfg.noise_critic_lr
            ),
            query_freq=query_freq,
            noise_critic_def=noise_critic_def,
            base_policy=policy,
            noise_fn=noise_fn,
        )

    # ------------------------------------------------------------------- the Learner contract
    @property
    def acting_critic_params(self) -> Any:
        return self.action_critic.params

    def policy_observation_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {
            k: (tuple(int(s) for s in v[0]), np.dtype(v[1]))
            for k, v in self.base_policy.observation_spec.items()
        }

    @property
    def chunk_shape(self) -> tuple[int, int]:
        """The stored "action_chunks" shape of one transition: (query_freq, robot action dim)."""
        return (self.query_freq, int(self.base_policy.action_dim))

    def batch_fields(self) -> dict[str, tuple[int, ...]]:
        return {spec.ACTION_CHUNKS: self.chunk_shape}

    def _update(self, batches):
        """K critic/actor steps, then `config.num_distill_steps(K)` distillation steps; step j
        uses the observations of batch j % K with fresh noise."""
        bp_params = self.base_policy.params
        learner, metrics = CRITIC_ACTOR(self, batches, self.execution, bp_params)
        num_steps = batches[spec.REWARDS].shape[0]
        index = np.arange(self.config.num_distill_steps(num_steps)) % num_steps
        distill_obs = jax.tree.map(lambda x: x[index], batches[spec.OBSERVATIONS])
        learner, distill_metrics = DISTILL(learner, distill_obs, self.execution, bp_params)
        return learner, {**metrics, **distill_metrics}

    def td_targets(self, batch: Mapping[str, Any]) -> np.ndarray:
        """The Q^A TD targets (B,) of ONE batch (leaves with a leading B, no K axis), with
        unaugmented next observations and a next latent drawn from the learner's current key
        (the learner is not advanced): for inspecting what the critic regresses on."""
        batches = self.prepare_batches(jax.tree.map(lambda x: np.asarray(x)[None], dict(batch)))
        one = jax.tree.map(lambda x: x[0], batches)
        return np.asarray(_td_targets_jit(self, one, self.base_policy.params))

    # -------------------------------------------------------------------- pieces of a step
    def chunks_from_latents(self, bp_params, observations, latents) -> jax.Array:
        """Latents (B, latent_dim) -> executed chunks pi_dp(s, noise(z)), flattened
        (B, query_freq * A). The base policy is frozen: no gradient flows through it."""
        policy_obs = {k: observations[k] for k in self.base_policy.observation_spec}
        noise = self.noise_fn(jax.lax.stop_gradient(latents))
        chunks = self.base_policy.apply_fn(bp_params, policy_obs, noise)
        return jax.lax.stop_gradient(losses.executed_chunk(chunks, self.query_freq))

    def noise_qs(self, qw_params, observations, qa_features, latents) -> jax.Array:
        """Q^W(s, z): (num_qs, B). With a shared encoder Q^W reads Q^A's features."""
        if self.config.noise_critic_encoder == "separate":
            return self.noise_critic_def.apply({"params": qw_params}, observations, latents)
        return self.noise_critic_def.apply({"params": qw_params}, qa_features, latents)

    def action_critic_target(self, batch, next_obs, bp_params, temperature, k_next, k_redq):
        """y (B,) bootstrapping through a' = pi_dp(s', noise(z')), z' ~ pi(.|s'), cut to the
        executed steps; with (next_qs (N, B), log pi(z'|s') (B,), a' (B, qf * A))."""
        next_features = self.critic_features(self.action_critic.params, next_obs)
        next_dist = self.actor_distribution(self.actor.params, next_obs, next_features)
        next_latents, next_log_probs = next_dist.sample_and_log_prob(k_next)
        raw_next = batch[spec.NEXT_OBSERVATIONS]
        next_chunks = self.chunks_from_latents(bp_params, raw_next, next_latents)
        next_qs = self.critic_def.apply(
            {"params": self.target_action_critic_params}, next_obs, next_chunks
        )
        y = sac.soft_td_target(self.config, batch, next_qs, next_log_probs, temperature, k_redq)
        return y, (next_qs, next_log_probs, next_chunks)


def critic_actor_step(learner: NoiseAliasingLearner, batch: dict[str, Any], bp_params):
    """One Q^A TD step, the soft target update, one actor step on Q^W, one temperature step."""
    cfg = learner.config
    rng, k_aug, k_aug_next, k_next, k_redq, k_pi, k_drop = jax.random.split(learner.rng, 7)
    obs = augment(cfg, k_aug, batch[spec.OBSERVATIONS])
    next_obs = augment(cfg, k_aug_next, batch[spec.NEXT_OBSERVATIONS], cfg.aug_next)
    temperature = sac.temperature(learner.temp)
    target_q, (next_qs, next_log_probs, next_chunks) = learner.action_critic_target(
        batch, next_obs, bp_params, temperature, k_next, k_redq
    )
    chunks = batch[spec.ACTION_CHUNKS].reshape(batch[spec.ACTION_CHUNKS].shape[0], -1)
    qa = learner.critic_def.apply
    action_critic, critic_metrics = sac.critic_step(
        learner.action_critic,
        lambda p: qa({"params": p}, obs, chunks, True, rngs={"dropout": k_drop}),
        target_q,
    )
    target_params = sac.target_update(
        action_critic.params, learner.target_action_critic_params, cfg.tau
    )
    # The actor follows Q^W only (the paper's line 6): no gradient through the base policy.
    features = learner.critic_features(action_critic.params, obs)
    actor, temp, actor_metrics = learner.actor_temperature_step(
        obs,
        features,
        lambda z: learner.noise_qs(learner.noise_critic.params, obs, features, z),
        temperature,
        k_pi,
        learner.action_critic.step,
    )
    metrics = {
        **critic_metrics,
        "target_q": target_q.mean(),
        "next_q_pi": next_qs.mean(),
        "next_log_probs": next_log_probs.mean(),
        "next_chunk_abs_mean": jnp.abs(next_chunks).mean(),
        **actor_metrics,
    }
    new = learner.replace(
        actor=actor,
        action_critic=action_critic,
        target_action_critic_params=target_params,
        temp=temp,
        rng=rng,
    )
    return new, metrics


def distill_step(learner: NoiseAliasingLearner, observations: dict[str, Any], bp_params):
    """One Q^W step on B states x M fresh noises (M = `distill_noises_per_state`):
    z ~ N(0, I), Q^W(s, z) <- online Q^A(s, pi_dp(s, noise(z))). Each encoder runs once per
    state; the base policy and the critic heads run on the B * M (state, latent) pairs."""
    cfg = learner.config
    rng, k_aug, k_z = jax.random.split(learner.rng, 3)
    obs = augment(cfg, k_aug, observations)
    m = int(cfg.distill_noises_per_state)

    def per_pair(x):  # (B, ...) -> (B * M, ...), each state's M copies adjacent
        return jnp.repeat(x, m, axis=0)

    z = jax.random.normal(k_z, (observations[STATE].shape[0] * m, learner.latent_dim))
    if cfg.distill_noise_clip:
        z = jnp.clip(z, -cfg.action_magnitude, cfg.action_magnitude)
    chunks = learner.chunks_from_latents(bp_params, jax.tree.map(per_pair, observations), z)
    qa_params = learner.action_critic.params
    qa_features = per_pair(learner.critic_features(qa_params, obs))
    action_qs = learner.critic_def.apply({"params": qa_params}, qa_features, chunks, method="head")
    targets = losses.distillation_targets(action_qs, cfg.distill_target, cfg.num_qs)

    def loss_fn(params):
        if cfg.noise_critic_encoder == "separate":  # encode each state once, not M times
            apply = learner.noise_critic_def.apply
            feats = apply({"params": params}, obs, method="encode")
            noise_qs = apply({"params": params}, per_pair(feats), z, method="head")
        else:  # Q^A's features, no gradient into Q^A
            noise_qs = learner.noise_critic_def.apply({"params": params}, qa_features, z)
        return losses.noise_critic_loss(noise_qs, targets), noise_qs

    (loss, noise_qs), grads = jax.value_and_grad(loss_fn, has_aux=True)(learner.noise_critic.params)
    metrics = {
        "noise_critic_loss": loss,
        "noise_q": noise_qs.mean(),
        "distill_target_q": targets.mean(),
        "noise_critic_grad_norm": optax.global_norm(grads),
    }
    noise_critic = learner.noise_critic.apply_gradients(grads=grads)
    return learner.replace(noise_critic=noise_critic, rng=rng), metrics


CRITIC_ACTOR = BlockRunner(critic_actor_step)
DISTILL = BlockRunner(distill_step)


def _td_targets(learner: NoiseAliasingLearner, batch: dict[str, Any], bp_params):
    _, k_next, k_redq = jax.random.split(learner.rng, 3)
    next_obs = augment(learner.config, k_next, batch[spec.NEXT_OBSERVATIONS], False)
    temperature = sac.temperature(learner.temp)
    args = (batch, next_obs, bp_params, temperature, k_next, k_redq)
    return learner.action_critic_target(*args)[0]


_td_targets_jit = jax.jit(_td_targets)
