"""DSRL-SAC: pixel SAC whose action is the base policy's latent noise (PixelSACLearner).

One gradient step, in the reference's order:
  1. augment obs (random crop + colour jitter) and, with `aug_next`, next obs (own keys);
  2. critic: a' ~ pi(.|s') with the current actor, target = r + discount * mask * reduce(Q_targ(s',
     a')) [- alpha * log pi]; loss = mean over heads and batch of (Q(s, a) - target)^2;
  3. soft target update over ALL critic params (encoder and bottleneck included);
  4. actor against the NEW critic: mean(alpha * log pi(a|s) - reduce(Q(s, a))), a reparameterised;
  5. temperature: alpha * (entropy - target_entropy), entropy from step 4's log-probs.

Same maths as the reference, less work: its unused actor forward pass on next_obs is gone, and
the new critic's encoder runs once on obs for the actor step (those features do not depend on the
actor, so no gradient flows through them). Deliberately different: the colour jitter is one
fused affine op per image (hue as a YIQ rotation, one clip at the end; see
dsrl.data.augmentations) and augmented pixels stay float instead of being re-quantised to uint8.
`encoder_sharing="shared"` (not the reference) runs 5 encoder passes per step instead of 9.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training.train_state import TrainState

from dsrl.agents.common import (
    PIXELS,
    STATE,
    batched_agent_observations,
    check_pixel_config,
    init_pixel_module,
    jitter_config,
    make_actor,
    make_critic_ensemble,
    make_pixel_encoder,
    make_train_state,
    policy_metrics,
    resolve_update_mode,
    select_observations,
    temperature_step,
    validate_observation_spec,
)
from dsrl.agents.pixel_sac import losses
from dsrl.agents.pixel_sac.config import PixelSACConfig, default_config
from dsrl.data.augmentations import augment_pixels
from dsrl.networks import (
    PixelMultiplexer,
    pixels_to_float,
    reduce_ensemble,
)
from dsrl.utils.jit import jit

BATCH_KEYS = ("observations", "actions", "rewards", "masks", "discounts", "next_observations")

# How many times each jitted function has been traced (a trace precedes every compilation).
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


class PixelSACLearner(flax.struct.PyTreeNode):
    """Immutable SAC agent over pixels + state. Every method returns a new learner.

    Params: `critic` holds the critic encoder, bottleneck and the vmapped Q heads; `actor` holds
    its own encoder + policy ("separate") or only the policy head ("shared").
    """

    actor: TrainState
    critic: TrainState
    target_critic_params: Any
    temp: TrainState
    rng: jax.Array
    config: PixelSACConfig = flax.struct.field(pytree_node=False)
    action_dim: int = flax.struct.field(pytree_node=False)
    target_entropy: float = flax.struct.field(pytree_node=False)
    observation_spec: tuple = flax.struct.field(pytree_node=False)
    critic_def: nn.Module = flax.struct.field(pytree_node=False)
    actor_def: nn.Module = flax.struct.field(pytree_node=False)

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        return default_config()

    @classmethod
    def create(
        cls,
        seed: int,
        observation_spec: Mapping[str, tuple[tuple[int, ...], Any]],
        action_dim: int,
        config: ml_collections.ConfigDict | Mapping[str, Any] | PixelSACConfig | None = None,
    ) -> PixelSACLearner:
        """observation_spec: {"pixels": ((H, W, C), uint8), "state": ((d,), float32), ...};
        other keys are ignored. action_dim: size of the agent's action (the noise it emits)."""
        if config is None:
            cfg = PixelSACConfig()
        elif isinstance(config, PixelSACConfig):
            cfg = config
        else:
            cfg = PixelSACConfig.from_config_dict(config)
        if int(action_dim) <= 0:
            raise ValueError(f"action_dim must be a positive int, got {action_dim}")
        action_dim = int(action_dim)
        spec = validate_observation_spec(observation_spec)
        check_pixel_config(cfg, spec)
        encoder = make_pixel_encoder(cfg)
        critic_def = PixelMultiplexer(
            encoder=encoder, network=make_critic_ensemble(cfg), latent_dim=cfg.latent_dim
        )
        actor_def = make_actor(cfg, encoder, action_dim)

        h, w, c = spec[PIXELS]
        obs = {PIXELS: jnp.zeros((1, h, w, c), jnp.uint8), STATE: jnp.zeros((1, *spec[STATE]))}
        actions = jnp.zeros((1, action_dim), jnp.float32)
        rng = jax.random.PRNGKey(seed)
        rng, k_critic, k_actor = jax.random.split(rng, 3)
        critic_params = init_pixel_module(critic_def, k_critic, cfg, spec, obs, actions)
        if cfg.encoder_sharing == "separate":
            actor_params = actor_def.init(k_actor, obs)["params"]
        else:
            feature_dim = cfg.latent_dim + spec[STATE][0]
            actor_params = actor_def.init(k_actor, jnp.zeros((1, feature_dim)))["params"]

        critic = make_train_state(critic_def.apply, critic_params, cfg.critic_lr)
        actor = make_train_state(actor_def.apply, actor_params, cfg.actor_lr)
        log_temp = {"log_temp": jnp.asarray(math.log(cfg.init_temperature), jnp.float32)}
        temp = make_train_state(None, log_temp, cfg.temp_lr)
        return cls(
            actor=actor,
            critic=critic,
            target_critic_params=jax.tree.map(jnp.array, critic_params),
            temp=temp,
            rng=rng,
            config=cfg,
            action_dim=action_dim,
            target_entropy=float(cfg.resolved_target_entropy(action_dim)),
            observation_spec=tuple(sorted(spec.items())),
            critic_def=critic_def,
            actor_def=actor_def,
        )

    # ------------------------------------------------------------------ acting
    def sample_actions(self, observations: Mapping[str, Any]) -> tuple[np.ndarray, PixelSACLearner]:
        """Stochastic actions (B, A) within +-action_magnitude and the learner with its PRNG key
        advanced. An unbatched observation (pixels (H, W, C)) gives actions (A,)."""
        obs, unbatched = self._prepare_observations(observations)
        actions, rng = _sample_actions_jit(self, obs)
        actions = np.asarray(actions)
        return (actions[0] if unbatched else actions), self.replace(rng=rng)

    def eval_actions(self, observations: Mapping[str, Any]) -> np.ndarray:
        """Distribution mode action_magnitude * tanh(mean): (B, A), or (A,) if unbatched."""
        obs, unbatched = self._prepare_observations(observations)
        actions = np.asarray(_eval_actions_jit(self, obs))
        return actions[0] if unbatched else actions

    def _prepare_observations(self, observations: Mapping[str, Any]):
        return batched_agent_observations(observations, self.observation_spec)

    # ---------------------------------------------------------------- learning
    def update_mode(self) -> str:
        """The resolved execution mode of `update` on the current backend ("loop" on XLA:CPU,
        "scan" elsewhere, unless the config forces one)."""
        return resolve_update_mode(self.config.update_mode)

    def update(self, batches: Mapping[str, Any]) -> tuple[PixelSACLearner, dict[str, float]]:
        """Run K gradient steps; every leaf of `batches` has leading axes (K, B).

        batches: {"observations": {"pixels": uint8 (K,B,H,W,C), "state": (K,B,d)}, "actions":
        (K,B,A), "rewards", "masks", "discounts": (K,B), "next_observations": {...}}.
        All K steps go to the device in one transfer. Returns the new learner and the metrics of
        the LAST of the K steps as Python floats (one host sync per call).
        """
        batches = self._prepare_batches(batches)
        num_steps = batches["rewards"].shape[0]
        learner = self
        if self.update_mode() == "loop":
            steps = [jax.tree.map(lambda x, k=k: x[k], batches) for k in range(num_steps)]
            steps = jax.device_put(steps)
            metrics = None
            for step_batch in steps:
                learner, metrics = _update_step_jit(learner, step_batch)
        else:
            length = self.config.scan_length
            chunks, valid = [], []
            for start in range(0, num_steps, length):
                chunk = jax.tree.map(lambda x, s=start: x[s : s + length], batches)
                n = chunk["rewards"].shape[0]
                if n < length:  # pad the last chunk; its padded steps are skipped on device
                    chunk = jax.tree.map(
                        lambda x, n=n: np.concatenate([x, np.repeat(x[-1:], length - n, 0)]), chunk
                    )
                chunks.append(chunk)
                valid.append(np.int32(n))
            chunks, valid = jax.device_put((chunks, valid))
            metrics = None
            for chunk, n in zip(chunks, valid, strict=True):
                learner, metrics = _update_scan_jit(learner, chunk, n)
        return learner, {k: float(v) for k, v in jax.device_get(metrics).items()}

    def _prepare_batches(self, batches: Mapping[str, Any]) -> dict[str, Any]:
        missing = [k for k in BATCH_KEYS if k not in batches]
        if missing:
            raise ValueError(
                f"update batches lack {missing}; expected keys {list(BATCH_KEYS)} with leading "
                "(K, B) axes (ReplayBuffer.sample(batch_size, num_batches=K))"
            )
        out = {
            "observations": select_observations(batches["observations"], "batches['observations']"),
            "next_observations": select_observations(
                batches["next_observations"], "batches['next_observations']"
            ),
            "actions": np.asarray(batches["actions"], np.float32),
        }
        for key in ("rewards", "masks", "discounts"):
            out[key] = np.asarray(batches[key], np.float32)
        k_b = out["rewards"].shape
        spec = dict(self.observation_spec)
        expected = {
            "rewards": k_b,
            "masks": k_b,
            "discounts": k_b,
            "actions": (*k_b, self.action_dim),
        }
        for obs_key in ("observations", "next_observations"):
            expected[f"{obs_key}/pixels"] = (*k_b, *spec[PIXELS])
            expected[f"{obs_key}/state"] = (*k_b, *spec[STATE])
        got = {k: out[k].shape for k in ("rewards", "masks", "discounts", "actions")}
        for obs_key in ("observations", "next_observations"):
            got[f"{obs_key}/pixels"] = out[obs_key][PIXELS].shape
            got[f"{obs_key}/state"] = out[obs_key][STATE].shape
        if len(k_b) != 2 or got != expected:
            bad = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
            raise ValueError(
                f"update batches need a leading (K, B) axis on every leaf; mismatched (got, "
                f"expected) shapes: {bad or {'rewards': (k_b, '(K, B)')}}"
            )
        if out["actions"].ndim == 4:
            out["actions"] = out["actions"].reshape(*k_b, -1)
        return out


