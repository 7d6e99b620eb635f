"""dsrl.networks.conv: the CPU convolution with the custom kernel gradient gives the same values and
gradients as JAX's own, is the path the encoders take on CPU, and steps aside where it does not
apply."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dsrl.networks import conv as conv_lib
from dsrl.networks.encoders import make_encoder


def _loss(conv_fn, x, w, r, strides, padding, **kwargs):
    y = conv_fn(x, w, strides, padding, dimension_numbers=conv_lib.NHWC, **kwargs)
    return jnp.sum(y * r)


def _value_and_grads(conv_fn, x, w, strides, padding, **kwargs):
    y = conv_fn(x, w, strides, padding, dimension_numbers=conv_lib.NHWC, **kwargs)
    r = jax.random.normal(jax.random.PRNGKey(7), y.shape)
    grads = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=(0, 4, 5))(
        conv_fn, x, w, r, strides, padding
    )
    return y, grads


@pytest.mark.parametrize(
    "strides, padding",
    [
        ((1, 1), "VALID"),
        ((2, 2), "VALID"),
        ((1, 1), "SAME"),
        ((2, 2), "SAME"),
        ((2, 1), ((1, 0), (2, 1))),
    ],
)
def test_values_and_gradients_match_jax(strides, padding):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (3, 11, 9, 4))
    w = jax.random.normal(kw, (3, 2, 4, 5))
    assert conv_lib.fast_path_enabled()
    y_fast, (dx_fast, dw_fast) = _value_and_grads(
        conv_lib.conv_general_dilated, x, w, strides, padding
    )
    y_ref, (dx_ref, dw_ref) = _value_and_grads(lax.conv_general_dilated, x, w, strides, padding)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx_fast, dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw_fast, dw_ref, rtol=1e-5, atol=1e-4)


def test_batched_gradients_under_vmap_match_jax():
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 8, 3))
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 6))
    r = jax.random.normal(jax.random.PRNGKey(3), (4, 6, 6, 6))

    def per_example(conv_fn):
        grad = jax.grad(_loss, argnums=2)
        return jax.vmap(lambda x: grad(conv_fn, x, w, r, (1, 1), "VALID"))(xs)

    np.testing.assert_allclose(
        per_example(conv_lib.conv_general_dilated),
        per_example(lax.conv_general_dilated),
        rtol=1e-5,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "kwargs, x_shape, w_shape",
    [
        ({"rhs_dilation": (2, 2)}, (2, 9, 9, 4), (3, 3, 4, 5)),
        ({"feature_group_count": 2}, (2, 9, 9, 4), (3, 3, 2, 6)),
        ({"dimension_numbers": ("NCHW", "OIHW", "NCHW")}, (2, 4, 9, 9), (5, 4, 3, 3)),
    ],
)
def test_other_convolutions_go_to_lax_unchanged(kwargs, x_shape, w_shape):
    x = jax.random.normal(jax.random.PRNGKey(4), x_shape)
    w = jax.random.normal(jax.random.PRNGKey(5), w_shape)
    kwargs = {"dimension_numbers": conv_lib.NHWC, **kwargs}

    def loss(conv_fn, w):
        return jnp.sum(conv_fn(x, w, (1, 1), "VALID", **kwargs) ** 2)

    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: loss(conv_lib.conv_general_dilated, w)))(w))
    assert "custom_vjp" not in jaxpr and "cond" not in jaxpr
    np.testing.assert_array_equal(
        jax.grad(lambda w: loss(conv_lib.conv_general_dilated, w))(w),
        jax.grad(lambda w: loss(lax.conv_general_dilated, w))(w),
    )


def _encoder_grads(name: str, **kwargs):
    encoder = make_encoder(name, **kwargs)
    pixels = jax.random.randint(jax.random.PRNGKey(8), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
    params = encoder.init(jax.random.PRNGKey(9), pixels)

    def loss(p):
        return jnp.sum(jnp.tanh(encoder.apply(p, pixels)))

    return params, jax.grad(loss), jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("small", {"features": (8, 8, 8), "strides": (2, 1, 1)}),
        ("small", {"features": (8, 8), "strides": (2, 2), "padding": "SAME"}),
        ("impala", {"features": (4, 8)}),
        ("resnet", {"features": (8, 8)}),
    ],
)
def test_encoders_take_the_fast_path_on_cpu_with_unchanged_gradients(name, kwargs, monkeypatch):
    params, grad_fn, fast = _encoder_grads(name, **kwargs)
    assert "cond" in str(jax.make_jaxpr(grad_fn)(params))

    monkeypatch.setenv(conv_lib.OPT_OUT_VAR, "0")
    assert not conv_lib.fast_path_enabled()
    params_plain, grad_fn_plain, plain = _encoder_grads(name, **kwargs)
    assert "cond" not in str(jax.make_jaxpr(grad_fn_plain)(params_plain))

    # Same parameter tree (checkpoints load either way) and the same gradients.
    assert jax.tree.structure(params) == jax.tree.structure(params_plain)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
