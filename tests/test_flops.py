"""The matmul FLOP count the benchmark scripts divide by (dsrl/utils/flops.py)."""

import jax
import jax.numpy as jnp

from dsrl.utils.flops import matmul_flops


def test_matmul_flops_counts_each_scan_iteration_and_the_costlier_cond_branch():
    w = jnp.ones((8, 16))

    def layer(x, _):
        return jnp.tanh(x @ w.T @ w), None  # (4, 16) @ (16, 8) then (4, 8) @ (8, 16)

    def step(x, flag):
        y, _ = jax.lax.scan(layer, x, None, length=5)
        return jax.lax.cond(
            flag, lambda v: v @ jnp.ones((16, 32)), lambda v: jnp.tile(v, (1, 2)), y
        )

    jaxpr = jax.make_jaxpr(step)(jnp.ones((4, 16)), True).jaxpr
    per_layer = 2 * 4 * 8 * 16 + 2 * 4 * 16 * 8
    assert matmul_flops(jaxpr) == 5 * per_layer + 2 * 4 * 32 * 16
