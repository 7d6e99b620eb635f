"""What every DSRL learner shares besides the SAC steps (dsrl.agents.sac) and its networks
(dsrl.agents.learner_networks): the agent observation contract, augmentation, batch validation,
and the `Learner` base class (acting with the tanh-Gaussian actor, the `update` entry point).
Nothing here imports an algorithm's package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dsrl.agents import sac, spec
from dsrl.agents.config import SACConfig
from dsrl.agents.execution import ExecutionConfig
from dsrl.data.augmentations import ColorJitterConfig, augment_pixels
from dsrl.networks import pixels_to_float, reduce_ensemble
from dsrl.steering import check_action_magnitude
from dsrl.utils.jit import jit

PIXELS, STATE = spec.PIXELS, spec.STATE
SCALAR_FIELDS = (spec.REWARDS, spec.MASKS, spec.DISCOUNTS)


# ------------------------------------------------------------------------------ observations
def validate_observation_spec(observation_spec: Mapping[str, Any]) -> dict[str, Any]:
    """{"pixels": ((H, W, C), uint8), "state": ((d,), float)} -> {"pixels": (H, W, C),
    "state": (d,)}; {"state": ((d,), float)} alone (a state-based agent: MLP networks on the
    state, no encoder) -> {"state": (d,)}; or a ValueError naming what is wrong."""
    fix = (
        'observation_spec must map "state" -> ((d,), np.float32) and, for a pixel agent, '
        '"pixels" -> ((H, W, C), np.uint8), e.g. EnvSpec.observation_spec'
    )
    if STATE not in observation_spec:
        raise ValueError(
            f"observation_spec has no {STATE!r} key (got {sorted(observation_spec)}); {fix}"
        )
    state_shape, _ = observation_spec[STATE]
    # d = 0: the agent sees no state (the reference's --add_states 0, dsrl.envs.wrappers).
    if len(state_shape) != 1 or int(state_shape[0]) < 0:
        raise ValueError(
            f"observation_spec['state'] shape must be (d,) with d >= 0, got {state_shape}; {fix}"
        )
    state = (int(state_shape[0]),)
    if PIXELS not in observation_spec:
        images = sorted(
            k
            for k, (shape, dtype) in observation_spec.items()
            if len(shape) == 3 and np.dtype(dtype) == np.uint8
        )
        if images:  # an image under another name would otherwise silently be ignored
            raise ValueError(
                f"observation_spec has no 'pixels' key but image(s) {images}: a pixel agent "
                "reads its images from 'pixels' (rename the key); a state-based agent needs "
                f"no images; {fix}"
            )
        if state[0] == 0:
            raise ValueError(
                "observation_spec has no 'pixels' and a 0-d 'state': a state-based agent needs "
                f"a state of d >= 1 (got {sorted(observation_spec)}); {fix}"
            )
        return {STATE: state}
    pix_shape, pix_dtype = observation_spec[PIXELS]
    if len(pix_shape) != 3 or any(int(s) <= 0 for s in pix_shape):
        raise ValueError(
            f"observation_spec['pixels'] shape must be (H, W, C) > 0, got {pix_shape}; {fix}"
        )
    if np.dtype(pix_dtype) != np.uint8:
        raise ValueError(
            f"observation_spec['pixels'] dtype must be uint8, got {np.dtype(pix_dtype)}; {fix}"
        )
    return {PIXELS: tuple(int(s) for s in pix_shape), STATE: state}


def select_observations(
    observations: Mapping[str, Any],
    where: str,
    extra_spec: Mapping[str, Any] | None = None,
    hint: str = "",
    pixels: bool = True,
) -> dict[str, np.ndarray]:
    """The agent's keys ("pixels" unless `pixels=False`, and "state"), plus `extra_spec`'s keys
    (name -> (shape, dtype)), with canonical dtypes; other keys belong to the base policy and
    are dropped. `hint` ends the error."""
    extra_spec = extra_spec or {}
    agent_keys = (PIXELS, STATE) if pixels else (STATE,)
    missing = [k for k in (*agent_keys, *extra_spec) if k not in observations]
    if missing:
        also = f" and {sorted(extra_spec)}" if extra_spec else ""
        reads = "'pixels' (uint8), 'state'" if pixels else "'state'"
        raise ValueError(f"{where} lacks {missing}; the agent reads {reads}{also}{hint}")
    out = {STATE: np.asarray(observations[STATE], dtype=np.float32)}
    if pixels:
        out = {PIXELS: np.asarray(observations[PIXELS], dtype=np.uint8), **out}
    for key, (_, dtype) in extra_spec.items():
        out[key] = np.asarray(observations[key], dtype=dtype)
    return out


def augment(cfg: SACConfig, key: jax.Array, obs: Mapping[str, Any], enabled: bool = True):
    """Random crop + colour jitter of "pixels" (DrQ), or only the float conversion. A state-only
    observation passes through (the release adds no state noise)."""
    if PIXELS not in obs:
        return {STATE: obs[STATE]}
    if enabled:
        jitter = None
        if cfg.color_jitter:
            jitter = ColorJitterConfig(
                brightness=cfg.jitter_brightness,
                contrast=cfg.jitter_contrast,
                saturation=cfg.jitter_saturation,
                hue=cfg.jitter_hue,
                apply_prob=cfg.jitter_prob,
            )
        pixels = augment_pixels(key, obs[PIXELS], cfg.crop_padding, jitter)
    else:
        pixels = pixels_to_float(obs[PIXELS])
    return {PIXELS: pixels, STATE: obs[STATE]}


# ---------------------------------------------------------------------------------- learner
class Learner(flax.struct.PyTreeNode):
    """The part of a DSRL learner that does not depend on the algorithm.

    A subclass declares its pytree fields (their order is its checkpoint layout; the base holds
    only static ones), `acting_critic_params` (whose encoder a "shared" actor reads), the extra
    batch fields it trains on (`batch_fields`) and `_update(batches) -> (learner, metrics)`.
    """

    config: SACConfig = flax.struct.field(pytree_node=False)
    latent_dim: int = flax.struct.field(pytree_node=False)
    # The bound on the latent, received from the steering (dsrl.steering.Steering owns it).
    action_magnitude: float = flax.struct.field(pytree_node=False)
    target_entropy: float = flax.struct.field(pytree_node=False)
    observation_spec: tuple = flax.struct.field(pytree_node=False)  # ((key, shape), ...) agent's
    critic_def: nn.Module = flax.struct.field(pytree_node=False)
    actor_def: nn.Module = flax.struct.field(pytree_node=False)
    execution: ExecutionConfig = flax.struct.field(pytree_node=False)

    CONFIG = SACConfig  # the subclass's config class

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        return cls.CONFIG.default_config()

    @classmethod
    def create(
        cls,
        seed: int,
        observation_spec: Mapping[str, tuple[tuple[int, ...], Any]],
        latent_dim: int,
        config: Any = None,
        *,
        action_magnitude: float = 1.0,
        execution: ExecutionConfig | None = None,
        **algorithm_args: Any,
    ) -> Learner:
        """A fresh learner.

        observation_spec: {"pixels": ((H, W, C), uint8), "state": ((d,), float32), ...}; other
        keys are ignored. latent_dim: size of the agent's output (the steering's `latent_dim`).
        action_magnitude: the latents' bound (the steering's `action_magnitude`).
        config: the subclass's config or an (overridden) `default_config()`. execution: how
        update blocks run (default: the fastest way on the backend). algorithm_args: what the
        subclass's `build` takes besides (e.g. DSRL-NA's base policy)."""
        if config is None:
            cfg = cls.CONFIG()
        elif isinstance(config, cls.CONFIG):
            cfg = config
        else:
            cfg = cls.CONFIG.from_config_dict(config)
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim}")
        check_action_magnitude(action_magnitude)
        agent_spec = validate_observation_spec(observation_spec)
        fields = {
            "config": cfg,
            "latent_dim": int(latent_dim),
            "action_magnitude": float(action_magnitude),
            "target_entropy": float(cfg.resolved_target_entropy(int(latent_dim))),
            "observation_spec": tuple(sorted(agent_spec.items())),
            "execution": execution or ExecutionConfig(),
        }
        return cls.build(seed, agent_spec, fields, **algorithm_args)

    @classmethod
    def build(cls, seed: int, agent_spec: dict[str, Any], fields: dict[str, Any]) -> Learner:
        """The subclass's networks, given the validated spec and the base fields."""
        raise NotImplementedError

    # --------------------------------------------------------------------- contract with loop
    @property
    def acting_critic_params(self) -> Any:
        raise NotImplementedError

    def policy_observation_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Base-policy observation keys the buffer must store (for one observation)."""
        return {}

    def batch_fields(self) -> dict[str, tuple[int, ...]]:
        """Non-observation batch fields besides rewards/masks/discounts: key -> per-item shape."""
        raise NotImplementedError

    def transition_spec(self) -> spec.TransitionSpec:
        return spec.TransitionSpec(
            action_chunks=spec.ACTION_CHUNKS in self.batch_fields(),
            policy_observation_keys=tuple(self.policy_observation_spec()),
        )

    # ------------------------------------------------------------------------------ acting
    def critic_features(self, critic_params: Any, observations: Any) -> jax.Array:
        """The critic encoder's features (B, bottleneck_dim + d), with no gradient."""
        features = self.critic_def.apply({"params": critic_params}, observations, method="encode")
        return jax.lax.stop_gradient(features)

    def actor_distribution(self, actor_params: Any, observations: Any, features: Any = None):
        """pi(.|s): from the actor's own encoder ("separate"), or from critic `features`
        computed by the caller ("shared")."""
        if self.config.encoder_sharing == "separate":
            dist = self.actor_def.apply({"params": actor_params}, observations)
        else:
            dist = self.actor_def.apply({"params": actor_params}, features)
        if self.config.actor_awr_beta > 0:  # static: the advantage-weighted actor's fixed spread
            dist = dist.replace(scale=jnp.full_like(dist.scale, self.config.actor_awr_std))
        return dist

    def actor_temperature_step(
        self, observations, features, q_fn, temperature, key, step, data_latents=None
    ):
        """SAC's actor step against `q_fn` (latents -> critic heads (N, B)) on `observations`
        (with critic `features` for a "shared" actor), then the temperature step on its
        log-probs. `step`: the gradient steps run before this one (the critic's counter); with
        `config.train_actor_steps` = N > 0 the actor and temperature keep their state for the
        first N steps (critic-only updates; the metrics show what the step would have done).
        `data_latents`: the batch's latents (B, latent_dim), which the advantage-weighted actor
        (`config.actor_awr_beta` > 0) fits. Returns (actor, temp, metrics)."""
        actor, log_probs, actor_metrics = sac.actor_step(
            self.actor,
            lambda p: self.actor_distribution(p, observations, features),
            q_fn,
            temperature,
            self.config.critic_reduction,
            key,
            mean_reg=float(self.config.actor_mean_reg),
            data_latents=data_latents,
            awr_beta=float(self.config.actor_awr_beta),
        )
        temp, temp_metrics = sac.temperature_step(self.temp, log_probs, self.target_entropy)
        metrics = {**actor_metrics, **temp_metrics}
        if self.config.train_actor_steps > 0:  # static: off leaves the step as it always was
            (actor, temp), metrics["actor_updated"] = sac.delay_actor(
                step, self.config.train_actor_steps, (self.actor, self.temp), (actor, temp)
            )
        return actor, temp, metrics

    def policy(self, observations: Any):
        """The current actor's distribution on (unaugmented) observations."""
        features = None
        if self.config.encoder_sharing == "shared":
            features = self.critic_features(self.acting_critic_params, observations)
        return self.actor_distribution(self.actor.params, observations, features)

    def sample_latents(self, observations: Mapping[str, Any]) -> tuple[np.ndarray, Learner]:
        """Stochastic latents (B, latent_dim) within +-action_magnitude and the learner with its
        PRNG key advanced. An unbatched observation (pixels (H, W, C)) gives (latent_dim,)."""
        obs, unbatched = self._batched_observations(observations)
        latents, rng = _sample_jit(self, obs)
        latents = np.asarray(latents)
        return (latents[0] if unbatched else latents), self.replace(rng=rng)

    def latents_from_noise(self, observations: Mapping[str, Any], eps: Any) -> np.ndarray:
        """Latents (B, latent_dim) the policy makes from the standard-normal draws eps (B,
        latent_dim): `TanhGaussian.from_standard_normal`. The loop holds eps over an episode
        for `LoopConfig.hold_exploration`. Batched observations only."""
        obs, unbatched = self._batched_observations(observations)
        eps = np.asarray(eps, np.float32)
        batch = len(next(iter(obs.values())))
        if unbatched or eps.shape != (batch, self.latent_dim):
            raise ValueError(
                f"latents_from_noise: eps must be ({batch}, {self.latent_dim}) for a batch of "
                f"{batch} observations, got {eps.shape}"
            )
        return np.asarray(_from_noise_jit(self, obs, eps))

    def mode_latents(self, observations: Mapping[str, Any]) -> np.ndarray:
        """Distribution mode action_magnitude * tanh(mean): (B, latent_dim), or unbatched."""
        obs, unbatched = self._batched_observations(observations)
        latents = np.asarray(_mode_jit(self, obs))
        return latents[0] if unbatched else latents

    def latent_q_heads(self, observations: Any, latents: jax.Array) -> jax.Array:
        """The critic that scores latents, Q(s, z) per head (num_qs, B), on batched agent
        observations (inside jit; the subclass says which critic that is)."""
        raise NotImplementedError

    def latent_q(self, observations: Mapping[str, Any], latents: Any) -> np.ndarray:
        """Q(s, z) as the actor maximises it (its heads reduced by `config.critic_reduction`):
        (B,) float, or a scalar for an unbatched observation. A diagnostic: the loop compares it
        with the discounted return that followed (`evaluation.critic_calibration`)."""
        obs, unbatched = self._batched_observations(observations)
        latents = np.asarray(latents, np.float32).reshape(-1, self.latent_dim)
        if len(latents) != len(next(iter(obs.values()))):
            raise ValueError(
                f"latent_q: {len(latents)} latents for a batch of "
                f"{len(next(iter(obs.values())))} observations"
            )
        q = np.asarray(_latent_q_jit(self, obs, latents))
        return q[0] if unbatched else q

    @property
    def has_pixels(self) -> bool:
        """False for a state-only agent (MLP networks on "state", no encoder)."""
        return PIXELS in dict(self.observation_spec)

    def _batched_observations(self, observations: Mapping[str, Any]):
        obs = select_observations(observations, "observations", pixels=self.has_pixels)
        expected = dict(self.observation_spec)
        unbatched = obs[PIXELS].ndim == 3 if self.has_pixels else obs[STATE].ndim == 1
        if unbatched:
            obs = {k: v[None] for k, v in obs.items()}
        if any(obs[k].shape[1:] != shape for k, shape in expected.items()):
            got = ", ".join(f"{k} {obs[k].shape}" for k in expected)
            raise ValueError(
                f"observation shapes {got} do not match the learner's spec {expected} (with a "
                "leading batch axis)"
            )
        return obs, unbatched

    # ---------------------------------------------------------------------------- learning
    def update(self, batches: Mapping[str, Any]) -> tuple[Learner, dict[str, float]]:
        """Run one block of K gradient steps; every leaf of `batches` has leading axes (K, B).

        batches: {"observations": {"pixels": uint8 (K,B,H,W,C), "state": (K,B,d), + the
        base policy's keys if any}, "rewards", "masks", "discounts": (K,B),
        "next_observations": {...}, + `batch_fields()`}, as `ReplayBuffer.sample(B, K)` returns
        them; other keys are ignored. All K steps go to the device in one transfer, executed as
        `self.execution` says. Returns the new learner and the last step's metrics as floats."""
        learner, metrics = self._update(self.prepare_batches(batches))
        return learner, {k: float(v) for k, v in jax.device_get(metrics).items()}

    def _update(self, batches: dict[str, Any]) -> tuple[Learner, dict[str, jax.Array]]:
        raise NotImplementedError

    def prepare_batches(self, batches: Mapping[str, Any]) -> dict[str, Any]:
        """Validated (K, B) batches with canonical dtypes, or a ValueError naming the problem."""
        fields = self.batch_fields()
        policy_spec = self.policy_observation_spec()
        required = [spec.OBSERVATIONS, *fields, *SCALAR_FIELDS, spec.NEXT_OBSERVATIONS]
        hint = (
            " (a learner's replay buffer stores `learner.transition_spec()`: build it with "
            "dsrl.training.loop.example_transition for this learner)"
        )
        missing = [k for k in required if k not in batches]
        if missing:
            raise ValueError(
                f"update batches lack {missing}; expected keys {required} with leading (K, B) "
                f"axes (ReplayBuffer.sample(batch_size, num_batches=K)){hint}"
            )
        out = {
            key: select_observations(
                batches[key], f"batches[{key!r}]", policy_spec, hint, pixels=self.has_pixels
            )
            for key in (spec.OBSERVATIONS, spec.NEXT_OBSERVATIONS)
        }
        for key in (*fields, *SCALAR_FIELDS):
            out[key] = np.asarray(batches[key], np.float32)
        k_b = out[spec.REWARDS].shape
        expected = {key: (*k_b, *shape) for key, shape in fields.items()}
        expected |= {key: k_b for key in SCALAR_FIELDS}
        got = {key: out[key].shape for key in expected}
        obs_shapes = {**dict(self.observation_spec), **{k: s for k, (s, _) in policy_spec.items()}}
        for obs_key in (spec.OBSERVATIONS, spec.NEXT_OBSERVATIONS):
            for key, shape in obs_shapes.items():
                expected[f"{obs_key}/{key}"] = (*k_b, *shape)
                got[f"{obs_key}/{key}"] = out[obs_key][key].shape
        if len(k_b) != 2 or got != expected:
            bad = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
            raise ValueError(
                f"update batches need a leading (K, B) axis on every leaf; mismatched (got, "
                f"expected) shapes: {bad or {spec.REWARDS: (k_b, '(K, B)')}}"
            )
        return out


@jit
def _sample_jit(learner: Learner, observations):
    rng, key = jax.random.split(learner.rng)
    return learner.policy(observations).sample(key), rng


@jit
def _from_noise_jit(learner: Learner, observations, eps):
    return learner.policy(observations).from_standard_normal(eps)


@jit
def _mode_jit(learner: Learner, observations):
    return learner.policy(observations).mode()


@jit
def _latent_q_jit(learner: Learner, observations, latents):
    return reduce_ensemble(
        learner.latent_q_heads(observations, latents), learner.config.critic_reduction
    )


def acting_compile_count() -> int:
    """Compiled variants of the acting functions (sample, from-noise and mode) in this process."""
    return int(_sample_jit._cache_size() + _mode_jit._cache_size() + _from_noise_jit._cache_size())
