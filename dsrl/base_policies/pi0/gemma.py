"""Gemma mixture-of-transformers for Pi0, as pure functions over openpi's parameter tree.

Two experts share one attention per layer: expert 0 (PaliGemma's Gemma, no name suffix) reads the
image+prompt prefix, expert 1 (the action expert, `_1` suffix) reads the state/action suffix.
At inference the prefix never attends to the suffix, so the two run separately: `prefix_forward`
runs expert 0 once and returns its per-layer keys/values (the KV cache), `suffix_forward` runs
expert 1 for many suffixes against that cache.

Parameter tree (under `PaliGemma/llm`), depth stacked on axis 0:
  embedder/input_embedding (V, D0)
  layers/attn/{q_einsum,kv_einsum,attn_vec_einsum}[_1]/w  (L,N,D,H), (L,2,Kv,D,H), (L,N,H,D)
  layers/mlp[_1]/{gating_einsum (L,2,D,F), linear (L,F,D)}
  layers/{pre_attention_norm,pre_ffw_norm}[_1]/scale (L,D)   (Pi0.5 expert 1: Dense_0 (L,D,3D))
  final_norm[_1]/scale (D,)                                  (Pi0.5 expert 1: Dense_0 (D,3D))

Shapes in this file: B batch, K noises per observation, T query tokens, P prefix (cached) tokens,
S suffix tokens, N query heads, Kv key/value heads, G = N / Kv, H head_dim, D width, F mlp_dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.base_policies.pi0.config import GemmaConfig

Params = dict[str, Any]
# make(shape, stddev) -> a float32 leaf (array, or ShapeDtypeStruct for shape-only trees); the
# leaf is N(0, stddev^2), zeros for stddev 0, ones for stddev None.
ParamMaker = Callable[[tuple[int, ...], float | None], Any]

# Finite "minus infinity" for masked logits (as Gemma): a fully masked query row (padding) then
# gets a harmless uniform softmax instead of NaN.
BIG_NEG = -2.3819763e38
ROPE_MAX_WAVELENGTH = 10_000


def _suffix(name: str, expert: int) -> str:
    return name if expert == 0 else f"{name}_{expert}"


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def init_params(
    make: ParamMaker, configs: Sequence[GemmaConfig], vocab_size: int, adarms: Sequence[bool]
) -> Params:
    """openpi's `PaliGemma/llm` tree, leaves made by `make(shape, stddev)` (stddev 0 = zeros).

    Initial values only serve tests and demos (checkpoints replace them); adaRMS modulations are
    random rather than openpi's zeros so that a random Pi0.5 expert is not an identity map.
    """
    vlm = configs[0]
    depth = vlm.depth
    params: Params = {
        "embedder": {"input_embedding": make((vocab_size, vlm.width), 0.02)},
        "layers": {"attn": {}},
    }
    layers = params["layers"]
    for i, (cfg, ada) in enumerate(zip(configs, adarms, strict=True)):
        d, n, kv, h, f = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
        attn = layers["attn"]
        attn[_suffix("q_einsum", i)] = {"w": make((depth, n, d, h), d**-0.5)}
        attn[_suffix("kv_einsum", i)] = {"w": make((depth, 2, kv, d, h), d**-0.5)}
        attn[_suffix("attn_vec_einsum", i)] = {"w": make((depth, n, h, d), (n * h) ** -0.5)}
        layers[_suffix("mlp", i)] = {
            "gating_einsum": make((depth, 2, d, f), d**-0.5),
            "linear": make((depth, f, d), f**-0.5),
        }
        for norm in ("pre_attention_norm", "pre_ffw_norm"):
            layers[_suffix(norm, i)] = _init_norm(make, d, ada, (depth,))
        params[_suffix("final_norm", i)] = _init_norm(make, d, ada, ())
    return params


def _init_norm(make: ParamMaker, width: int, adaptive: bool, lead: tuple[int, ...]) -> Params:
    if not adaptive:
        return {"scale": make((*lead, width), 0.0)}
    return {
        "Dense_0": {
            "kernel": make((*lead, width, 3 * width), 0.1 * width**-0.5),
            "bias": make((*lead, 3 * width), 0.0),
        }
    }


def _expert_layers(layers: Params, expert: int) -> Params:
    """The stacked per-layer weights of one expert, under suffix-free names."""
    attn = layers["attn"]
    return {
        "q": attn[_suffix("q_einsum", expert)]["w"],
        "kv": attn[_suffix("kv_einsum", expert)]["w"],
        "out": attn[_suffix("attn_vec_einsum", expert)]["w"],
        "gating": layers[_suffix("mlp", expert)]["gating_einsum"],
        "linear": layers[_suffix("mlp", expert)]["linear"],
        "attn_norm": layers[_suffix("pre_attention_norm", expert)],
        "ffw_norm": layers[_suffix("pre_ffw_norm", expert)],
    }


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


def embed_tokens(params: Params, tokens: jnp.ndarray, dtype) -> jnp.ndarray:
    """int (B, T) -> (B, T, D0): table lookup times sqrt(D0), the multiplier rounded to the table
    dtype first (45.25 for bf16 gemma_2b), as Gemma does. Only text tokens are scaled."""
    table = params["embedder"]["input_embedding"]
    x = table[(tokens,)]
    x = x * jnp.asarray(np.sqrt(table.shape[-1]), jnp.float32).astype(x.dtype)
    return x.astype(dtype)


def rms_norm(
    x: jnp.ndarray, norm: Params, cond: jnp.ndarray | None
) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Gemma RMSNorm with float32 statistics, eps 1e-6 and a (1 + scale) gain; returns (y, gate).

    Adaptive (Pi0.5 expert, `cond` given, broadcastable to x[..., :D]): a Dense of `cond` gives
    (scale, shift, gate) and y = normed * (1 + scale) + shift; the gate scales the residual.
    """
    dtype = x.dtype
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    normed = x * jnp.reciprocal(jnp.sqrt(var + 1e-6))
    if cond is None:
        return (normed * (1 + norm["scale"])).astype(dtype), None
    dense = norm["Dense_0"]
    modulation = cond.astype(dtype) @ dense["kernel"].astype(dtype) + dense["bias"].astype(dtype)
    scale, shift, gate = jnp.split(modulation, 3, axis=-1)
    return (normed * (1 + scale) + shift).astype(dtype), gate


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    """Rotary embedding, half-split layout (not interleaved), computed in float32.

    x: (..., T, heads, H); positions: int (..., T) broadcastable to x's leading axes.
    """
    half = x.shape[-1] // 2
    timescale = ROPE_MAX_WAVELENGTH ** ((2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32))
    radians = (positions[..., None] / timescale)[..., None, :]  # (..., T, 1, H/2)
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def feed_forward(x: jnp.ndarray, gating: jnp.ndarray, linear: jnp.ndarray) -> jnp.ndarray:
    """GeGLU: (gelu_tanh(x W_gate) * (x W_up)) W_down, in the activation dtype."""
    gating = gating.astype(x.dtype)
    hidden = jax.nn.gelu(x @ gating[0], approximate=True) * (x @ gating[1])
    return hidden @ linear.astype(x.dtype)


