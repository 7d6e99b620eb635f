"""DSRL-NA: an action-space critic distilled into a noise-space critic (NoiseAliasingLearner).

Paper Algorithm 1 with the official code's details (see docs/dsrl_na.md):
  critic/actor step (K per `update` call), on a batch of stored transitions:
    1. Q^A(s, a) by TD on the EXECUTED chunks a in the buffer ("action_chunks", flattened), with
       a' = pi_dp(s', noise(w')), w' ~ pi^W(.|s') drawn by the current actor and turned into an
       action chunk by the frozen base policy INSIDE this jitted step; target
       y = r + discount * mask * (reduce_i Qbar^A_i(s', a') [- alpha * log pi^W(w'|s')]);
    2. soft update of Qbar^A;
    3. actor: mean(alpha * log pi^W(w|s) - reduce_i Q^W_i(s, w)); w stays within
       +-action_magnitude (tanh-Gaussian), which the official code does not enforce;
    4. temperature as in SAC.
  distillation step (round(K * noise_critic_grad_steps / utd) per call, after the K steps):
    w ~ N(0, I) in the agent's action space, a = pi_dp(s, noise(w)); Q^W(s, w) regresses on the
    ONLINE Q^A(s, a), head by head ("per_head") or on the head mean ("mean"). Q^W has no target.

The agent's action w is the noise parameterisation's action (e.g. 32-d for "repeat"); `noise_fn`
(NoiseParam.to_noise_jax) lifts it to the base policy's (H, D) noise. No gradient ever flows
through the base policy: it only produces regression inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping
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
from dsrl.agents.noise_aliasing import losses
from dsrl.agents.noise_aliasing.config import NoiseAliasingConfig, default_config
from dsrl.data.augmentations import augment_pixels
from dsrl.networks import (
    PixelMultiplexer,
    pixels_to_float,
    reduce_ensemble,
)
from dsrl.utils.jit import jit

# DSRL-NA also reads the base policy's observation keys from the buffer.
_STORE_HINT = (
    " (the base policy's keys are stored by the loop with LoopConfig.policy_observation_keys)"
)
BATCH_KEYS = ("observations", "action_chunks", "rewards", "masks", "discounts", "next_observations")

# How many times each jitted function has been traced (a trace precedes every compilation).
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

# (params, base-policy observations {key: (B, ...)}, noise (B, H, D)) -> chunks (B, H, A).
BasePolicyFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class JaxBasePolicy:
    """A frozen base policy as a pure JAX function, callable inside the jitted update.

    `observation_spec` names the base policy's own observation keys ({key: (shape, dtype)} for
    ONE observation); the replay buffer must store them in "observations" and
    "next_observations" next to the agent's "pixels" / "state". `params` travel to the jitted
    update as an argument (not a compile-time constant) and are never checkpointed with the agent.
    Compared by identity: one JaxBasePolicy object means one compilation.
    """

    apply_fn: BasePolicyFn
    params: Any
    observation_spec: Mapping[str, tuple[tuple[int, ...], Any]]
    noise_shape: tuple[int, int]
    action_dim: int


def as_jax_base_policy(base_policy: Any) -> JaxBasePolicy:
    """A JaxBasePolicy from a JaxBasePolicy or a policy with a pure-JAX sampler.

    Supported: `dsrl.base_policies.flow_mlp.FlowMLPPolicy` (observation key `config.state_key`).
    A Pi0 policy would need its images and tokenized prompt stored in the buffer; see
    docs/dsrl_na.md."""
    if isinstance(base_policy, JaxBasePolicy):
        return base_policy
    cfg = getattr(base_policy, "config", None)
    if hasattr(base_policy, "sample_actions_jax") and hasattr(cfg, "state_key"):
        return JaxBasePolicy(
            apply_fn=base_policy.sample_actions_jax,
            params=base_policy.params,
            observation_spec={cfg.state_key: ((int(cfg.state_dim),), np.float32)},
            noise_shape=tuple(int(n) for n in base_policy.noise_shape),
            action_dim=int(base_policy.action_dim),
        )
    raise ValueError(
        f"DSRL-NA runs the base policy inside its jitted update and needs a pure-JAX sampler; "
        f"{type(base_policy).__name__} has none. Pass a JaxBasePolicy(apply_fn, params, "
        "observation_spec, noise_shape, action_dim) or a FlowMLPPolicy, or use "
        "--algorithm pixel_sac (which never calls the base policy during updates)."
    )


class NoiseAliasingLearner(flax.struct.PyTreeNode):
    """Immutable DSRL-NA agent over pixels + state. Every method returns a new learner.

    Params: `action_critic` = Q^A (encoder, bottleneck, vmapped heads over [features, flattened
    executed chunk]); `noise_critic` = Q^W (its own encoder + heads over [features, w], or heads
    only when `noise_critic_encoder="shared"`); `actor` as in PixelSACLearner.
    """

    actor: TrainState
    action_critic: TrainState
    target_action_critic_params: Any
    noise_critic: TrainState
    temp: TrainState
    rng: jax.Array
    config: NoiseAliasingConfig = flax.struct.field(pytree_node=False)
    action_dim: int = flax.struct.field(pytree_node=False)
    query_freq: int = flax.struct.field(pytree_node=False)
    target_entropy: float = flax.struct.field(pytree_node=False)
    observation_spec: tuple = flax.struct.field(pytree_node=False)
    action_critic_def: nn.Module = flax.struct.field(pytree_node=False)
    noise_critic_def: nn.Module = flax.struct.field(pytree_node=False)
    actor_def: nn.Module = flax.struct.field(pytree_node=False)
    base_policy: JaxBasePolicy = flax.struct.field(pytree_node=False)
    noise_fn: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        return default_config()

    @classmethod
    def create(
        cls,
        seed: int,
        observation_spec: Mapping[str, tuple[tuple[int, ...], Any]],
        action_dim: int,
        config: ml_collections.ConfigDict | Mapping[str, Any] | NoiseAliasingConfig | None = None,
        *,
        base_policy: Any = None,
        noise_param: Any = None,
        noise_fn: Callable[[jax.Array], jax.Array] | None = None,
        query_freq: int | None = None,
    ) -> NoiseAliasingLearner:
        """observation_spec: the agent's {"pixels": ((H, W, C), uint8), "state": ((d,), f32)};
        action_dim: the agent's action size (NoiseParam.action_dim).

        base_policy: a JaxBasePolicy or a FlowMLPPolicy (see `as_jax_base_policy`).
        noise_param / noise_fn: how an agent action (B, action_dim) becomes noise (B, H, D):
        a `dsrl.steering.NoiseParam` (its `to_noise`) or a JAX function.
        query_freq: executed steps per chunk (the buffer's "action_chunks" length); default H.
        """
        if config is None:
            cfg = NoiseAliasingConfig()
        elif isinstance(config, NoiseAliasingConfig):
            cfg = config
        else:
            cfg = NoiseAliasingConfig.from_config_dict(config)
        if int(action_dim) <= 0:
            raise ValueError(f"action_dim must be a positive int, got {action_dim}")
        action_dim = int(action_dim)
        if base_policy is None:
            raise ValueError(
                "NoiseAliasingLearner.create needs base_policy=... (a FlowMLPPolicy or a "
                "JaxBasePolicy): DSRL-NA turns noise into action chunks inside its update"
            )
        jax_policy = as_jax_base_policy(base_policy)
        if noise_fn is None:
            if noise_param is None:
                raise ValueError(
                    "NoiseAliasingLearner.create needs noise_param=<dsrl.steering.NoiseParam> "
                    "(or noise_fn) to map agent actions to the base policy's noise"
                )
            if int(noise_param.latent_dim) != action_dim:
                raise ValueError(
                    f"noise_param.latent_dim={noise_param.latent_dim} != action_dim={action_dim}; "
                    "the learner's action is the noise parameterisation's action"
                )
            noise_fn = noise_param.to_noise
        horizon = int(jax_policy.noise_shape[0])
        query_freq = horizon if query_freq is None else int(query_freq)
        if not 1 <= query_freq <= horizon:
            raise ValueError(f"query_freq={query_freq} must be in [1, horizon={horizon}]")
        noise_out = jax.eval_shape(noise_fn, jax.ShapeDtypeStruct((1, action_dim), jnp.float32))
        if tuple(noise_out.shape[1:]) != tuple(jax_policy.noise_shape):
            raise ValueError(
                f"noise_fn maps actions (B, {action_dim}) to noise {tuple(noise_out.shape)}, but "
                f"the base policy expects (B, *{tuple(jax_policy.noise_shape)})"
            )
        spec = validate_observation_spec(observation_spec)
        check_pixel_config(cfg, spec)
        clash = sorted(set(jax_policy.observation_spec) & {PIXELS, STATE})
        if clash:
            raise ValueError(f"base-policy observation keys {clash} clash with the agent's keys")

        encoder = make_pixel_encoder(cfg)
        action_critic_def = PixelMultiplexer(
            encoder=encoder, network=make_critic_ensemble(cfg), latent_dim=cfg.latent_dim
        )
        if cfg.noise_critic_encoder == "separate":
            noise_critic_def: nn.Module = PixelMultiplexer(
                encoder=encoder, network=make_critic_ensemble(cfg), latent_dim=cfg.latent_dim
            )
        else:
            noise_critic_def = make_critic_ensemble(cfg)
        actor_def = make_actor(cfg, encoder, action_dim)

        h, w, c = spec[PIXELS]
        obs = {PIXELS: jnp.zeros((1, h, w, c), jnp.uint8), STATE: jnp.zeros((1, *spec[STATE]))}
        chunk_dim = query_freq * int(jax_policy.action_dim)
        features = jnp.zeros((1, cfg.latent_dim + spec[STATE][0]))
        noise_actions = jnp.zeros((1, action_dim), jnp.float32)
        rng = jax.random.PRNGKey(seed)
        rng, k_qa, k_qw, k_actor = jax.random.split(rng, 4)
        qa_params = init_pixel_module(
            action_critic_def, k_qa, cfg, spec, obs, jnp.zeros((1, chunk_dim))
        )
        if cfg.noise_critic_encoder == "separate":
            qw_params = noise_critic_def.init(k_qw, obs, noise_actions)["params"]
        else:
            qw_params = noise_critic_def.init(k_qw, features, noise_actions)["params"]
        if cfg.encoder_sharing == "separate":
            actor_params = actor_def.init(k_actor, obs)["params"]
        else:
            actor_params = actor_def.init(k_actor, features)["params"]

        log_temp = {"log_temp": jnp.asarray(math.log(cfg.init_temperature), jnp.float32)}
        full_spec = dict(spec)
        for key, (shape, _) in jax_policy.observation_spec.items():
            full_spec[key] = tuple(int(s) for s in shape)
        return cls(
            actor=make_train_state(actor_def.apply, actor_params, cfg.actor_lr),
            action_critic=make_train_state(action_critic_def.apply, qa_params, cfg.critic_lr),
            target_action_critic_params=jax.tree.map(jnp.array, qa_params),
            noise_critic=make_train_state(noise_critic_def.apply, qw_params, cfg.noise_critic_lr),
            temp=make_train_state(None, log_temp, cfg.temp_lr),
            rng=rng,
            config=cfg,
            action_dim=action_dim,
            query_freq=query_freq,
            target_entropy=float(cfg.resolved_target_entropy(action_dim)),
            observation_spec=tuple(sorted(full_spec.items())),
            action_critic_def=action_critic_def,
            noise_critic_def=noise_critic_def,
            actor_def=actor_def,
            base_policy=jax_policy,
            noise_fn=noise_fn,
        )

    @property
    def policy_observation_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """The base policy's observation keys the replay buffer must store (for one obs)."""
        return {
            k: (tuple(v[0]), np.dtype(v[1])) for k, v in self.base_policy.observation_spec.items()
        }

    @property
    def chunk_shape(self) -> tuple[int, int]:
        """The stored "action_chunks" shape of one transition: (query_freq, robot action dim)."""
        return (self.query_freq, int(self.base_policy.action_dim))

    # ------------------------------------------------------------------ acting
    def sample_actions(
        self, observations: Mapping[str, Any]
    ) -> tuple[np.ndarray, NoiseAliasingLearner]:
        """Stochastic agent actions w (B, A) within +-action_magnitude, and the learner with its
        PRNG key advanced. An unbatched observation (pixels (H, W, C)) gives (A,)."""
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
        """The resolved execution mode of `update` on the current backend (as PixelSACLearner:
        a Python loop over jitted steps on XLA:CPU, one scanned call elsewhere)."""
        return resolve_update_mode(self.config.update_mode)

    def update(self, batches: Mapping[str, Any]) -> tuple[NoiseAliasingLearner, dict[str, float]]:
        """K critic/actor steps, then `config.num_distill_steps(K)` distillation steps.

        batches (leading (K, B) on every leaf): {"observations": {"pixels", "state", + the base
        policy's keys (`policy_observation_spec`)}, "action_chunks": (K, B, query_freq, A_robot),
        "rewards", "masks", "discounts": (K, B), "next_observations": {...}}; other keys (e.g.
        the stored noise "actions") are ignored. Distillation step j uses the observations of
        batch j % K with fresh noise. Returns the new learner and the metrics of the last
        critic/actor step and the last distillation step as Python floats.
        """
        batches = self._prepare_batches(batches)
        num_steps = batches["rewards"].shape[0]
        num_distill = self.config.num_distill_steps(num_steps)
        bp_params = self.base_policy.params
        learner = self
        if self.update_mode() == "loop":
            steps = [jax.tree.map(lambda x, k=k: x[k], batches) for k in range(num_steps)]
            steps = jax.device_put(steps)
            metrics = None
            for step_batch in steps:
                learner, metrics = _critic_actor_step_jit(learner, step_batch, bp_params)
            distill_metrics = None
            for j in range(num_distill):
                obs = steps[j % num_steps]["observations"]
                learner, distill_metrics = _distill_step_jit(learner, obs, bp_params)
            metrics = {**metrics, **distill_metrics}
        else:
            learner, metrics = _update_block_jit(
                learner, jax.device_put(batches), bp_params, num_distill
            )
        return learner, {k: float(v) for k, v in jax.device_get(metrics).items()}

    def td_targets(self, batch: Mapping[str, Any]) -> np.ndarray:
        """The Q^A TD targets (B,) of ONE batch (leaves with a leading B, no K axis), with
        unaugmented next observations and a next action drawn from the learner's current key
        (the learner is not advanced): for inspecting what the critic regresses on."""
        batches = self._prepare_batches(jax.tree.map(lambda x: np.asarray(x)[None], dict(batch)))
        one = jax.tree.map(lambda x: x[0], batches)
        return np.asarray(_td_targets_jit(self, one, self.base_policy.params))

    def _prepare_batches(self, batches: Mapping[str, Any]) -> dict[str, Any]:
        missing = [k for k in BATCH_KEYS if k not in batches]
        if missing:
            raise ValueError(
                f"DSRL-NA update batches lack {missing}; expected {list(BATCH_KEYS)} with "
                "leading (K, B) axes. Build the replay buffer with the executed chunks and the "
                "base policy's observation keys (loop.example_transition(..., query_freq=..., "
                "robot_action_dim=..., noise_shape=...), LoopConfig(store_action_chunks=True, "
                "policy_observation_keys=...))"
            )
        policy_spec = self.policy_observation_spec
        out = {
            "observations": select_observations(
                batches["observations"], "batches['observations']", policy_spec, _STORE_HINT
            ),
            "next_observations": select_observations(
                batches["next_observations"],
                "batches['next_observations']",
                policy_spec,
                _STORE_HINT,
            ),
            "action_chunks": np.asarray(batches["action_chunks"], np.float32),
        }
        for key in ("rewards", "masks", "discounts"):
            out[key] = np.asarray(batches[key], np.float32)
        k_b = out["rewards"].shape
        spec = dict(self.observation_spec)
        expected = {
            "rewards": k_b,
            "masks": k_b,
            "discounts": k_b,
            "action_chunks": (*k_b, *self.chunk_shape),
        }
        got = {k: out[k].shape for k in expected}
        for obs_key in ("observations", "next_observations"):
            for key, shape in spec.items():
                expected[f"{obs_key}/{key}"] = (*k_b, *shape)
                got[f"{obs_key}/{key}"] = out[obs_key][key].shape
        if len(k_b) != 2 or got != expected:
            bad = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
            raise ValueError(
                f"DSRL-NA update batches need a leading (K, B) axis on every leaf; mismatched "
                f"(got, expected) shapes: {bad or {'rewards': (k_b, '(K, B)')}}"
            )
        return out


# ----------------------------------------------------------------------- jitted pieces
def _agent_obs(obs: Mapping[str, Any]) -> dict[str, Any]:
    return {PIXELS: obs[PIXELS], STATE: obs[STATE]}


def _policy_obs(learner: NoiseAliasingLearner, obs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: obs[k] for k in learner.base_policy.observation_spec}


def _augment(learner: NoiseAliasingLearner, key: jax.Array, obs: Mapping[str, Any], aug: bool):
    cfg = learner.config
    if aug:
        pixels = augment_pixels(key, obs[PIXELS], cfg.crop_padding, jitter_config(cfg))
    else:
        pixels = pixels_to_float(obs[PIXELS])
    return {PIXELS: pixels, STATE: obs[STATE]}


def _encode(module: nn.Module, params, observations) -> jax.Array:
    return jax.lax.stop_gradient(module.apply({"params": params}, observations, method="encode"))


def _actor_distribution(learner: NoiseAliasingLearner, actor_params, observations, qa_params):
    """pi^W(.|s): from the actor's own encoder ("separate") or from Q^A's encoder features under
    stop_gradient ("shared")."""
    if learner.config.encoder_sharing == "separate":
        return learner.actor_def.apply({"params": actor_params}, observations)
    features = _encode(learner.action_critic_def, qa_params, observations)
    return learner.actor_def.apply({"params": actor_params}, features)


def _noise_qs(learner: NoiseAliasingLearner, qw_params, qa_params, observations, noise_actions):
    """Q^W(s, w): (num_qs, B). With a shared encoder Q^W reads Q^A's features (no gradient)."""
    if learner.config.noise_critic_encoder == "separate":
        return learner.noise_critic_def.apply({"params": qw_params}, observations, noise_actions)
    features = _encode(learner.action_critic_def, qa_params, observations)
    return learner.noise_critic_def.apply({"params": qw_params}, features, noise_actions)


def _chunks_from_noise(learner, bp_params, policy_obs, noise_actions) -> jax.Array:
    """Agent actions w (B, A) -> executed chunks a = pi_dp(s, noise(w)), flattened (B, qf * A).
    The base policy is frozen: no gradient flows through it."""
    noise = learner.noise_fn(jax.lax.stop_gradient(noise_actions))
    chunks = learner.base_policy.apply_fn(bp_params, policy_obs, noise)
    return jax.lax.stop_gradient(losses.executed_chunk(chunks, learner.query_freq))


def _action_critic_target(learner, batch, next_obs, bp_params, k_next, k_redq, temperature):
    """y = r + discount * mask * (reduce_i Qbar^A_i(s', a') [- alpha * log pi^W(w'|s')]) with
    w' ~ pi^W(.|s') and a' = pi_dp(s', noise(w')) cut to the executed steps. Returns (y (B,),
    (next_qs (N, B), log pi^W(w'|s') (B,), a' (B, qf * A)))."""
    cfg = learner.config
    next_dist = _actor_distribution(
        learner, learner.actor.params, next_obs, learner.action_critic.params
    )
    next_w, next_log_probs = next_dist.sample_and_log_prob(k_next)
    next_chunks = _chunks_from_noise(
        learner, bp_params, _policy_obs(learner, batch["next_observations"]), next_w
    )
    next_qs = learner.action_critic_def.apply(
        {"params": learner.target_action_critic_params}, next_obs, next_chunks
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
    return target_q, (next_qs, next_log_probs, next_chunks)


@jit
def _td_targets_jit(learner: NoiseAliasingLearner, batch: dict[str, Any], bp_params):
    _, k_next, k_redq = jax.random.split(learner.rng, 3)
    next_obs = _augment(learner, k_next, batch["next_observations"], False)
    temperature = jnp.exp(learner.temp.params["log_temp"])
    return _action_critic_target(learner, batch, next_obs, bp_params, k_next, k_redq, temperature)[
        0
    ]


def _critic_actor_step(learner: NoiseAliasingLearner, batch: dict[str, Any], bp_params):
    """One Q^A TD step, the soft target update, one actor step on Q^W, one temperature step."""
    TRACE_COUNTS["critic_actor_step"] += 1
    cfg = learner.config
    rng, k_aug, k_aug_next, k_next, k_redq, k_pi, k_drop = jax.random.split(learner.rng, 7)
    obs = _augment(learner, k_aug, batch["observations"], True)
    next_obs = _augment(learner, k_aug_next, batch["next_observations"], cfg.aug_next)
    temperature = jnp.exp(learner.temp.params["log_temp"])

    # ---- Q^A: TD on the executed chunks, bootstrapping through the base policy.
    target_q, (next_qs, next_log_probs, next_chunks) = _action_critic_target(
        learner, batch, next_obs, bp_params, k_next, k_redq, temperature
    )
    chunks = batch["action_chunks"].reshape(batch["action_chunks"].shape[0], -1)

    def critic_loss_fn(params):
        qs = learner.action_critic_def.apply(
            {"params": params}, obs, chunks, True, rngs={"dropout": k_drop}
        )
        return losses.critic_loss(qs, target_q), qs

    (critic_loss, qs), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
        learner.action_critic.params
    )
    action_critic = learner.action_critic.apply_gradients(grads=grads)
    target_params = optax.incremental_update(
        action_critic.params, learner.target_action_critic_params, cfg.tau
    )

    # ---- actor on Q^W only (the paper's line 6): no gradient through the base policy.
    def actor_loss_fn(params):
        dist = _actor_distribution(learner, params, obs, action_critic.params)
        w, log_probs = dist.sample_and_log_prob(k_pi)
        q_w = _noise_qs(learner, learner.noise_critic.params, action_critic.params, obs, w)
        q = reduce_ensemble(q_w, cfg.critic_reduction)
        return losses.actor_loss(temperature, log_probs, q), (dist, log_probs, q, w)

    (actor_loss, (dist, log_probs, q_pi, w_pi)), actor_grads = jax.value_and_grad(
        actor_loss_fn, has_aux=True
    )(learner.actor.params)
    actor = learner.actor.apply_gradients(grads=actor_grads)

    # ---- temperature
    temp, entropy, temp_loss = temperature_step(learner.temp, log_probs, learner.target_entropy)

    metrics = {
        "critic_loss": critic_loss,
        "q": qs.mean(),
        "target_q": target_q.mean(),
        "next_q_pi": next_qs.mean(),
        "next_log_probs": next_log_probs.mean(),
        "next_chunk_abs_mean": jnp.abs(next_chunks).mean(),
        "actor_loss": actor_loss,
        "entropy": entropy,
        "q_pi_in_actor": q_pi.mean(),
        "actions_abs_max": jnp.abs(w_pi).max(),
        **policy_metrics(dist),
        "temperature": temperature,
        "temperature_loss": temp_loss,
    }
    new_learner = learner.replace(
        actor=actor,
        action_critic=action_critic,
        target_action_critic_params=target_params,
        temp=temp,
        rng=rng,
    )
    return new_learner, metrics


def _distill_step(learner: NoiseAliasingLearner, observations: dict[str, Any], bp_params):
    """One Q^W step on B states x M fresh noises (M = `distill_noises_per_state`):
    w ~ N(0, I), Q^W(s, w) <- online Q^A(s, pi_dp(s, noise(w))). Each encoder runs once per
    state; the base policy and the critic heads run on the B * M (state, noise) pairs."""
    TRACE_COUNTS["distill_step"] += 1
    cfg = learner.config
    rng, k_aug, k_w = jax.random.split(learner.rng, 3)
    obs = _augment(learner, k_aug, observations, True)
    batch_size = observations[STATE].shape[0]
    m = int(cfg.distill_noises_per_state)

    def per_pair(x):  # (B, ...) -> (B * M, ...), each state's M copies adjacent
        return jnp.repeat(x, m, axis=0)

    w = jax.random.normal(k_w, (batch_size * m, learner.action_dim), jnp.float32)
    if cfg.distill_noise_clip:
        w = jnp.clip(w, -cfg.action_magnitude, cfg.action_magnitude)
    policy_obs = jax.tree.map(per_pair, _policy_obs(learner, observations))
    chunks = _chunks_from_noise(learner, bp_params, policy_obs, w)
    qa_def, qa_params = learner.action_critic_def, learner.action_critic.params
    qa_features = per_pair(_encode(qa_def, qa_params, obs))
    action_qs = qa_def.apply({"params": qa_params}, qa_features, chunks, method="head")
    targets = losses.distillation_targets(action_qs, cfg.distill_target, cfg.num_qs)

    def loss_fn(params):
        if cfg.noise_critic_encoder == "separate":
            feats = learner.noise_critic_def.apply({"params": params}, obs, method="encode")
            noise_qs = learner.noise_critic_def.apply(
                {"params": params}, per_pair(feats), w, method="head"
            )
        else:  # Q^A's features, no gradient into Q^A
            noise_qs = learner.noise_critic_def.apply({"params": params}, qa_features, w)
        return losses.noise_critic_loss(noise_qs, targets), noise_qs

    (loss, noise_qs), grads = jax.value_and_grad(loss_fn, has_aux=True)(learner.noise_critic.params)
    noise_critic = learner.noise_critic.apply_gradients(grads=grads)
    metrics = {
        "noise_critic_loss": loss,
        "noise_q": noise_qs.mean(),
        "distill_target_q": targets.mean(),
    }
    return learner.replace(noise_critic=noise_critic, rng=rng), metrics


_critic_actor_step_jit = jit(_critic_actor_step)
_distill_step_jit = jit(_distill_step)


def _update_block(learner: NoiseAliasingLearner, batches, bp_params, num_distill: int):
    """K critic/actor steps in one lax.scan, then `num_distill` distillation steps in another."""
    TRACE_COUNTS["update_block"] += 1
    num_steps = batches["rewards"].shape[0]

    def critic_body(lrn, batch):
        return _critic_actor_step(lrn, batch, bp_params)

    def distill_body(lrn, obs):
        return _distill_step(lrn, obs, bp_params)

    learner, metrics = jax.lax.scan(critic_body, learner, batches)
    index = jnp.arange(num_distill) % num_steps
    distill_obs = jax.tree.map(lambda x: x[index], batches["observations"])
    learner, distill_metrics = jax.lax.scan(distill_body, learner, distill_obs)
    last = jax.tree.map(lambda m: m[-1], {**metrics, **distill_metrics})
    return learner, last


_update_block_jit = jit(_update_block, static_argnums=3)


@jit
def _sample_actions_jit(learner: NoiseAliasingLearner, observations):
    TRACE_COUNTS["sample_actions"] += 1
    rng, key = jax.random.split(learner.rng)
    dist = _actor_distribution(
        learner, learner.actor.params, _augment_free(observations), learner.action_critic.params
    )
    return dist.sample(key), rng


@jit
def _eval_actions_jit(learner: NoiseAliasingLearner, observations):
    dist = _actor_distribution(
        learner, learner.actor.params, _augment_free(observations), learner.action_critic.params
    )
    return dist.mode()


def _augment_free(observations):
    # The networks' encoders convert uint8 pixels themselves; acting sees unaugmented images.
    return _agent_obs(observations)
