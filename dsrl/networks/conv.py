"""A drop-in `conv_general_dilated` for flax's `nn.Conv` whose kernel gradient is fast on XLA:CPU.

Why. XLA:CPU runs a convolution's kernel gradient (dW) as another Eigen convolution, whose input
must be the layer's input activation laid out channels-first and batch-last: (C, H, W, N) from
the forward's (N, H, W, C). XLA builds that transposed copy in one loop fusion together with the
activation's producer, the previous layer's bias add and ReLU, and its loop emitter runs such a
fused transpose 3-5x slower than a plain transpose of a stored array (about 15-25 ms against
4-5 ms for one 256 x 31 x 31 x 32 activation on the 2-core dev box). The activation is stored
anyway, as the forward convolution's operand.

What. `conv_general_dilated` routes the common case (2-D, NHWC / HWIO, no dilation, no groups)
through `conv2d_nhwc`, a `jax.custom_vjp` whose backward computes
- the input gradient exactly as JAX's own rule does, and
- the kernel gradient as XLA does, a convolution of the transposed input with the transposed
  output gradient, but with the input passed through a `lax.cond` whose two branches are the same
  transpose. Which branch runs never matters; the conditional only stops XLA from fusing the
  producer into the transpose, so XLA transposes the stored activation with its plain copy.
On the LIBERO preset this makes the update 8-18 % faster (`scripts/bench_learner.py
--paired_plain_conv 10` on the dev box). Results equal JAX's own gradients to float rounding
(`tests/test_conv.py`).

Where. Only on the CPU backend: GPU convolution libraries compute the kernel gradient natively,
and a conditional costs a device-to-host sync there. Everything else (other layouts, dilation,
feature groups, other backends) goes to `lax.conv_general_dilated` unchanged. Set
`DSRL_FAST_CONV_GRAD=0` to turn the custom gradient off (read when a function is traced).
`conv2d_nhwc` has no forward-mode (jvp) rule, as for any `custom_vjp`; the fallback has one.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

OPT_OUT_VAR = "DSRL_FAST_CONV_GRAD"
NHWC = ("NHWC", "HWIO", "NHWC")


def fast_path_enabled() -> bool:
    """True when convolutions traced now take the custom kernel-gradient path: on the CPU backend,
    unless `DSRL_FAST_CONV_GRAD=0`."""
    return os.environ.get(OPT_OUT_VAR, "1") != "0" and jax.default_backend() == "cpu"


def _forward(x, w, strides, padding, precision):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC, precision=precision
    )


def _stored_transpose(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (C, H, W, N). Both branches are the same transpose, so the predicate's value
    is irrelevant; the conditional is a fusion barrier (see the module docstring)."""

    def transpose(v):
        return jnp.transpose(v, (3, 1, 2, 0))

    return lax.cond(x.reshape(-1)[0] > 0, transpose, transpose, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_nhwc(x, w, strides, padding, precision=None):
    """2-D convolution, x (N, H, W, Cin), w (kh, kw, Cin, Cout), `strides` (sh, sw), explicit
    `padding` ((lo, hi), (lo, hi)); the same value as `lax.conv_general_dilated`."""
    return _forward(x, w, strides, padding, precision)


def _conv2d_fwd(x, w, strides, padding, precision):
    return _forward(x, w, strides, padding, precision), (x, w)


def _conv2d_bwd(strides, padding, precision, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda v: _forward(v, w, strides, padding, precision), x)
    (dx,) = input_vjp(g)
    # dW[i, j, c, o] = sum_{n, h, w} x_pad[n, s*h + i, s*w + j, c] * g[n, h, w, o]: a convolution of
    # x as (C, H, W, N) with g as the kernel (H', W', N, O), dilated by the forward stride.
    # The high padding is cut so that exactly (kh, kw) outputs come out: a strided layer's last
    # input rows can lie past the reach of its last output, and would be computed for nothing.
    trimmed = []
    dims = zip(x.shape[1:3], w.shape[:2], g.shape[1:3], strides, padding, strict=True)
    for size, k, out, s, (lo, hi) in dims:
        surplus = (size + lo + hi) - (s * (out - 1) + 1) + 1 - k
        trimmed.append((lo, hi - surplus))
    dw_t = lax.conv_general_dilated(
        _stored_transpose(x),
        jnp.transpose(g, (1, 2, 0, 3)),
        (1, 1),
        trimmed,
        rhs_dilation=strides,
        dimension_numbers=NHWC,
        precision=precision,
    )
    return dx, jnp.transpose(dw_t, (1, 2, 0, 3)).astype(w.dtype)


conv2d_nhwc.defvjp(_conv2d_fwd, _conv2d_bwd)


def _all_ones(dilation) -> bool:
    return dilation is None or all(int(d) == 1 for d in dilation)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """`lax.conv_general_dilated` with the same signature; plain 2-D NHWC convolutions on CPU
    get the fast kernel gradient of `conv2d_nhwc`. Pass it to `nn.Conv(conv_general_dilated=...)`."""
    plain = (
        lhs.ndim == 4
        and rhs.ndim == 4
        and _all_ones(lhs_dilation)
        and _all_ones(rhs_dilation)
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and lhs.dtype == rhs.dtype
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    )
    if not (plain and fast_path_enabled()):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv2d_nhwc(lhs, rhs, strides, padding, precision)
