"""LoRA on the Gemmas with openpi's leaf names, shapes and arithmetic.

openpi's `gemma_2b_lora` / `gemma_300m_lora` add, next to each stacked weight (depth axis first):
  attn/{q_einsum,kv_einsum,attn_vec_einsum}[_i]/lora_a, lora_b: `w`'s shape with the rank on the
    last axis (lora_a) or on the second-to-last axis (lora_b); the update is (x A B) * alpha/rank;
  mlp[_i]/{gating_einsum,linear}_lora_{a,b}: (2, D, r)/(2, r, F) and (F, r)/(r, D), added with no
    scaling at all (openpi's FeedForward ignores alpha).
The attention output projection's update follows openpi's einsum literally: its lora_b is summed
over the head axis before use ("BTL,NLD->BTD").

Instead of extra matmuls in the forward pass, `merge` folds every A B into its base weight (a
differentiable, exactly equivalent rewrite up to float rounding); the forward code is unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

ATTN = ("q_einsum", "kv_einsum", "attn_vec_einsum")
# (A, B) -> delta W, depth axis first, for each attention einsum.
_ATTN_DELTA = {
    "q_einsum": lambda a, b: jnp.einsum("lndr,lnrh->lndh", a, b),
    "kv_einsum": lambda a, b: jnp.einsum("lckdr,lckrh->lckdh", a, b),
    "attn_vec_einsum": lambda a, b: jnp.einsum("lnhr,lrd->lnhd", a, b.sum(axis=1)),
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Ranks and alphas per expert; the defaults are openpi's gemma_2b_lora / gemma_300m_lora."""

    vlm_rank: int = 16
    vlm_alpha: float = 16.0
    expert_rank: int = 32
    expert_alpha: float = 32.0
    init_stddev: float = 0.01  # openpi draws both A and B from N(0, 0.01^2)

    def rank(self, expert: int) -> int:
        return (self.vlm_rank, self.expert_rank)[expert]

    def attn_scaling(self, expert: int) -> float:
        return (self.vlm_alpha / self.vlm_rank, self.expert_alpha / self.expert_rank)[expert]


def _name(base: str, expert: int) -> str:
    return base if expert == 0 else f"{base}_{expert}"


def lora_shapes(llm: Params, config: LoraConfig, experts=(0, 1)) -> dict[tuple[str, ...], tuple]:
    """Path under `PaliGemma/llm` -> shape of every LoRA leaf openpi would create."""
    layers = llm["layers"]
    out = {}
    for i in experts:
        r = config.rank(i)
        for base in ATTN:
            shape = tuple(layers["attn"][_name(base, i)]["w"].shape)
            out[("layers", "attn", _name(base, i), "lora_a")] = (*shape[:-1], r)
            out[("layers", "attn", _name(base, i), "lora_b")] = (*shape[:-2], r, shape[-1])
        mlp = layers[_name("mlp", i)]
        depth, _, d, f = mlp["gating_einsum"].shape
        key = ("layers", _name("mlp", i))
        out[(*key, "gating_einsum_lora_a")] = (depth, 2, d, r)
        out[(*key, "gating_einsum_lora_b")] = (depth, 2, r, f)
        out[(*key, "linear_lora_a")] = (depth, f, r)
        out[(*key, "linear_lora_b")] = (depth, r, d)
    return out


def add_lora(params: Params, config: LoraConfig, seed: int = 0, experts=(0, 1)) -> Params:
    """A copy of `params` with fresh LoRA leaves (openpi's init: A and B both N(0, stddev^2))."""
    llm = params["PaliGemma"]["llm"]
    gen = np.random.default_rng(seed)
    new_llm = jax.tree.map(lambda x: x, llm)  # new containers, same leaves
    for path, shape in lora_shapes(llm, config, experts).items():
        node = new_llm
        for key in path[:-1]:
            node = node[key]
        value = gen.standard_normal(shape, dtype=np.float32) * np.float32(config.init_stddev)
        node[path[-1]] = jnp.asarray(value)
    return {**params, "PaliGemma": {**params["PaliGemma"], "llm": new_llm}}


def has_lora(params: Params) -> bool:
    return any("lora" in str(getattr(k, "key", k)) for p, _ in _flat(params) for k in p)


def _flat(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def merge(params: Params, config: LoraConfig | None = None) -> Params:
    """`params` with every LoRA pair folded into its base weight and the LoRA leaves removed
    (identity when there are none). Attention updates are scaled by alpha/rank (1.0 for openpi's
    presets, whose alpha equals the rank); FFN updates are never scaled, as openpi."""
    if not has_lora(params):
        return params
    config = config or LoraConfig()
    llm = params["PaliGemma"]["llm"]
    layers = dict(llm["layers"])
    attn = dict(layers["attn"])
    for name, node in llm["layers"]["attn"].items():
        if "lora_a" in node:
            base = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
            expert = int(name.rsplit("_", 1)[1]) if name[-1].isdigit() else 0
            w = node["w"]
            delta = _ATTN_DELTA[base](node["lora_a"], node["lora_b"]) * config.attn_scaling(expert)
            attn[name] = {"w": (w + delta.astype(w.dtype))}
    layers["attn"] = attn
    for name, node in llm["layers"].items():
        if name.startswith("mlp") and "gating_einsum_lora_a" in node:
            gating = node["gating_einsum"] + jnp.einsum(
                "lcdr,lcrf->lcdf", node["gating_einsum_lora_a"], node["gating_einsum_lora_b"]
            ).astype(node["gating_einsum"].dtype)
            linear = node["linear"] + jnp.einsum(
                "lfr,lrd->lfd", node["linear_lora_a"], node["linear_lora_b"]
            ).astype(node["linear"].dtype)
            layers[name] = {"gating_einsum": gating, "linear": linear}
    llm = {**llm, "layers": layers}
    return {**params, "PaliGemma": {**params["PaliGemma"], "llm": llm}}
