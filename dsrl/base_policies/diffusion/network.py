"""DPPO's `DiffusionMLP` noise-prediction network in Flax, laid out so a DPPO state dict maps
onto it name by name.

Architecture (DPPO `model/diffusion/mlp_diffusion.py`, `model/common/mlp.py`, read at
irom-lab/dppo 7b10df6):
  time embedding  sinusoidal(time_dim) -> Linear(2 time_dim) -> Mish -> Linear(time_dim)
                  (always Mish, whatever `activation_type` says)
  cond MLP        optional, Linear layers over `cond_mlp_dims` with `activation_type` between
                  them and none after the last
  mlp_mean        input [flattened x_t, time embedding, (encoded) state], then either
                  - MLP: Linear per width, each but the last followed by LayerNorm (eps 1e-5, when
                    `use_layernorm`) and `activation_type`; the last by `out_activation_type`
                  - ResidualMLP (`residual_style`): Linear(in, mlp_dims[0]), then
                    (len(mlp_dims) - 1) / 2 pre-activation blocks
                    x + l2(act(norm2(l1(act(norm1(x)))))) (norms eps 1e-6 when `use_layernorm`),
                    then Linear(out) and `out_activation_type`. Every hidden layer has width
                    mlp_dims[0] (DPPO ignores the other entries).
Flax parameter paths are DPPO's state-dict names without the leading `network.`: the first
component is a submodule (`time_embedding`, `cond_mlp`, `mlp_mean`) and the rest, joined by dots,
names the Dense / LayerNorm (`mlp_mean/layers.1.l1/kernel` <- `network.mlp_mean.layers.1.l1.weight`
transposed). `dsrl.base_policies.diffusion.dppo` does the mapping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# DPPO's `activation_dict`. GELU is torch's exact (erf) form, not JAX's default tanh approximation.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "ReLU": jax.nn.relu,
    "ELU": jax.nn.elu,
    "GELU": lambda x: jax.nn.gelu(x, approximate=False),
    "Tanh": jnp.tanh,
    "Mish": jax.nn.mish,
    "Identity": lambda x: x,
    "Softplus": jax.nn.softplus,
}


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """DPPO's `DiffusionMLP(...)` arguments (same names, same defaults)."""

    action_dim: int
    horizon_steps: int
    cond_dim: int
    time_dim: int = 16
    mlp_dims: tuple[int, ...] = (256, 256)
    cond_mlp_dims: tuple[int, ...] | None = None
    activation_type: str = "Mish"
    out_activation_type: str = "Identity"
    use_layernorm: bool = False
    residual_style: bool = False

    def __post_init__(self):
        for field in ("activation_type", "out_activation_type"):
            if getattr(self, field) not in ACTIVATIONS:
                raise ValueError(
                    f"DiffusionMLP {field}={getattr(self, field)!r}; DPPO knows {sorted(ACTIVATIONS)}."
                )
        if not self.mlp_dims:
            raise ValueError("DiffusionMLP mlp_dims must name at least one hidden width.")
        if self.residual_style and (len(self.mlp_dims) - 1) % 2 != 0:
            raise ValueError(
                f"DiffusionMLP residual_style needs an odd number of mlp_dims (one input layer, "
                f"then blocks of two); got {list(self.mlp_dims)}, as DPPO's ResidualMLP asserts."
            )
        if self.cond_mlp_dims is not None and not self.cond_mlp_dims:
            raise ValueError("DiffusionMLP cond_mlp_dims must be None or non-empty.")
        if self.time_dim < 4 or self.time_dim % 2:
            raise ValueError(f"DiffusionMLP time_dim={self.time_dim}: use an even number >= 4.")


