"""DSRL-SAC: pixel SAC whose action is the latent the steering turns into the base policy's noise.

One gradient step, in the reference's order (dsrl.agents.sac has the pieces):
  1. augment obs (random crop + colour jitter) and, with `aug_next`, next obs (own keys);
  2. critic: z' ~ pi(.|s') with the current actor, target = r + discount * mask * reduce(Q_targ(s',
     z')) [- alpha * log pi]; loss = mean over heads and batch of (Q(s, z) - target)^2;
  3. soft target update over ALL critic params (encoder and bottleneck included);
  4. actor against the NEW critic: mean(alpha * log pi(z|s) - reduce(Q(s, z))), z reparameterised;
  5. temperature: alpha * (entropy - target_entropy), entropy from step 4's log-probs.

Same maths as the reference, less work: its unused actor forward pass on next_obs is gone, and
the new critic's encoder runs once on obs for the actor step (those features do not depend on the
actor, so no gradient flows through them). Deliberately different: the colour jitter is one
fused affine op per image (hue as a YIQ rotation, one clip at the end; see
dsrl.data.augmentations) and augmented pixels stay float instead of being re-quantised to uint8.
`encoder_sharing="shared"` (not the reference) runs 5 encoder passes per step instead of 9.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from dsrl.agents import sac, spec
from dsrl.agents.common import Learner, augment
from dsrl.agents.execution import BlockRunner
from dsrl.agents.learner_networks import build_networks
from dsrl.agents.pixel_sac.config import PixelSACConfig


class PixelSACLearner(Learner):
    """Immutable SAC agent over pixels + state, or over the state alone: an observation spec
    without "pixels" gives MLP-only networks (the authors' state-based DSRL; set
    `activation="tanh"`, `actor_layer_norm=True` and 3 x 2048 `hidden_dims` for their sizes).
    Every method returns a new learner.

    Params: `critic` holds the critic encoder, bottleneck and the vmapped Q heads; `actor` holds
    its own encoder + policy ("separate") or only the policy head ("shared").
    """

    actor: TrainState
    critic: TrainState
    target_critic_params: Any
    temp: TrainState
    rng: jax.Array

    CONFIG = PixelSACConfig

    @classmethod
    def build(cls, seed: int, agent_spec: dict[str, Any], fields: dict[str, Any]):
        latent_dim = fields["latent_dim"]
        nets = build_networks(
            seed,
            fields["config"],
            agent_spec,
            latent_dim,
            latent_dim,
            action_magnitude=fields["action_magnitude"],
        )
        return cls(
            **fields,
            **nets.learner_fields(),
            critic=nets.critic,
            target_critic_params=jax.tree.map(jax.numpy.array, nets.critic.params),
        )

    @property
    def acting_critic_params(self) -> Any:
        return self.critic.params

    def batch_fields(self) -> dict[str, tuple[int, ...]]:
        return {spec.LATENTS: (self.latent_dim,)}

    def latent_q_heads(self, observations, latents):
        features = self.critic_features(self.critic.params, observations)
        return self.critic_def.apply(
            {"params": self.critic.params}, features, latents, method="head"
        )

    def _update(self, batches):
        return UPDATE(self, batches, self.execution)


def update_step(learner: PixelSACLearner, batch: dict[str, Any]):
    """One SAC gradient step on one batch (B, ...). Returns (learner, metrics)."""
    cfg = learner.config
    rng, k_aug, k_aug_next, k_next, k_redq, k_pi, k_drop = jax.random.split(learner.rng, 7)
    k_cql = jax.random.fold_in(k_drop, 1)  # the split above is unchanged: cql off is bit-exact
    obs = augment(cfg, k_aug, batch[spec.OBSERVATIONS])
    next_obs = augment(cfg, k_aug_next, batch[spec.NEXT_OBSERVATIONS], cfg.aug_next)
    temperature = sac.temperature(learner.temp)
    head = learner.critic_def.apply

    # ---- critic. "shared": z' is drawn from the target encoder's features of s' (the
    # Polyak-averaged critic encoder), which the TD target computes anyway.
    target_features = learner.critic_features(learner.target_critic_params, next_obs)
    next_dist = learner.actor_distribution(learner.actor.params, next_obs, target_features)
    next_latents, next_log_probs = next_dist.sample_and_log_prob(k_next)
    next_qs = head(
        {"params": learner.target_critic_params}, target_features, next_latents, method="head"
    )
    target_q = sac.soft_td_target(cfg, batch, next_qs, next_log_probs, temperature, k_redq)

    def q_fn(p):
        return head({"params": p}, obs, batch[spec.LATENTS], True, rngs={"dropout": k_drop})

    def q_and_penalty_fn(p):  # one encoder pass serves the TD term and the conservative term
        features = head({"params": p}, obs, method="encode")
        qs = head(
            {"params": p}, features, batch[spec.LATENTS], True, rngs={"dropout": k_drop},
            method="head",
        )  # fmt: skip
        return qs, cfg.cql_alpha * conservative_penalty(learner, p, obs, features, qs, k_cql)

    penalized = cfg.cql_alpha > 0
    critic, critic_metrics = sac.critic_step(
        learner.critic, q_and_penalty_fn if penalized else q_fn, target_q, penalized
    )
    target_params = sac.target_update(critic.params, learner.target_critic_params, cfg.tau)

    # ---- actor against the new critic; the critic's features do not depend on the actor.
    features = learner.critic_features(critic.params, obs)
    actor, temp, actor_metrics = learner.actor_temperature_step(
        obs,
        features,
        lambda z: head({"params": critic.params}, features, z, method="head"),
        temperature,
        k_pi,
        learner.critic.step,
        data_latents=batch[spec.LATENTS],
    )

    metrics = {
        **critic_metrics,
        "target_q": target_q.mean(),
        "target_actor_entropy": -next_log_probs.mean(),
        "next_log_probs": next_log_probs.mean(),
        "next_q_pi": next_qs.mean(),
        "next_latents_mean": next_latents.mean(),
        "next_latents_std": next_latents.std(),
        "next_latents_min": next_latents.min(),
        "next_latents_max": next_latents.max(),
        **actor_metrics,
    }
    new = learner.replace(
        actor=actor, critic=critic, target_critic_params=target_params, temp=temp, rng=rng
    )
    return new, metrics


def conservative_penalty(
    learner: PixelSACLearner, params, obs, features, data_qs, key
) -> jax.Array:
    """CQL's term without its alpha (see PixelSACConfig): logsumexp of the critic over M
    uniform and M actor latents, less log(2M), less `data_qs` (N, B), its value at the data's
    latents; a scalar, mean over heads and batch, differentiable in the critic's `params`
    (`features`: the critic encoder's output on `obs` under those params)."""
    m = learner.config.cql_samples
    head = learner.critic_def.apply
    b, bound = data_qs.shape[1], learner.action_magnitude
    k_uniform, k_actor = jax.random.split(key)
    uniform = jax.random.uniform(k_uniform, (m, b, learner.latent_dim), minval=-bound, maxval=bound)
    dist = learner.actor_distribution(learner.actor.params, obs, jax.lax.stop_gradient(features))
    drawn = jax.lax.stop_gradient(jax.vmap(dist.sample)(jax.random.split(k_actor, m)))
    latents = jnp.concatenate([uniform, drawn])  # (2M, B, L)
    sampled = jax.vmap(lambda z: head({"params": params}, features, z, method="head"))(latents)
    soft_max = jax.nn.logsumexp(sampled, axis=0) - jnp.log(2.0 * m)  # (N, B)
    return jnp.mean(soft_max - data_qs)


UPDATE = BlockRunner(update_step)