# ----------------------------------------------------------------------- jitted pieces
def _actor_distribution(learner: PixelSACLearner, actor_params, observations, critic_features):
    """The actor's TanhGaussian: from its own encoder ("separate") or from the given critic
    features, which the caller has stopped gradients through ("shared")."""
    if learner.config.encoder_sharing == "separate":
        return learner.actor_def.apply({"params": actor_params}, observations)
    return learner.actor_def.apply({"params": actor_params}, critic_features)


def _encode_critic(learner: PixelSACLearner, params, observations) -> jax.Array:
    return learner.critic_def.apply({"params": params}, observations, method="encode")


def _update_step(learner: PixelSACLearner, batch: dict[str, Any]):
    """One SAC gradient step on one batch (B, ...). Returns (learner, metrics)."""
    TRACE_COUNTS["update_step"] += 1
    cfg = learner.config
    rng, k_aug, k_aug_next, k_next, k_redq, k_pi, k_drop = jax.random.split(learner.rng, 7)
    jitter = jitter_config(cfg)
    obs_in, next_in = batch["observations"], batch["next_observations"]
    obs = {
        PIXELS: augment_pixels(k_aug, obs_in[PIXELS], cfg.crop_padding, jitter),
        STATE: obs_in[STATE],
    }
    if cfg.aug_next:
        next_pixels = augment_pixels(k_aug_next, next_in[PIXELS], cfg.crop_padding, jitter)
    else:
        next_pixels = pixels_to_float(next_in[PIXELS])
    next_obs = {PIXELS: next_pixels, STATE: next_in[STATE]}
    temperature = jnp.exp(learner.temp.params["log_temp"])
    shared = cfg.encoder_sharing == "shared"

    # ---- critic
    target_features = _encode_critic(learner, learner.target_critic_params, next_obs)
    # "shared": a' is drawn from the target encoder's features of s' (the Polyak-averaged critic
    # encoder), which the TD target computes anyway: one encoder pass fewer per step.
    next_actor_features = jax.lax.stop_gradient(target_features) if shared else None
    next_dist = _actor_distribution(learner, learner.actor.params, next_obs, next_actor_features)
    next_actions, next_log_probs = next_dist.sample_and_log_prob(k_next)
    next_qs = learner.critic_def.apply(
        {"params": learner.target_critic_params}, target_features, next_actions, method="head"
    )
    next_q = reduce_ensemble(next_qs, cfg.critic_reduction, k_redq, cfg.num_min_qs or None)
    target_q = losses.td_target(
        batch["rewards"],
        batch["discounts"],
        batch["masks"],
        next_q,
        next_log_probs if cfg.backup_entropy else None,
        temperature,
    )

    def critic_loss_fn(params):
        qs = learner.critic_def.apply(
            {"params": params}, obs, batch["actions"], True, rngs={"dropout": k_drop}
        )
        return losses.critic_loss(qs, target_q), qs

    (critic_loss, qs), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
        learner.critic.params
    )
    critic = learner.critic.apply_gradients(grads=grads)
    target_params = optax.incremental_update(critic.params, learner.target_critic_params, cfg.tau)

    # ---- actor, against the new critic; the critic's features do not depend on the actor.
    critic_features = jax.lax.stop_gradient(_encode_critic(learner, critic.params, obs))

    def actor_loss_fn(params):
        dist = _actor_distribution(learner, params, obs, critic_features)
        actions, log_probs = dist.sample_and_log_prob(k_pi)
        q_pi = learner.critic_def.apply(
            {"params": critic.params}, critic_features, actions, method="head"
        )
        q = reduce_ensemble(q_pi, cfg.critic_reduction)
        return losses.actor_loss(temperature, log_probs, q), (dist, log_probs, q)

    (actor_loss, (dist, log_probs, q_pi)), actor_grads = jax.value_and_grad(
        actor_loss_fn, has_aux=True
    )(learner.actor.params)
    actor = learner.actor.apply_gradients(grads=actor_grads)

    # ---- temperature
    temp, entropy, temp_loss = temperature_step(learner.temp, log_probs, learner.target_entropy)

    metrics = {
        # critic (reference names)
        "critic_loss": critic_loss,
        "q": qs.mean(),
        "target_actor_entropy": -next_log_probs.mean(),
        "next_actions_sampled": next_actions.mean(),
        "next_log_probs": next_log_probs.mean(),
        "next_q_pi": next_qs.mean(),
        "target_q": target_q.mean(),
        "next_actions_mean": next_actions.mean(),
        "next_actions_std": next_actions.std(),
        "next_actions_min": next_actions.min(),
        "next_actions_max": next_actions.max(),
        # actor (pre-tanh mean / std, as the reference)
        "actor_loss": actor_loss,
        "entropy": entropy,
        "q_pi_in_actor": q_pi.mean(),
        **policy_metrics(dist),
        # temperature
        "temperature": temperature,
        "temperature_loss": temp_loss,
    }
    new_learner = learner.replace(
        actor=actor, critic=critic, target_critic_params=target_params, temp=temp, rng=rng
    )
    return new_learner, metrics


