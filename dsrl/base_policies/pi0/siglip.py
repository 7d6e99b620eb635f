"""SigLIP image encoder (a big_vision ViT, no pooling) with openpi's parameter names.

The module tree reproduces `PaliGemma/img/...` of an openpi checkpoint: `embedding` (patch conv),
`pos_embedding`, `Transformer/encoderblock/...` (blocks stacked on a leading depth axis by
`nn.scan`), `Transformer/encoder_norm`, `head`. flax's own LayerNorm, Dense and
MultiHeadDotProductAttention give the same numerics as big_vision (LayerNorm eps 1e-6 with float32
statistics, query scaled by 1/sqrt(head_dim), softmax in the activation dtype, tanh-GELU).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from dsrl.base_policies.pi0.config import VisionConfig


class PatchEmbed(nn.Module):
    """A stride = kernel = patch convolution, computed as one matmul over flattened patches.

    Same parameters as `nn.Conv(width, (p, p), strides=p, padding="VALID")` (kernel (p, p, 3, W)),
    same result up to summation order, and several times faster than a strided conv on XLA:CPU.
    """

    width: int
    patch_size: int

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        """images: f32 (N, H, W, C) -> f32 (N, H/p * W/p, width), patches in row-major order."""
        n, h, w, c = images.shape
        p = self.patch_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.width,))
        patches = images.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(n, (h // p) * (w // p), p * p * c)
        kernel = kernel.reshape(p * p * c, self.width).astype(jnp.float32)
        return patches @ kernel + bias.astype(jnp.float32)


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        init = {"kernel_init": nn.initializers.xavier_uniform()}
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, **init)(x)
        y = nn.gelu(y)  # tanh approximation, as big_vision
        return nn.Dense(x.shape[-1], dtype=self.dtype, **init)(y)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block; `(x, None)` return so that `nn.scan` can stack it."""

    mlp_dim: int
    num_heads: int
    dtype: str

    @nn.compact
    def __call__(self, x, _):
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            deterministic=True,
        )(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype)(x)
        x = x + MlpBlock(self.mlp_dim, self.dtype)(y)
        return x, None


class Encoder(nn.Module):
    depth: int
    mlp_dim: int
    num_heads: int
    dtype: str
    remat: bool = False  # recompute each block in the backward pass (Pi0Config.remat)

    @nn.compact
    def __call__(self, x):
        blocks = nn.scan(
            nn.remat(EncoderBlock) if self.remat else EncoderBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
        )(self.mlp_dim, self.num_heads, self.dtype, name="encoderblock")
        x, _ = blocks(x, None)
        return nn.LayerNorm(name="encoder_norm", dtype=self.dtype)(x)


class SigLIP(nn.Module):
    """ViT image encoder with a linear head to the language model width.

    `out_width` is the PaliGemma Gemma width (2048 for gemma_2b). Images are float32 NHWC in
    [-1, 1]; the patch embedding and position embedding run in float32 (as openpi does), the blocks
    in `dtype`. Output (N, tokens_per_image, out_width) in `dtype`; no token scaling.
    """

    config: VisionConfig
    out_width: int
    dtype: str = "float32"
    remat: bool = False

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        x = PatchEmbed(cfg.width, cfg.patch_size, name="embedding")(images.astype(jnp.float32))
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(stddev=1 / np.sqrt(cfg.width)),
            (1, x.shape[1], cfg.width),
        )
        x = (x + pos.astype(jnp.float32)).astype(self.dtype)
        x = Encoder(
            cfg.depth, cfg.mlp_dim, cfg.num_heads, self.dtype, self.remat, name="Transformer"
        )(x)
        # openpi zero-initialises this head; a random init keeps image content visible in the
        # outputs of randomly initialised test models (checkpoints overwrite it anyway).
        return nn.Dense(self.out_width, dtype=self.dtype, name="head")(x)


def init_params(make, config: VisionConfig, out_width: int, tokens: int):
    """The parameter tree `SigLIP` reads (openpi's `PaliGemma/img`), leaves from
    `make(shape, stddev)` (see gemma.ParamMaker). Built by hand rather than by `SigLIP.init` so
    that random initialisation needs no compilation; a test checks it equals flax's own tree."""
    w, f, n, p, depth = (
        config.width,
        config.mlp_dim,
        config.num_heads,
        config.patch_size,
        config.depth,
    )
    hd = w // n

    def dense(shape_in, shape_out, fan_in, lead=(depth,)):
        return {
            "kernel": make((*lead, *shape_in, *shape_out), fan_in**-0.5),
            "bias": make((*lead, *shape_out), 0.0),
        }

    def layer_norm(lead=(depth,)):
        return {"scale": make((*lead, w), None), "bias": make((*lead, w), 0.0)}

    block = {
        "LayerNorm_0": layer_norm(),
        "LayerNorm_1": layer_norm(),
        "MultiHeadDotProductAttention_0": {
            "query": dense((w,), (n, hd), w),
            "key": dense((w,), (n, hd), w),
            "value": dense((w,), (n, hd), w),
            "out": dense((n, hd), (w,), w),
        },
        "MlpBlock_0": {"Dense_0": dense((w,), (f,), w), "Dense_1": dense((f,), (w,), f)},
    }
    return {
        "embedding": dense((p, p, 3), (w,), p * p * 3, lead=()),
        "pos_embedding": make((1, tokens, w), w**-0.5),
        "Transformer": {"encoderblock": block, "encoder_norm": layer_norm(lead=())},
        "head": dense((w,), (out_width,), w, lead=()),
    }
