"""Image augmentations run on device inside the jitted update (DrQ-style).

`random_crop` is the reference's: edge-pad by `padding`, then a per-sample random window of the
original size. `color_jitter` draws brightness / contrast / saturation / hue per sample (and per
camera) and applies them in a random per-sample order with probability `apply_prob`. Each of the
four ops is affine in RGB (hue as a rotation about the grey axis in YIQ space, contrast against
the image's per-channel mean, which an affine op moves affinely), so the whole jitter composes into
ONE 3x3 matrix + offset per image and costs one pass over the pixels instead of the reference's
RGB->HSV round trips; values are clipped to [0, 1] once, at the end (the reference clips after
every op).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.networks.encoders import pixels_to_float

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ColorJitterConfig:
    brightness: float = 0.2
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.03
    apply_prob: float = 0.8


def random_crop(key: jax.Array, pixels: jax.Array, padding: int = 4) -> jax.Array:
    """pixels (B, H, W, C) -> (B, H, W, C): edge-pad, then a random window per sample."""
    if padding <= 0:
        return pixels
    b, h, w, c = pixels.shape
    padded = jnp.pad(pixels, ((0, 0), (padding, padding), (padding, padding), (0, 0)), "edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop_one(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets)


def _jitter_affine(key: jax.Array, mean_rgb: jax.Array, cfg: ColorJitterConfig):
    """One image's jitter as (A (3, 3), b (3,)) with out = A @ rgb + b."""
    k_b, k_c, k_s, k_h, k_order, k_apply = jax.random.split(key, 6)
    brightness = jax.random.uniform(k_b, (), minval=-cfg.brightness, maxval=cfg.brightness)
    contrast = jax.random.uniform(k_c, (), minval=1 - cfg.contrast, maxval=1 + cfg.contrast)
    saturation = jax.random.uniform(k_s, (), minval=1 - cfg.saturation, maxval=1 + cfg.saturation)
    hue = jax.random.uniform(k_h, (), minval=-cfg.hue, maxval=cfg.hue) * 2.0 * jnp.pi
    eye = jnp.eye(3, dtype=jnp.float32)
    sat_matrix = saturation * eye + (1.0 - saturation) * jnp.outer(jnp.ones(3), _LUMA)
    cos, sin = jnp.cos(hue), jnp.sin(hue)
    rotation = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    hue_matrix = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ

    def step(carry, op):
        a, b = carry
        mean_now = a @ mean_rgb + b
        candidates_a = jnp.stack([a, contrast * a, sat_matrix @ a, hue_matrix @ a])
        candidates_b = jnp.stack(
            [
                b + brightness,
                contrast * b + (1 - contrast) * mean_now,
                sat_matrix @ b,
                hue_matrix @ b,
            ]
        )
        return (candidates_a[op], candidates_b[op]), None

    order = jax.random.permutation(k_order, 4)
    (a, b), _ = jax.lax.scan(step, (eye, jnp.zeros(3, jnp.float32)), order)
    apply = jax.random.bernoulli(k_apply, cfg.apply_prob)
    return jnp.where(apply, a, eye), jnp.where(apply, b, 0.0)


def color_jitter(
    key: jax.Array, pixels: jax.Array, cfg: ColorJitterConfig = ColorJitterConfig()
) -> jax.Array:
    """pixels (B, H, W, 3N) uint8 or float -> float32 (B, H, W, 3N) in [0, 1]; each of the N
    stacked RGB cameras of each sample gets its own draw."""
    x = pixels_to_float(pixels)
    bsz, h, w, c = x.shape
    if c % 3:
        raise ValueError(
            f"color jitter needs RGB cameras stacked on channels (C % 3 == 0), got C={c}"
        )
    x = x.reshape(bsz, h, w, c // 3, 3)
    means = x.mean(axis=(1, 2))  # (B, N, 3)
    keys = jax.random.split(key, bsz * (c // 3)).reshape(bsz, c // 3, -1)
    a, b = jax.vmap(jax.vmap(lambda k, m: _jitter_affine(k, m, cfg)))(keys, means)
    out = jnp.einsum("bhwnc,bndc->bhwnd", x, a) + b[:, None, None]
    return jnp.clip(out, 0.0, 1.0).reshape(bsz, h, w, c)


def augment_pixels(
    key: jax.Array,
    pixels: jax.Array,
    crop_padding: int = 4,
    jitter: ColorJitterConfig | None = ColorJitterConfig(),
) -> jax.Array:
    """Random crop, then (optionally) colour jitter. Returns float32 (B, H, W, C) in [0, 1]."""
    k_crop, k_jitter = jax.random.split(key)
    pixels = random_crop(k_crop, pixels, crop_padding)
    if jitter is None:
        return pixels_to_float(pixels)
    return color_jitter(k_jitter, pixels, jitter)
