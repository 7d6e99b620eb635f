"""The SAC networks every DSRL learner builds from a `SACConfig`: the pixel encoder (or none, for a
state-only agent), the critic ensemble, the tanh-Gaussian actor and the temperature."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from dsrl.agents import sac
from dsrl.agents.config import SACConfig
from dsrl.agents.spec import PIXELS, STATE
from dsrl.networks import (
    PixelMultiplexer,
    StateActionEnsemble,
    StateInput,
    TanhGaussianPolicy,
    activation,
    make_encoder,
)


def check_pixel_config(cfg: SACConfig, pixel_shape: tuple[int, int, int]) -> None:
    """Fail early, with the sizes, on image settings the encoder or the jitter cannot handle."""
    h, w, c = pixel_shape
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


@dataclasses.dataclass(frozen=True)
class Networks:
    """Freshly initialised SAC parts: a critic over (pixels + state, or state alone; input) and
    the actor.
    `learner_fields()` are the ones every Learner holds; the critic's field name is the
    subclass's own."""

    critic: TrainState
    actor: TrainState
    temp: TrainState
    rng: jax.Array
    extra_keys: tuple[jax.Array, ...]  # keys left for a learner's own networks
    encoder: nn.Module | None  # None: a state-only agent
    critic_def: nn.Module
    actor_def: nn.Module

    def learner_fields(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "temp": self.temp,
            "rng": self.rng,
            "critic_def": self.critic_def,
            "actor_def": self.actor_def,
        }


def with_input(cfg: SACConfig, encoder: nn.Module | None, network: nn.Module) -> nn.Module:
    """`network` behind the agent's observation: a pixel encoder + bottleneck (PixelMultiplexer)
    or, for a state-only agent (`encoder` None), the raw state (StateInput)."""
    if encoder is None:
        return StateInput(network=network)
    return PixelMultiplexer(encoder=encoder, network=network, bottleneck_dim=cfg.bottleneck_dim)


def critic_module(cfg: SACConfig, encoder: nn.Module | None, on_features: bool = False):
    """An ensemble of `num_qs` Q heads behind `with_input(cfg, encoder, ...)`, or the bare heads
    over given features when `on_features` (a critic reading another network's features)."""
    ensemble = StateActionEnsemble(
        cfg.hidden_dims,
        num_qs=cfg.num_qs,
        use_layer_norm=cfg.critic_layer_norm,
        dropout_rate=cfg.dropout_rate or None,
        activations=activation(cfg.activation),
    )
    return ensemble if on_features else with_input(cfg, encoder, ensemble)


def feature_dim(cfg: SACConfig, agent_spec: Mapping[str, tuple[int, ...]]) -> int:
    """Width of what `encode` returns: bottleneck + state for pixels, the state alone without."""
    state_dim = agent_spec[STATE][0]
    return state_dim + (cfg.bottleneck_dim if PIXELS in agent_spec else 0)


def dummy_observation(pixel_shape, state_dim: int) -> dict[str, jax.Array]:
    """A batch of one zero observation; no "pixels" when `pixel_shape` is None."""
    state = {STATE: jnp.zeros((1, state_dim))}
    if pixel_shape is None:
        return state
    return {PIXELS: jnp.zeros((1, *pixel_shape), jnp.uint8), **state}


def init_module(module: nn.Module, key: jax.Array, cfg: SACConfig, pixel_shape, *inputs) -> Any:
    """module.init(...)["params"], turning a failure to build the encoder into a clear error."""
    if pixel_shape is None:  # no encoder to fail
        return module.init(key, *inputs)["params"]
    try:
        return module.init(key, *inputs)["params"]
    except (TypeError, ValueError, ZeroDivisionError) as e:  # e.g. an empty feature map
        h, w, c = pixel_shape
        raise ValueError(
            f"cannot build the {cfg.encoder!r} encoder for {h}x{w}x{c} images with features "
            f"{cfg.cnn_features}, strides {cfg.cnn_strides}, padding {cfg.cnn_padding}: {e}"
        ) from e


def make_pixel_encoder(cfg: SACConfig, pixel_shape) -> nn.Module | None:
    """The configured pixel encoder, or None for a state-only agent (`pixel_shape` None)."""
    if pixel_shape is None:
        return None
    check_pixel_config(cfg, pixel_shape)
    return make_encoder(
        cfg.encoder,
        features=cfg.cnn_features,
        strides=cfg.cnn_strides,
        padding=cfg.cnn_padding,
        pooling=cfg.encoder_pooling,
        softmax_temperature=cfg.softmax_temperature,
    )


def build_networks(
    seed: int,
    cfg: SACConfig,
    agent_spec: Mapping[str, tuple[int, ...]],
    latent_dim: int,
    critic_input_dim: int,
    num_extra_keys: int = 0,
    *,
    action_magnitude: float,
) -> Networks:
    """Encoder, critic (scoring `critic_input_dim`-d inputs), actor over `latent_dim`-d latents
    bounded by `action_magnitude` ("separate": with its own encoder; "shared": on the critic's
    features) and temperature. Without "pixels" in `agent_spec` there is no encoder: every
    network is an MLP on the state (`encoder` is None)."""
    pixel_shape, state_dim = agent_spec.get(PIXELS), agent_spec[STATE][0]
    encoder = make_pixel_encoder(cfg, pixel_shape)
    critic_def = critic_module(cfg, encoder)
    policy = TanhGaussianPolicy(
        cfg.hidden_dims,
        latent_dim,
        action_magnitude=action_magnitude,
        use_layer_norm=cfg.actor_layer_norm,
        activations=activation(cfg.activation),
    )
    obs = dummy_observation(pixel_shape, state_dim)
    # Key order kept from the first versions of both learners, so their initial params stay.
    rng, k_critic, *extra, k_actor = jax.random.split(jax.random.PRNGKey(seed), 3 + num_extra_keys)
    critic_params = init_module(
        critic_def, k_critic, cfg, pixel_shape, obs, jnp.zeros((1, critic_input_dim))
    )
    if cfg.encoder_sharing == "separate":
        actor_def = with_input(cfg, encoder, policy)
        actor_params = actor_def.init(k_actor, obs)["params"]
    else:
        actor_def = policy
        features = jnp.zeros((1, feature_dim(cfg, agent_spec)))
        actor_params = actor_def.init(k_actor, features)["params"]
    return Networks(
        critic=sac.make_train_state(critic_def.apply, critic_params, cfg.critic_lr),
        actor=sac.make_train_state(actor_def.apply, actor_params, cfg.actor_lr),
        temp=sac.make_temperature(cfg.init_temperature, cfg.temp_lr),
        rng=rng,
        extra_keys=tuple(extra),
        encoder=encoder,
        critic_def=critic_def,
        actor_def=actor_def,
    )
