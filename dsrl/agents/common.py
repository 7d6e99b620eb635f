"""Pieces every DSRL learner shares (DSRL-SAC and DSRL-NA): the agent observation contract, how
a block of updates executes on the backend, the temperature step and the policy statistics the
reference logs. One copy here, so the two learners cannot drift apart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from dsrl.agents.pixel_sac import losses
from dsrl.data.augmentations import ColorJitterConfig
from dsrl.networks import PixelMultiplexer, StateActionEnsemble, TanhGaussianPolicy, make_encoder

PIXELS, STATE = "pixels", "state"


def validate_observation_spec(observation_spec: Mapping[str, Any]) -> dict[str, Any]:
    """{"pixels": ((H, W, C), uint8), "state": ((d,), float)} -> {"pixels": (H, W, C),
    "state": (d,)}, or a ValueError naming what is wrong and what is expected."""
    fix = (
        'observation_spec must map "pixels" -> ((H, W, C), np.uint8) and "state" -> ((d,), '
        "np.float32), e.g. EnvSpec.observation_spec"
    )
    for key in (PIXELS, STATE):
        if key not in observation_spec:
            raise ValueError(
                f"observation_spec has no {key!r} key (got {sorted(observation_spec)}); {fix}"
            )
    pix_shape, pix_dtype = observation_spec[PIXELS]
    state_shape, _ = observation_spec[STATE]
    if len(pix_shape) != 3 or any(int(s) <= 0 for s in pix_shape):
        raise ValueError(
            f"observation_spec['pixels'] shape must be (H, W, C) > 0, got {pix_shape}; {fix}"
        )
    if np.dtype(pix_dtype) != np.uint8:
        raise ValueError(
            f"observation_spec['pixels'] dtype must be uint8, got {np.dtype(pix_dtype)}; {fix}"
        )
    if len(state_shape) != 1 or int(state_shape[0]) <= 0:
        raise ValueError(
            f"observation_spec['state'] shape must be (d,) with d > 0, got {state_shape}; {fix}"
        )
    return {PIXELS: tuple(int(s) for s in pix_shape), STATE: (int(state_shape[0]),)}


def select_observations(
    observations: Mapping[str, Any],
    where: str,
    extra_spec: Mapping[str, Any] | None = None,
    hint: str = "",
) -> dict[str, np.ndarray]:
    """The agent's two keys (plus `extra_spec`'s keys: name -> (shape, dtype)) with canonical
    dtypes; other keys belong to the base policy and are dropped. `hint` ends the error."""
    extra_spec = extra_spec or {}
    missing = [k for k in (PIXELS, STATE, *extra_spec) if k not in observations]
    if missing:
        also = f" and {sorted(extra_spec)}" if extra_spec else ""
        raise ValueError(
            f"{where} lacks {missing}; the agent reads 'pixels' (uint8), 'state'{also}"
        )
    out = {
        PIXELS: np.asarray(observations[PIXELS], dtype=np.uint8),
        STATE: np.asarray(observations[STATE], dtype=np.float32),
    }
    for key, (_, dtype) in extra_spec.items():
        out[key] = np.asarray(observations[key], dtype=dtype)
    return out


def batched_agent_observations(
    observations: Mapping[str, Any], observation_spec: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], bool]:
    """Acting-side input: (observations with a leading batch axis, whether one was added)."""
    obs = select_observations(observations, "observations")
    spec = dict(observation_spec)
    unbatched = obs[PIXELS].ndim == 3
    if unbatched:
        obs = {k: v[None] for k, v in obs.items()}
    if obs[PIXELS].shape[1:] != spec[PIXELS] or obs[STATE].shape[1:] != spec[STATE]:
        raise ValueError(
            f"observation shapes pixels {obs[PIXELS].shape}, state {obs[STATE].shape} do not "
            f"match the learner's spec {spec} (with a leading batch axis)"
        )
    return obs, unbatched


def resolve_update_mode(mode: str) -> str:
    """'loop' or 'scan' for `update_mode` "auto" | "loop" | "scan" on the current backend."""
    if mode != "auto":
        return mode
    # Measured: on XLA:CPU convs inside a scan body run 30-80x slower (JAX #12868), and an
    # unrolled scan compiles ~3x longer than one step for the same speed; on GPU one scanned
    # call saves the per-step launches and transfers.
    return "loop" if jax.default_backend() == "cpu" else "scan"


def jitter_config(cfg: Any) -> ColorJitterConfig | None:
    """The colour-jitter settings of a learner config, or None when jitter is off."""
    if not cfg.color_jitter:
        return None
    return ColorJitterConfig(
        brightness=cfg.jitter_brightness,
        contrast=cfg.jitter_contrast,
        saturation=cfg.jitter_saturation,
        hue=cfg.jitter_hue,
        apply_prob=cfg.jitter_prob,
    )


def temperature_step(
    temp: TrainState, log_probs: jax.Array, target_entropy: jax.Array
) -> tuple[TrainState, jax.Array, jax.Array]:
    """SAC's temperature step from the actor step's log-probs: (temp, entropy, loss)."""
    entropy = -log_probs.mean()

    def loss_fn(params):
        return losses.temperature_loss(jnp.exp(params["log_temp"]), entropy, target_entropy)

    loss, grads = jax.value_and_grad(loss_fn)(temp.params)
    return temp.apply_gradients(grads=grads), entropy, loss


def policy_metrics(dist: Any) -> dict[str, jax.Array]:
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


# ------------------------------------------------------------------------- network building
def check_pixel_config(cfg: Any, spec: Mapping[str, Any]) -> None:
    """Fail early, with the sizes, on image settings the encoder or the jitter cannot handle."""
    h, w, c = spec[PIXELS]
    if cfg.color_jitter and c % 3:
        raise ValueError(
            f"color_jitter needs RGB cameras stacked on channels (C % 3 == 0), got "
            f"C={c}; set config.color_jitter=False for other images"
        )
    if cfg.encoder != "small":
        return
    sizes = [(h, w)]
    for stride in cfg.cnn_strides:
        a, b = sizes[-1]
        if cfg.cnn_padding == "VALID":
            sizes.append(((a - 3) // stride + 1, (b - 3) // stride + 1))
        else:
            sizes.append((-(-a // stride), -(-b // stride)))
        if min(sizes[-1]) <= 0:
            raise ValueError(
                f"cannot build the 'small' encoder for {h}x{w} images: with cnn_strides "
                f"{cfg.cnn_strides} and {cfg.cnn_padding} padding the feature map shrinks "
                f"{' -> '.join(f'{x}x{y}' for x, y in sizes)}; use fewer/smaller strides, "
                "'SAME' padding or larger images"
            )


def make_pixel_encoder(cfg: Any) -> nn.Module:
    return make_encoder(
        cfg.encoder,
        features=cfg.cnn_features,
        strides=cfg.cnn_strides,
        padding=cfg.cnn_padding,
        pooling=cfg.encoder_pooling,
        softmax_temperature=cfg.softmax_temperature,
    )


def make_critic_ensemble(cfg: Any) -> StateActionEnsemble:
    return StateActionEnsemble(
        cfg.hidden_dims,
        num_qs=cfg.num_qs,
        use_layer_norm=cfg.critic_layer_norm,
        dropout_rate=cfg.dropout_rate or None,
    )


def make_actor(cfg: Any, encoder: nn.Module, action_dim: int) -> nn.Module:
    """The tanh-Gaussian actor: with its own encoder ("separate") or on critic features
    ("shared", then it takes (B, latent_dim + d) features instead of observations)."""
    policy = TanhGaussianPolicy(
        cfg.hidden_dims,
        action_dim,
        action_magnitude=float(cfg.action_magnitude),
        use_layer_norm=cfg.actor_layer_norm,
    )
    if cfg.encoder_sharing == "separate":
        return PixelMultiplexer(encoder=encoder, network=policy, latent_dim=cfg.latent_dim)
    return policy


def init_pixel_module(module: nn.Module, key: jax.Array, cfg: Any, spec, *inputs) -> Any:
    """module.init(...)["params"], turning a failure to build the encoder into a clear error."""
    try:
        return module.init(key, *inputs)["params"]
    except (TypeError, ValueError, ZeroDivisionError) as e:  # e.g. an empty feature map
        h, w, c = spec[PIXELS]
        raise ValueError(
            f"cannot build the {cfg.encoder!r} encoder for {h}x{w}x{c} images with features "
            f"{cfg.cnn_features}, strides {cfg.cnn_strides}, padding {cfg.cnn_padding}: {e}"
        ) from e


def make_train_state(apply_fn: Any, params: Any, lr: float) -> TrainState:
    # A strongly typed step counter: a Python int 0 would make the first update a different jit
    # cache entry from all later ones (two compilations).
    state = TrainState.create(apply_fn=apply_fn, params=params, tx=optax.adam(lr))
    return state.replace(step=jnp.zeros((), jnp.int32))
