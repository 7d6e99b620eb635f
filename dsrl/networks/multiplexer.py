"""PixelMultiplexer: encoder + bottleneck over "pixels", concatenated with "state", then a head.
StateInput: the same `encode` / `head` halves for an agent that sees only "state"."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class PixelMultiplexer(nn.Module):
    """observations {"pixels": (B, H, W, C), "state": (B, d)} -> network([features, state], ...).

    features = tanh(LayerNorm(Dense(bottleneck_dim)(encoder(pixels)))), as in the reference
    (xavier init on the bottleneck). The state is concatenated raw. Several cameras are already stacked on
    channels. `encode` and `head` expose the two halves so a learner can run the encoder once on a
    concatenated batch, or feed one network's features to another (DrQ-style sharing).
    `stop_gradient` blocks gradients into the encoder and bottleneck.
    """

    encoder: nn.Module
    network: nn.Module
    bottleneck_dim: int = 50
    stop_gradient: bool = False
    pixel_key: str = "pixels"
    state_key: str = "state"

    def setup(self):
        self.bottleneck = nn.Dense(self.bottleneck_dim, kernel_init=nn.initializers.xavier_normal())
        self.bottleneck_norm = nn.LayerNorm()

    def encode(self, observations: dict[str, jax.Array]) -> jax.Array:
        """-> features (B, bottleneck_dim + d)."""
        x = self.encoder(observations[self.pixel_key])
        x = jnp.tanh(self.bottleneck_norm(self.bottleneck(x)))
        if self.stop_gradient:
            x = jax.lax.stop_gradient(x)
        parts = [x]
        if self.state_key in observations:
            state = observations[self.state_key]
            parts.append(state.reshape(state.shape[0], -1).astype(x.dtype))
        return jnp.concatenate(parts, axis=-1)

    def head(self, features: jax.Array, *args: Any, **kwargs: Any) -> Any:
        return self.network(features, *args, **kwargs)

    def __call__(self, observations: dict[str, jax.Array], *args: Any, **kwargs: Any) -> Any:
        return self.head(self.encode(observations), *args, **kwargs)


class StateInput(nn.Module):
    """observations {"state": (B, d)} -> network(state, ...): PixelMultiplexer's interface with
    no encoder, so a learner runs one code path for pixel and state-only agents. `encode` has
    no parameters: the "features" are the state itself (flattened, float32)."""

    network: nn.Module
    state_key: str = "state"

    def encode(self, observations: dict[str, jax.Array]) -> jax.Array:
        state = observations[self.state_key]
        return state.reshape(state.shape[0], -1).astype(jnp.float32)

    def head(self, features: jax.Array, *args: Any, **kwargs: Any) -> Any:
        return self.network(features, *args, **kwargs)

    def __call__(self, observations: dict[str, jax.Array], *args: Any, **kwargs: Any) -> Any:
        return self.head(self.encode(observations), *args, **kwargs)