def _qkv(h: jnp.ndarray, lp: Params, positions: jnp.ndarray, num_kv_heads: int):
    """h (B, K, T, D) -> rotated, scaled q (B, K, T, Kv, G, H) and rotated k, v (B, K, T, Kv, H)."""
    q = jnp.einsum("bktd,ndh->bktnh", h, lp["q"].astype(h.dtype))
    k, v = jnp.einsum("bktd,cvdh->cbktvh", h, lp["kv"].astype(h.dtype))
    head_dim = q.shape[-1]
    q = apply_rope(q, positions) * jnp.asarray(head_dim**-0.5, h.dtype)
    k = apply_rope(k, positions)
    q = q.reshape(*q.shape[:-2], num_kv_heads, q.shape[-2] // num_kv_heads, head_dim)
    return q, k, v


def _attend(
    q: jnp.ndarray,
    shared: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray],
    own: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray] | None,
) -> jnp.ndarray:
    """Attention of q (B, K, T, Kv, G, H) over keys shared by all K (the prefix: k, v (B, P, Kv, H),
    mask bool broadcastable to (B, K, T, P)) plus, optionally, each sample's own keys (k, v
    (B, K, S, Kv, H), mask broadcastable to (B, K, T, S)). One softmax over both, logits and
    softmax in float32, probabilities cast back to the activation dtype. Returns (B, K, T, N*H).

    The shared keys are never copied K times: K only enlarges the matmul's row dimension.
    """
    dtype = q.dtype
    k_p, v_p, mask_p = shared
    logits = [jnp.einsum("bktvgh,bpvh->bkvgtp", q, k_p, preferred_element_type=jnp.float32)]
    masks = [mask_p]
    if own is not None:
        k_s, v_s, mask_s = own
        logits.append(
            jnp.einsum("bktvgh,bksvh->bkvgts", q, k_s, preferred_element_type=jnp.float32)
        )
        masks.append(mask_s)
    masks = [_expand_mask(m, lg.shape) for m, lg in zip(masks, logits, strict=True)]
    logits = jnp.concatenate(logits, axis=-1)
    mask = jnp.concatenate(masks, axis=-1)
    probs = jax.nn.softmax(jnp.where(mask, logits, BIG_NEG), axis=-1).astype(dtype)
    num_p = k_p.shape[1]
    out = jnp.einsum(
        "bkvgtp,bpvh->bktvgh", probs[..., :num_p], v_p, preferred_element_type=jnp.float32
    )
    if own is not None:
        out = out + jnp.einsum(
            "bkvgts,bksvh->bktvgh", probs[..., num_p:], v_s, preferred_element_type=jnp.float32
        )
    return out.astype(dtype).reshape(*out.shape[:3], -1)