_update_step_jit = jit(_update_step)


def _update_scan(learner: PixelSACLearner, chunk: dict[str, Any], num_valid: jax.Array):
    """`scan_length` steps in one lax.scan; steps at index >= num_valid (padding) are skipped.
    Returns the learner and the metrics of step num_valid - 1."""
    TRACE_COUNTS["update_scan"] += 1
    one_batch = jax.tree.map(lambda x: x[0], chunk)
    metric_shapes = jax.eval_shape(_update_step, learner, one_batch)[1]
    zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

    def body(carry, xs):
        index, batch = xs
        return jax.lax.cond(
            index < num_valid, _update_step, lambda lrn, _: (lrn, zero_metrics), carry, batch
        )

    length = chunk["rewards"].shape[0]
    learner, metrics = jax.lax.scan(body, learner, (jnp.arange(length), chunk))
    return learner, jax.tree.map(lambda m: m[num_valid - 1], metrics)


_update_scan_jit = jit(_update_scan)


@jit
def _sample_actions_jit(learner: PixelSACLearner, observations):
    TRACE_COUNTS["sample_actions"] += 1
    rng, key = jax.random.split(learner.rng)
    features = None
    if learner.config.encoder_sharing == "shared":
        features = _encode_critic(learner, learner.critic.params, observations)
    dist = _actor_distribution(learner, learner.actor.params, observations, features)
    return dist.sample(key), rng


@jit
def _eval_actions_jit(learner: PixelSACLearner, observations):
    features = None
    if learner.config.encoder_sharing == "shared":
        features = _encode_critic(learner, learner.critic.params, observations)
    return _actor_distribution(learner, learner.actor.params, observations, features).mode()
