"""Pi0 / Pi0.5 parameters: the tree of an openpi checkpoint's `params`, random or as shapes.

`init_params` draws random weights (tests, demos, benchmarks; not openpi's training init) and
`param_shapes` describes the tree without allocating it (loaders check checkpoints against it,
the fine-tuning dry run sizes memory with it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.base_policies.pi0 import gemma, siglip
from dsrl.base_policies.pi0.config import Pi0Config

Params = dict[str, Any]


def _param_tree(config: Pi0Config, make: gemma.ParamMaker) -> Params:
    vlm, expert = config.paligemma, config.action_expert
    img = siglip.init_params(make, config.vision, vlm.width, config.tokens_per_image)
    llm = gemma.init_params(make, (vlm, expert), config.vocab_size, (False, config.pi05))
    a, d = config.action_dim, expert.width

    def dense(d_in, d_out):
        return {"kernel": make((d_in, d_out), d_in**-0.5), "bias": make((d_out,), 0.0)}

    params: Params = {"PaliGemma": {"img": img, "llm": llm}}
    params["action_in_proj"] = dense(a, d)
    if config.pi05:
        params["time_mlp_in"] = dense(d, d)
        params["time_mlp_out"] = dense(d, d)
    else:
        params["state_proj"] = dense(a, d)
        params["action_time_mlp_in"] = dense(2 * d, d)
        params["action_time_mlp_out"] = dense(d, d)
    params["action_out_proj"] = dense(d, a)
    return params


def init_params(
    config: Pi0Config, rng: jax.Array | int, dtype: str | np.dtype = "float32"
) -> Params:
    """Random parameters with exactly the tree of an openpi checkpoint's `params`.

    For tests, demos and benchmarks only (not openpi's training init). Drawn with numpy from a
    seed derived from `rng` (a JAX key or an int): no per-shape compilation, fast at 3B params.
    `dtype` ("float32" or "bfloat16", as `checkpoint.load_pi0` casts) is applied leaf by leaf on
    the host, so the device never holds a float32 copy of a bfloat16 model.
    """
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype.name!r}.")
    if isinstance(rng, int):
        seed = rng
    else:
        seed = np.asarray(jax.random.key_data(rng)).ravel().tolist()
    gen = np.random.default_rng(seed)

    def make(shape, stddev):
        if stddev is None:
            x = np.ones(shape, np.float32)
        elif stddev == 0:
            x = np.zeros(shape, np.float32)
        else:
            x = gen.standard_normal(shape, dtype=np.float32)
            x *= np.float32(stddev)
        return jax.device_put(x if x.dtype == dtype else x.astype(dtype))

    return _param_tree(config, make)


def param_shapes(config: Pi0Config) -> Params:
    """The parameter tree as float32 `jax.ShapeDtypeStruct`s, without allocating anything."""
    return _param_tree(config, lambda shape, _: jax.ShapeDtypeStruct(shape, jnp.float32))