def _torch_linear_init(fan_in: int):
    """torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, so
    that training here starts where DPPO's would."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(x: jax.Array, features: int, name: str) -> jax.Array:
    init = _torch_linear_init(x.shape[-1])
    return nn.Dense(features, kernel_init=init, bias_init=init, name=name)(x)


def _layer_norm(x: jax.Array, epsilon: float, name: str) -> jax.Array:
    # Two-pass variance, as torch computes it (flax's fast E[x^2] - E[x]^2 differs at ~1e-6).
    return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, name=name)(x)


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """DPPO's SinusoidalPosEmb: (B,) -> (B, dim), [sin | cos] of t * 10000^(-k / (dim/2 - 1))."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -scale)
    angle = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class TimeEmbedding(nn.Module):
    time_dim: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        h = sinusoidal_embedding(t, self.time_dim)
        # Names "1" and "3" are the Linear layers' indices in DPPO's nn.Sequential.
        h = jax.nn.mish(_linear(h, 2 * self.time_dim, "1"))
        return _linear(h, self.time_dim, "3")


class MLP(nn.Module):
    """DPPO's MLP (without the append/dropout options DiffusionMLP never uses)."""

    dims: tuple[int, ...]
    activation_type: str
    out_activation_type: str
    use_layernorm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        num_layers = len(self.dims)
        for idx, width in enumerate(self.dims):
            last = idx == num_layers - 1
            x = _linear(x, width, f"moduleList.{idx}.linear_1")
            if self.use_layernorm and not last:
                x = _layer_norm(x, 1e-5, f"moduleList.{idx}.norm_1")
            x = ACTIVATIONS[self.out_activation_type if last else self.activation_type](x)
        return x


class ResidualMLP(nn.Module):
    """DPPO's ResidualMLP: `dims` = mlp_dims + [output_dim]."""

    dims: tuple[int, ...]
    activation_type: str
    out_activation_type: str
    use_layernorm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.dims[0]
        num_blocks = (len(self.dims) - 2) // 2
        act = ACTIVATIONS[self.activation_type]
        x = _linear(x, hidden, "layers.0")
        for block in range(1, num_blocks + 1):
            residual = x
            if self.use_layernorm:
                x = _layer_norm(x, 1e-6, f"layers.{block}.norm1")
            x = _linear(act(x), hidden, f"layers.{block}.l1")
            if self.use_layernorm:
                x = _layer_norm(x, 1e-6, f"layers.{block}.norm2")
            x = _linear(act(x), hidden, f"layers.{block}.l2")
            x = x + residual
        x = _linear(x, self.dims[-1], f"layers.{num_blocks + 1}")
        return ACTIVATIONS[self.out_activation_type](x)


class DiffusionMLP(nn.Module):
    """eps_theta(x_t, t, state): (B, horizon, action_dim), (B,) int, (B, cond_dim) -> like x_t."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, state: jax.Array) -> jax.Array:
        c = self.config
        batch = x.shape[0]
        if c.cond_mlp_dims is not None:
            state = MLP(tuple(c.cond_mlp_dims), c.activation_type, "Identity", name="cond_mlp")(
                state
            )
        time_emb = TimeEmbedding(c.time_dim, name="time_embedding")(t)
        h = jnp.concatenate([x.reshape(batch, -1), time_emb, state], axis=-1)
        head = ResidualMLP if c.residual_style else MLP
        out = head(
            tuple(c.mlp_dims) + (c.horizon_steps * c.action_dim,),
            c.activation_type,
            c.out_activation_type,
            c.use_layernorm,
            name="mlp_mean",
        )(h)
        return out.reshape(batch, c.horizon_steps, c.action_dim)


def init_network_params(config: NetworkConfig, seed: int):
    """Fresh parameters (torch's default Linear init, LayerNorm scale 1 / bias 0)."""
    return DiffusionMLP(config).init(
        jax.random.PRNGKey(seed),
        jnp.zeros((1, config.horizon_steps, config.action_dim), jnp.float32),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, config.cond_dim), jnp.float32),
    )["params"]


def param_shapes(config: NetworkConfig) -> dict:
    """The parameter tree's shapes, computed without allocating it."""
    abstract = jax.eval_shape(lambda: init_network_params(config, 0))
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), abstract)


def count_params(params) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))