def _expand_mask(mask: jnp.ndarray, logits_shape: tuple[int, ...]) -> jnp.ndarray:
    """bool mask broadcastable to (B, K, T, S) -> (B, K, Kv, G, T, S), the logits layout."""
    mask = jnp.asarray(mask)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    return jnp.broadcast_to(mask[:, :, None, None], logits_shape)


def _residual(x: jnp.ndarray, y: jnp.ndarray, gate: jnp.ndarray | None) -> jnp.ndarray:
    return x + y if gate is None else x + y * gate


def _attn_out(out: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """(B, K, T, N*H) with w (N, H, D) -> (B, K, T, D)."""
    return out @ w.reshape(-1, w.shape[-1]).astype(out.dtype)


# ----------------------------------------------------------------------------------------------
# Expert passes
# ----------------------------------------------------------------------------------------------


# Shallow stacks are unrolled: on XLA:CPU the scanned backward pass of the 3-layer `mini` Pi0
# spends most of its time in dynamic-slice + transpose copies of the stacked activations, and a
# fine-tuning step runs ~1.5x faster unrolled. Deep stacks keep the loop (compile time, memory).
_MAX_UNROLLED_DEPTH = 6


def _unroll(cfg: GemmaConfig) -> int:
    return cfg.depth if cfg.depth <= _MAX_UNROLLED_DEPTH else 1


def prefix_forward(
    params: Params,
    cfg: GemmaConfig,
    x: jnp.ndarray,
    mask: jnp.ndarray,
    positions: jnp.ndarray,
    dtype,
    *,
    return_hidden: bool = False,
    remat: bool = False,
) -> tuple[jnp.ndarray, ...]:
    """Expert 0 over the prefix; returns its KV cache (k, v), each (L, B, P, Kv, H), after RoPE.

    x: (B, P, D0); mask: bool (B, P, P) query-by-key; positions: int (B, P). By default the last
    layer's attention output and MLP are skipped: the action path never reads the prefix hidden
    states. With `return_hidden` every layer runs in full and the final-normed hidden states
    (B, P, D0) (activation dtype) come third: (k, v, hidden).
    """
    layers = _expert_layers(params["layers"], 0)
    x = x.astype(dtype)[:, None]  # (B, 1, P, D): the K axis of the shared layer code
    pos = positions[:, None]
    mask = mask[:, None]

    def layer(x, lp):
        h, _ = rms_norm(x, lp["attn_norm"], None)
        q, k, v = _qkv(h, lp, pos, cfg.num_kv_heads)
        k, v = k[:, 0], v[:, 0]
        x = _residual(x, _attn_out(_attend(q, (k, v, mask), None), lp["out"]), None)
        h, _ = rms_norm(x, lp["ffw_norm"], None)
        x = _residual(x, feed_forward(h, lp["gating"], lp["linear"]), None)
        return x, (k, v)

    def indexed_layer(x, index):
        # Index into the full stacks instead of scanning over `w[:-1]`: slicing would copy all
        # but one layer of the weights on every call (3.7 GB for gemma_2b in bf16).
        return layer(x, jax.tree.map(lambda w: w[index], layers))

    if remat:  # the slicing too: only x and the index are kept per layer
        indexed_layer = jax.checkpoint(indexed_layer)

    if return_hidden:
        x, (k_cache, v_cache) = jax.lax.scan(
            indexed_layer, x, jnp.arange(cfg.depth), unroll=_unroll(cfg)
        )
        hidden, _ = rms_norm(x[:, 0], params["final_norm"], None)
        return k_cache, v_cache, hidden

    x, (k_cache, v_cache) = jax.lax.scan(
        indexed_layer, x, jnp.arange(cfg.depth - 1), unroll=_unroll(cfg)
    )
    last = jax.tree.map(lambda w: w[-1], layers)
    h, _ = rms_norm(x, last["attn_norm"], None)
    _, k, v = _qkv(h, last, pos, cfg.num_kv_heads)
    k_cache = jnp.concatenate([k_cache, k[None, :, 0]], axis=0)
    v_cache = jnp.concatenate([v_cache, v[None, :, 0]], axis=0)
    return k_cache, v_cache


def suffix_forward(
    params: Params,
    cfg: GemmaConfig,
    x: jnp.ndarray,
    kv_cache: tuple[jnp.ndarray, jnp.ndarray],
    prefix_mask: jnp.ndarray,
    suffix_mask: jnp.ndarray,
    positions: jnp.ndarray,
    cond: jnp.ndarray | None,
    dtype,
    remat: bool = False,
) -> jnp.ndarray:
    """Expert 1 over K suffixes per observation, attending to the cached prefix and themselves.

    x: (B, K, S, D1); kv_cache: (L, B, P, Kv, H) x2; prefix_mask: bool (B, P) (valid prefix
    tokens, visible to every suffix token); suffix_mask: bool (S, S) query-by-key among the suffix;
    positions: int (B, S); cond: adaRMS conditioning broadcastable to (B, K, 1, D1), or None.
    Returns the final-normed suffix hidden states (B, K, S, D1). The cache is read, never written.
    """
    layers = _expert_layers(params["layers"], 1)
    x = x.astype(dtype)
    pos = positions[:, None]
    shared_mask = prefix_mask[:, None, None, :]  # (B, 1, 1, P)

    def layer(x, inputs):
        lp, k_p, v_p = inputs
        h, gate = rms_norm(x, lp["attn_norm"], cond)
        q, k, v = _qkv(h, lp, pos, cfg.num_kv_heads)
        y = _attend(q, (k_p, v_p, shared_mask), (k, v, suffix_mask))
        x = _residual(x, _attn_out(y, lp["out"]), gate)
        h, gate = rms_norm(x, lp["ffw_norm"], cond)
        x = _residual(x, feed_forward(h, lp["gating"], lp["linear"]), gate)
        return x, None

    if remat:
        layer = jax.checkpoint(layer)
    x, _ = jax.lax.scan(layer, x, (layers, *kv_cache), unroll=_unroll(cfg))
    out, _ = rms_norm(x, params["final_norm_1"], cond)
    return out
