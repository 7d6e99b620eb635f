"""Q-function heads: one state-action MLP, and an ensemble of them as ONE nn.vmap."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsrl.networks.mlp import MLP, concat_inputs


class StateActionValue(nn.Module):
    """Q(features, action): MLP over [action, features] -> scalar. Inputs (B, F), (B, ...A)
    (an action chunk is flattened); output (B,)."""

    hidden_dims: Sequence[int]
    use_layer_norm: bool = True
    dropout_rate: float | None = None
    activations: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, features: jax.Array, actions: jax.Array, training: bool = False):
        x = concat_inputs(actions, features)
        q = MLP(
            (*self.hidden_dims, 1),
            activations=self.activations,
            use_layer_norm=self.use_layer_norm,
            dropout_rate=self.dropout_rate,
        )(x, training=training)
        return jnp.squeeze(q, -1)


class StateActionEnsemble(nn.Module):
    """`num_qs` independent StateActionValue heads evaluated by one nn.vmap (params stacked on a
    leading axis). (B, F), (B, A) -> (num_qs, B)."""

    hidden_dims: Sequence[int]
    num_qs: int = 2
    use_layer_norm: bool = True
    dropout_rate: float | None = None
    activations: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, features: jax.Array, actions: jax.Array, training: bool = False):
        ensemble = nn.vmap(
            StateActionValue,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_qs,
        )
        heads = ensemble(
            self.hidden_dims, self.use_layer_norm, self.dropout_rate, self.activations, name="heads"
        )
        return heads(features, actions, training)


def reduce_ensemble(
    qs: jax.Array, reduction: str, key: jax.Array | None = None, subset_size: int | None = None
) -> jax.Array:
    """(num_qs, B) -> (B,) by "mean" or "min" over heads; with `subset_size` (REDQ) only a random
    subset of that many distinct heads, drawn with `key`, is reduced."""
    if subset_size is not None and subset_size < qs.shape[0]:
        if key is None:
            raise ValueError("reduce_ensemble: a key is needed to draw a REDQ head subset")
        idx = jax.random.choice(key, qs.shape[0], (subset_size,), replace=False)
        qs = qs[idx]
    if reduction == "mean":
        return qs.mean(axis=0)
    if reduction == "min":
        return qs.min(axis=0)
    raise ValueError(f"unknown critic_reduction {reduction!r}; choose 'mean' or 'min'")
