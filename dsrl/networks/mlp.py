"""Multi-layer perceptron and the weight initialisers shared by every network."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Hidden-layer activations a config may name. The pixel agents use "relu" (jaxrl2); the authors'
# state-based release (SB3) uses "tanh" for its 3 x 2048 actor and critics.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "silu": nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name`, or a ValueError listing the choices."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """Orthogonal init, the jaxrl2 default for dense and conv layers."""
    return nn.initializers.orthogonal(scale)


class MLP(nn.Module):
    """Dense stack: Dense -> [Dropout] -> [LayerNorm] -> activation per hidden layer.

    `activate_final=False` leaves the last Dense linear (a value head); True treats the last
    layer like the others (a trunk feeding another head).
    """

    hidden_dims: Sequence[int]
    activations: Callable[[jax.Array], jax.Array] = nn.relu
    activate_final: bool = False
    use_layer_norm: bool = False
    dropout_rate: float | None = None
    kernel_init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
        """x: (..., in_dim) -> (..., hidden_dims[-1])."""
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=default_init(self.kernel_init_scale))(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.dropout_rate is not None and self.dropout_rate > 0:
                    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not training)
                if self.use_layer_norm:
                    x = nn.LayerNorm()(x)
                x = self.activations(x)
        return x


def concat_inputs(*parts: jax.Array) -> jax.Array:
    """Concatenate feature blocks on the last axis, flattening trailing axes of each part
    (an action chunk (B, H, A) becomes (B, H*A))."""
    lead = parts[0].shape[0]
    return jnp.concatenate([p.reshape(lead, -1) for p in parts], axis=-1)
