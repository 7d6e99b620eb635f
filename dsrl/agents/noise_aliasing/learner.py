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

With stored aliases (`num_aliases` K > 0, the default for Pi0) the update never calls the base
policy: the distillation regresses Q^W(s, z_k) on Q^A(s, a_k) for the K (z_k, a_k) aliases stored
with each transition (computed in the query's own base-policy call), and the Q^A target
bootstraps through Qbar^W(s', z'), a soft-updated copy of Q^W, which stands for
Qbar^A(s', pi_dp(s', noise(z'))).
"""

from __future__ import annotations

import dataclasses
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
from dsrl.agents.common import PIXELS, STATE, Learner, augment
from dsrl.agents.execution import BlockRunner
from dsrl.agents.learner_networks import (
    build_networks,
    critic_module,
    dummy_observation,
    feature_dim,
)
from dsrl.agents.noise_aliasing import losses
from dsrl.agents.noise_aliasing.config import NoiseAliasingConfig
from dsrl.base_policies.base import JaxBasePolicy, as_jax_base_policy


class NoiseAliasingLearner(Learner):
    """Immutable DSRL-NA agent over pixels + state, or the state alone (no "pixels" in the
    observation spec: MLP-only networks). Every method returns a new learner.

    Params: `action_critic` = Q^A (encoder, bottleneck, vmapped heads over [features, flattened
    executed chunk]; its module is `critic_def`); `noise_critic` = Q^W (its own encoder + heads
    over [features, z], or heads only when `noise_critic_encoder="shared"`); with stored aliases
    `target_noise_critic_params` = Qbar^W (None otherwise, so an in-update learner's checkpoint
    layout is unchanged); `actor` as in PixelSACLearner. `base_policy` is the pure-JAX sampler
    the update calls, None with stored aliases (`num_aliases` > 0, resolved from the config).
    """

    actor: TrainState
    action_critic: TrainState
    target_action_critic_params: Any
    noise_critic: TrainState
    target_noise_critic_params: Any
    temp: TrainState
    rng: jax.Array
    query_freq: int = flax.struct.field(pytree_node=False)
    noise_critic_def: nn.Module = flax.struct.field(pytree_node=False)
    base_policy: JaxBasePolicy | None = flax.struct.field(pytree_node=False)
    noise_fn: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)
    num_aliases: int = flax.struct.field(pytree_node=False)
    robot_action_dim: int = flax.struct.field(pytree_node=False)

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
        base_policy: a JaxBasePolicy or a FlowMLPPolicy (see `as_jax_base_policy`); with stored
          aliases any BasePolicy (only its noise_shape and action_dim are read).
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
        policy, num_aliases = _sampler_and_aliases(cfg, base_policy)
        if noise_fn is None:
            if noise_param is None:
                raise ValueError(
                    "NoiseAliasingLearner.create needs noise_param=<dsrl.steering.NoiseParam> "
                    "(or noise_fn) to map latents to the base policy's noise"
                )
            noise_fn = noise_param.to_noise
        noise_shape = tuple(int(n) for n in (policy or base_policy).noise_shape)
        horizon = noise_shape[0]
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
        if tuple(noise_out.shape[1:]) != noise_shape:
            raise ValueError(
                f"noise_fn maps latents (B, {latent_dim}) to noise {tuple(noise_out.shape)}, but "
                f"the base policy expects (B, *{noise_shape})"
            )
        clash = sorted(set(policy.observation_spec if policy else ()) & {PIXELS, STATE})
        if clash:
            raise ValueError(f"base-policy observation keys {clash} clash with the agent's keys")

        robot_action_dim = int((policy or base_policy).action_dim)
        chunk_dim = query_freq * robot_action_dim
        nets = build_networks(
            seed,
            cfg,
            agent_spec,
            latent_dim,
            chunk_dim,
            num_extra_keys=1,
            action_magnitude=fields["action_magnitude"],
        )
        latents = jnp.zeros((1, latent_dim), jnp.float32)
        if cfg.noise_critic_encoder == "separate":
            noise_critic_def = critic_module(cfg, nets.encoder)
            qw_inputs = dummy_observation(agent_spec.get(PIXELS), agent_spec[STATE][0])
        else:
            noise_critic_def = critic_module(cfg, None, on_features=True)
            qw_inputs = jnp.zeros((1, feature_dim(cfg, agent_spec)))
        qw_params = noise_critic_def.init(nets.extra_keys[0], qw_inputs, latents)["params"]
        return cls(
            **fields,
            **nets.learner_fields(),
            action_critic=nets.critic,
            target_action_critic_params=jax.tree.map(jnp.array, nets.critic.params),
            noise_critic=sac.make_train_state(
                noise_critic_def.apply, qw_params, cfg.noise_critic_lr
            ),
            target_noise_critic_params=(
                jax.tree.map(jnp.array, qw_params) if num_aliases else None
            ),
            query_freq=query_freq,
            noise_critic_def=noise_critic_def,
            base_policy=policy,
            noise_fn=noise_fn,
            num_aliases=num_aliases,
            robot_action_dim=robot_action_dim,
        )

    # ------------------------------------------------------------------- the Learner contract
    @property
    def acting_critic_params(self) -> Any:
        return self.action_critic.params

    def policy_observation_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        if self.base_policy is None:  # stored aliases: the update never runs the base policy
            return {}
        return {
            k: (tuple(int(s) for s in v[0]), np.dtype(v[1]))
            for k, v in self.base_policy.observation_spec.items()
        }

    @property
    def chunk_shape(self) -> tuple[int, int]:
        """The stored "action_chunks" shape of one transition: (query_freq, robot action dim)."""
        return (self.query_freq, self.robot_action_dim)

    def batch_fields(self) -> dict[str, tuple[int, ...]]:
        fields = {spec.ACTION_CHUNKS: self.chunk_shape}
        if self.config.distill_taken:  # the executed latent, paired with its chunk
            fields[spec.LATENTS] = (self.latent_dim,)
        if self.num_aliases:
            fields[spec.ALIAS_LATENTS] = (self.num_aliases, self.latent_dim)
            fields[spec.ALIAS_CHUNKS] = (self.num_aliases, *self.chunk_shape)
        return fields

    def transition_spec(self) -> spec.TransitionSpec:
        return dataclasses.replace(
            super().transition_spec(),
            num_aliases=self.num_aliases,
            clip_aliases=bool(self.config.distill_noise_clip),
        )

    @property
    def base_policy_params(self) -> Any:
        """The in-update sampler's params (an argument of the jitted steps), None without one."""
        return None if self.base_policy is None else self.base_policy.params

    def _update(self, batches):
        """K critic/actor steps, then `config.num_distill_steps(K)` distillation steps; step j
        uses the observations of batch j % K, with fresh noise or with their stored aliases."""
        bp_params = self.base_policy_params
        learner, metrics = CRITIC_ACTOR(self, batches, self.execution, bp_params)
        num_steps = batches[spec.REWARDS].shape[0]
        index = np.arange(self.config.num_distill_steps(num_steps)) % num_steps
        taken = (spec.LATENTS, spec.ACTION_CHUNKS) if self.config.distill_taken else ()
        if self.num_aliases:
            keys = (spec.OBSERVATIONS, spec.ALIAS_LATENTS, spec.ALIAS_CHUNKS, *taken)
            inputs = jax.tree.map(lambda x: x[index], {k: batches[k] for k in keys})
            learner, distill_metrics = DISTILL_STORED(learner, inputs, self.execution)
        else:
            keys = (spec.OBSERVATIONS, *taken)
            inputs = jax.tree.map(lambda x: x[index], {k: batches[k] for k in keys})
            learner, distill_metrics = DISTILL(learner, inputs, self.execution, bp_params)
        return learner, {**metrics, **distill_metrics}

    def td_targets(self, batch: Mapping[str, Any]) -> np.ndarray:
        """The Q^A TD targets (B,) of ONE batch (leaves with a leading B, no K axis), with
        unaugmented next observations and a next latent drawn from the learner's current key
        (the learner is not advanced): for inspecting what the critic regresses on."""
        batches = self.prepare_batches(jax.tree.map(lambda x: np.asarray(x)[None], dict(batch)))
        one = jax.tree.map(lambda x: x[0], batches)
        return np.asarray(_td_targets_jit(self, one, self.base_policy_params))

    # -------------------------------------------------------------------- pieces of a step
    def chunks_from_latents(self, bp_params, observations, latents) -> jax.Array:
        """Latents (B, latent_dim) -> executed chunks pi_dp(s, noise(z)), flattened
        (B, query_freq * A). The base policy is frozen: no gradient flows through it."""
        policy_obs = {k: observations[k] for k in self.base_policy.observation_spec}
        noise = self.noise_fn(jax.lax.stop_gradient(latents))
        chunks = self.base_policy.apply_fn(bp_params, policy_obs, noise)
        return jax.lax.stop_gradient(losses.executed_chunk(chunks, self.query_freq))

    def latent_q_heads(self, observations, latents):
        """Q^W(s, z): the noise critic the actor maximises."""
        features = self.critic_features(self.action_critic.params, observations)
        return self.noise_qs(self.noise_critic.params, observations, features, latents)

    def noise_qs(self, qw_params, observations, qa_features, latents) -> jax.Array:
        """Q^W(s, z): (num_qs, B). With a shared encoder Q^W reads Q^A's features."""
        if self.config.noise_critic_encoder == "separate":
            return self.noise_critic_def.apply({"params": qw_params}, observations, latents)
        return self.noise_critic_def.apply({"params": qw_params}, qa_features, latents)

    def action_critic_target(self, batch, next_obs, bp_params, temperature, k_next, k_redq):
        """y (B,) bootstrapping through a' = pi_dp(s', noise(z')), z' ~ pi(.|s'), cut to the
        executed steps; with (next_qs (N, B), log pi(z'|s') (B,), a' (B, qf * A)). With stored
        aliases the bootstrap is Qbar^W(s', z') and a' is None: no base-policy call."""
        next_features = self.critic_features(self.action_critic.params, next_obs)
        next_dist = self.actor_distribution(self.actor.params, next_obs, next_features)
        next_latents, next_log_probs = next_dist.sample_and_log_prob(k_next)
        if self.num_aliases:
            next_chunks = None
            next_qs = self.noise_qs(
                self.target_noise_critic_params, next_obs, next_features, next_latents
            )
        else:
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
        **actor_metrics,
    }
    new = learner.replace(
        actor=actor,
        action_critic=action_critic,
        target_action_critic_params=target_params,
        temp=temp,
        rng=rng,
    )
    if next_chunks is not None:
        metrics["next_chunk_abs_mean"] = jnp.abs(next_chunks).mean()
    else:  # Qbar^W follows Q^W at Qbar^A's rate, per critic step
        new = new.replace(
            target_noise_critic_params=sac.target_update(
                learner.noise_critic.params, learner.target_noise_critic_params, cfg.tau
            )
        )
    return new, metrics


def distill_step(learner: NoiseAliasingLearner, inputs: dict[str, Any], bp_params):
    """One Q^W step on B states x M fresh noises (M = `distill_noises_per_state`):
    z ~ N(0, I), Q^W(s, z) <- online Q^A(s, pi_dp(s, noise(z))). Each encoder runs once per
    state; the base policy and the critic heads run on the B * M (state, latent) pairs. With
    `distill_taken`, each state's own (latent, executed chunk) is an (M + 1)-th pair."""
    cfg = learner.config
    observations = inputs[spec.OBSERVATIONS]
    rng, k_aug, k_z = jax.random.split(learner.rng, 3)
    m = int(cfg.distill_noises_per_state)
    z = jax.random.normal(k_z, (observations[STATE].shape[0] * m, learner.latent_dim))
    if cfg.distill_noise_clip:
        z = jnp.clip(z, -learner.action_magnitude, learner.action_magnitude)
    tiled = jax.tree.map(lambda x: jnp.repeat(x, m, axis=0), observations)
    chunks = learner.chunks_from_latents(bp_params, tiled, z)
    b = observations[STATE].shape[0]
    z, chunks, m = with_taken_pair(cfg, inputs, z.reshape(b, m, -1), chunks.reshape(b, m, -1))
    return fit_noise_critic(learner.replace(rng=rng), observations, k_aug, z, chunks, m)


def distill_stored_step(learner: NoiseAliasingLearner, inputs: dict[str, Any]):
    """One Q^W step on the B states x K aliases stored with them: Q^W(s, z_k) <- online
    Q^A(s, a_k), a_k the executed part of pi_dp(s, noise(z_k)) computed at the query. The same
    key split and pairing as `distill_step`, so with the chunks the policy gives for the same
    latents both steps are the same computation."""
    rng, k_aug, _ = jax.random.split(learner.rng, 3)
    latents, chunks = inputs[spec.ALIAS_LATENTS], inputs[spec.ALIAS_CHUNKS]
    b, k = latents.shape[:2]
    z, flat_chunks, k = with_taken_pair(
        learner.config, inputs, latents, jax.lax.stop_gradient(chunks.reshape(b, k, -1))
    )
    return fit_noise_critic(
        learner.replace(rng=rng), inputs[spec.OBSERVATIONS], k_aug, z, flat_chunks, k
    )


def with_taken_pair(cfg: NoiseAliasingConfig, inputs, z, chunks):
    """(B, m, d) latents and (B, m, qf * A) chunks -> flat (B * m', ...) pairs, each state's
    adjacent, and m'. With `cfg.distill_taken` the state's own transition (the latent the loop
    executed, the chunk it produced) is appended as its (m + 1)-th pair: m' = m + 1."""
    b = z.shape[0]
    if cfg.distill_taken:
        taken_z = inputs[spec.LATENTS][:, None]
        taken_chunks = inputs[spec.ACTION_CHUNKS].reshape(b, 1, -1)
        z = jnp.concatenate([z.astype(jnp.float32), taken_z.astype(jnp.float32)], axis=1)
        chunks = jnp.concatenate(
            [chunks.astype(jnp.float32), taken_chunks.astype(jnp.float32)], axis=1
        )
    m = z.shape[1]
    return z.reshape(b * m, -1), chunks.reshape(b * m, -1), m


def fit_noise_critic(learner: NoiseAliasingLearner, observations, k_aug, z, chunks, m: int):
    """Q^W's regression step on B states x m (latent z, executed chunk) pairs, each state's m
    pairs adjacent in z (B * m, latent_dim) and chunks (B * m, qf * A)."""
    cfg = learner.config
    obs = augment(cfg, k_aug, observations)

    def per_pair(x):  # (B, ...) -> (B * m, ...), each state's m copies adjacent
        return jnp.repeat(x, m, axis=0)

    qa_params = learner.action_critic.params
    qa_features = per_pair(learner.critic_features(qa_params, obs))
    action_qs = learner.critic_def.apply({"params": qa_params}, qa_features, chunks, method="head")
    targets = losses.distillation_targets(action_qs, cfg.distill_target, cfg.num_qs)

    def loss_fn(params):
        if cfg.noise_critic_encoder == "separate":  # encode each state once, not m times
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
    return learner.replace(noise_critic=noise_critic), metrics


CRITIC_ACTOR = BlockRunner(critic_actor_step)
DISTILL = BlockRunner(distill_step)
DISTILL_STORED = BlockRunner(distill_stored_step)


def has_jax_sampler(base_policy: Any) -> bool:
    """Whether the update could run `base_policy` inside jit (`as_jax_base_policy` accepts it)."""
    try:
        as_jax_base_policy(base_policy)
    except ValueError:
        return False
    return True


def _sampler_and_aliases(cfg: NoiseAliasingConfig, base_policy: Any):
    """(the pure-JAX sampler the update calls, or None with stored aliases; K) for `base_policy`
    under `cfg.num_aliases`, or an error naming the fix."""
    num_aliases = cfg.resolved_num_aliases(has_jax_sampler(base_policy))
    if not num_aliases:
        try:
            return as_jax_base_policy(base_policy), 0
        except ValueError as e:
            raise ValueError(
                f"{e} Or keep DSRL-NA and store aliases instead: num_aliases=0 asks for the "
                "in-update path; pass --num_aliases 16 (the default, -1, picks it for this policy)."
            ) from None
    if int(cfg.distill_noises_per_state) != 1:
        raise ValueError(
            f"distill_noises_per_state={cfg.distill_noises_per_state} draws fresh noises inside "
            f"the update, but this learner stores {num_aliases} aliases per transition "
            "(num_aliases -1 picks them for a base policy without a pure-JAX sampler): leave "
            "distill_noises_per_state at 1"
        )
    if not all(hasattr(base_policy, a) for a in ("noise_shape", "action_dim")):
        raise ValueError(
            f"base_policy {type(base_policy).__name__} has no noise_shape / action_dim: pass "
            "the run's BasePolicy (e.g. Pi0Policy), whose chunks the stored aliases hold"
        )
    return None, num_aliases


def _td_targets(learner: NoiseAliasingLearner, batch: dict[str, Any], bp_params):
    _, k_next, k_redq = jax.random.split(learner.rng, 3)
    next_obs = augment(learner.config, k_next, batch[spec.NEXT_OBSERVATIONS], False)
    temperature = sac.temperature(learner.temp)
    args = (batch, next_obs, bp_params, temperature, k_next, k_redq)
    return learner.action_critic_target(*args)[0]


_td_targets_jit = jax.jit(_td_targets)
