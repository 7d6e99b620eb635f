"""Tanh-squashed Gaussian policy scaled to [-action_magnitude, action_magnitude]."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from dsrl.networks.mlp import MLP, default_init

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * float(jnp.log(2.0 * jnp.pi))


def _log1m_tanh_sq(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2), written so it stays finite for large |u|."""
    return 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))


class TanhGaussian(flax.struct.PyTreeNode):
    """a = action_magnitude * tanh(u), u ~ N(loc, diag(scale^2)); loc, scale: (B, A).

    log_prob includes both Jacobians (tanh and the rescale), like the reference's distrax
    Chain([rescale, Tanh])."""

    loc: jax.Array
    scale: jax.Array
    action_magnitude: float = flax.struct.field(pytree_node=False, default=1.0)

    def _log_prob_pre_tanh(self, u: jax.Array) -> jax.Array:
        z = (u - self.loc) / self.scale
        base = -0.5 * z**2 - jnp.log(self.scale) - _HALF_LOG_2PI
        correction = _log1m_tanh_sq(u) + jnp.log(self.action_magnitude)
        return jnp.sum(base - correction, axis=-1)

    def sample_and_log_prob(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reparameterised sample (B, A) and its log-density (B,)."""
        u = self.loc + self.scale * jax.random.normal(key, self.loc.shape, self.loc.dtype)
        return self.action_magnitude * jnp.tanh(u), self._log_prob_pre_tanh(u)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.sample_and_log_prob(key)[0]

    def from_standard_normal(self, eps: jax.Array) -> jax.Array:
        """The sample a given standard-normal draw eps (B, A) makes: action_magnitude *
        tanh(loc + scale * eps). A caller that keeps eps fixed over an episode explores along
        one direction of the distribution for the whole episode."""
        return self.action_magnitude * jnp.tanh(self.loc + self.scale * eps)

    def pre_tanh(self, action: jax.Array) -> jax.Array:
        """atanh(action / action_magnitude): a bounded action's pre-tanh value (B, A); actions
        on the bound are nudged inside (|value| <= 7.25)."""
        y = jnp.clip(action / self.action_magnitude, -1.0 + 1e-6, 1.0 - 1e-6)
        return jnp.arctanh(y)

    def log_prob(self, action: jax.Array) -> jax.Array:
        """Log-density of a bounded action (B, A); actions on the bound are nudged inside."""
        return self._log_prob_pre_tanh(self.pre_tanh(action))

    def mode(self) -> jax.Array:
        """action_magnitude * tanh(loc), the reference's eval action."""
        return self.action_magnitude * jnp.tanh(self.loc)


class TanhGaussianPolicy(nn.Module):
    """features (B, F) -> TanhGaussian over (B, action_dim).

    MLP trunk (activated final layer), then two Dense heads (mean, log-std) with orthogonal(1e-2)
    init so the initial policy is about action_magnitude * tanh(N(0, 1)); log-std is clipped to
    [-20, 2]."""

    hidden_dims: Sequence[int]
    action_dim: int
    action_magnitude: float = 1.0
    use_layer_norm: bool = False
    dropout_rate: float | None = None
    activations: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, features: jax.Array, training: bool = False) -> TanhGaussian:
        x = MLP(
            self.hidden_dims,
            activations=self.activations,
            activate_final=True,
            use_layer_norm=self.use_layer_norm,
            dropout_rate=self.dropout_rate,
        )(features, training=training)
        loc = nn.Dense(self.action_dim, kernel_init=default_init(1e-2), name="mean")(x)
        log_std = nn.Dense(self.action_dim, kernel_init=default_init(1e-2), name="log_std")(x)
        log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        return TanhGaussian(loc, jnp.exp(log_std), action_magnitude=float(self.action_magnitude))
