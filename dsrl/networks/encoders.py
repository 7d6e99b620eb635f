"""Pixel encoders: the reference's small conv net, an IMPALA net and a small ResNet.

Every encoder takes pixels (B, H, W, C) -- uint8 in [0, 255] or float in [0, 1], several
cameras already stacked on C -- and returns features (B, F). `pooling` picks how the last
feature map becomes a vector: "flatten" (the reference), "spatial_softmax" (2 expected image
coordinates per channel) or "avg" (global average).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsrl.networks.conv import conv_general_dilated
from dsrl.networks.mlp import default_init

POOLINGS = ("flatten", "spatial_softmax", "avg")
ENCODERS = ("small", "impala", "resnet")

# nn.Conv with dsrl's convolution: the same parameters, a faster kernel gradient on XLA:CPU
# (dsrl/networks/conv.py).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def pixels_to_float(pixels: jax.Array) -> jax.Array:
    """uint8 (B, H, W, C) -> float32 in [0, 1]; float input is taken as already scaled.
    A trailing frame-stack axis (B, H, W, C, S) is folded into channels."""
    if pixels.ndim == 5:
        pixels = pixels.reshape(*pixels.shape[:3], -1)
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (B, H, W, C), got shape {pixels.shape}")
    if pixels.dtype == jnp.uint8:
        return pixels.astype(jnp.float32) / 255.0
    return pixels.astype(jnp.float32)


class SpatialSoftmax(nn.Module):
    """Feature map (B, H, W, C) -> (B, 2C): per channel, the softmax-weighted mean of the pixel
    coordinates, x then y, each in [-1, 1]. The temperature is learned (log-parameterised) when
    `learnable_temperature`, else fixed."""

    temperature: float = 1.0
    learnable_temperature: bool = False

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        b, h, w, c = feature_map.shape
        log_temp = jnp.log(jnp.float32(self.temperature))
        if self.learnable_temperature:
            log_temp = self.param("log_temperature", lambda _: log_temp)
        logits = feature_map.transpose(0, 3, 1, 2).reshape(b, c, h * w) / jnp.exp(log_temp)
        attention = jax.nn.softmax(logits, axis=-1).reshape(b, c, h, w)
        ys = jnp.linspace(-1.0, 1.0, h, dtype=feature_map.dtype)
        xs = jnp.linspace(-1.0, 1.0, w, dtype=feature_map.dtype)
        expected_x = jnp.einsum("bchw,w->bc", attention, xs)
        expected_y = jnp.einsum("bchw,h->bc", attention, ys)
        return jnp.concatenate([expected_x, expected_y], axis=-1)


def pool_features(feature_map: jax.Array, pooling: str, softmax_temperature: float) -> jax.Array:
    if pooling == "flatten":
        return feature_map.reshape(feature_map.shape[0], -1)
    if pooling == "avg":
        return feature_map.mean(axis=(1, 2))
    if pooling == "spatial_softmax":
        # A temperature <= 0 (the reference's -1) means a learned one, starting at 1.
        learned = softmax_temperature <= 0
        return SpatialSoftmax(
            temperature=1.0 if learned else softmax_temperature,
            learnable_temperature=learned,
            name="spatial_softmax",
        )(feature_map)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


class SmallEncoder(nn.Module):
    """The reference 'small' encoder: per layer Conv(features[i], k x k, strides[i], padding)
    -> ReLU, orthogonal(sqrt 2) kernels. At 64x64 with the defaults: 31 -> 29 -> 27 -> 25,
    flattened to 20,000 features."""

    features: Sequence[int] = (32, 32, 32, 32)
    strides: Sequence[int] = (2, 1, 1, 1)
    kernel_size: int = 3
    padding: str = "VALID"
    pooling: str = "flatten"
    softmax_temperature: float = 1.0

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        if len(self.features) != len(self.strides):
            raise ValueError(
                f"cnn_features {tuple(self.features)} and cnn_strides {tuple(self.strides)} "
                "must have the same length"
            )
        x = pixels_to_float(pixels)
        for i, (feat, stride) in enumerate(zip(self.features, self.strides, strict=True)):
            conv = Conv(
                feat,
                (self.kernel_size, self.kernel_size),
                strides=(stride, stride),
                padding=self.padding,
                kernel_init=default_init(jnp.sqrt(2.0)),
                name=f"Conv_{i}",
            )
            x = nn.relu(conv(x))
        return pool_features(x, self.pooling, self.softmax_temperature)


class _ImpalaResidual(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(x)
        y = Conv(self.channels, (3, 3), padding="SAME", kernel_init=default_init(jnp.sqrt(2)))(y)
        y = nn.relu(y)
        y = Conv(self.channels, (3, 3), padding="SAME", kernel_init=default_init(jnp.sqrt(2)))(y)
        return x + y


class ImpalaEncoder(nn.Module):
    """IMPALA net (Espeholt et al. 2018): per stage Conv 3x3 -> MaxPool 3x3/2 -> 2 residual
    blocks; ReLU at the end."""

    stage_channels: Sequence[int] = (16, 32, 32)
    blocks_per_stage: int = 2
    pooling: str = "flatten"
    softmax_temperature: float = 1.0

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = pixels_to_float(pixels)
        for channels in self.stage_channels:
            x = Conv(channels, (3, 3), padding="SAME", kernel_init=default_init(jnp.sqrt(2)))(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for _ in range(self.blocks_per_stage):
                x = _ImpalaResidual(channels)(x)
        x = nn.relu(x)
        return pool_features(x, self.pooling, self.softmax_temperature)


class _ResNetBlock(nn.Module):
    channels: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = min(8, self.channels)
        y = Conv(self.channels, (3, 3), strides=self.stride, padding="SAME", use_bias=False)(x)
        y = nn.relu(nn.GroupNorm(num_groups=groups)(y))
        y = Conv(self.channels, (3, 3), padding="SAME", use_bias=False)(y)
        y = nn.GroupNorm(num_groups=groups, scale_init=nn.initializers.zeros)(y)
        if x.shape != y.shape:
            x = Conv(self.channels, (1, 1), strides=self.stride, use_bias=False)(x)
            x = nn.GroupNorm(num_groups=groups)(x)
        return nn.relu(x + y)


class ResNetEncoder(nn.Module):
    """Small ResNet: Conv 3x3/2 stem, then basic blocks (GroupNorm; the last norm of each block
    starts at zero so every block starts as the identity); stage i > 0 halves the resolution."""

    stage_channels: Sequence[int] = (32, 64, 64)
    blocks_per_stage: int = 1
    pooling: str = "avg"
    softmax_temperature: float = 1.0

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = pixels_to_float(pixels)
        x = Conv(self.stage_channels[0], (3, 3), strides=2, padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(8, self.stage_channels[0]))(x))
        for i, channels in enumerate(self.stage_channels):
            for j in range(self.blocks_per_stage):
                x = _ResNetBlock(channels, stride=2 if (i > 0 and j == 0) else 1)(x)
        return pool_features(x, self.pooling, self.softmax_temperature)


def make_encoder(
    name: str,
    *,
    features: Sequence[int] = (32, 32, 32, 32),
    strides: Sequence[int] = (2, 1, 1, 1),
    padding: str = "VALID",
    pooling: str = "flatten",
    softmax_temperature: float = 1.0,
) -> nn.Module:
    """Build an encoder by name ("small" | "impala" | "resnet"). `features` are the per-layer
    channels for "small" and the per-stage channels for "impala" / "resnet"; `strides` and
    `padding` apply to "small" only."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown encoder pooling {pooling!r}; choose one of {POOLINGS}")
    if not features or any(int(f) <= 0 for f in features):
        raise ValueError(f"encoder features must be positive channel counts, got {features}")
    if name == "small":
        if len(features) != len(strides):
            raise ValueError(
                f"cnn_features {tuple(features)} and cnn_strides {tuple(strides)} must have the "
                "same length"
            )
        if any(int(s) <= 0 for s in strides):
            raise ValueError(f"cnn_strides must be positive, got {tuple(strides)}")
        if padding not in ("VALID", "SAME"):
            raise ValueError(f"cnn_padding must be 'VALID' or 'SAME', got {padding!r}")
        return SmallEncoder(
            features=tuple(features),
            strides=tuple(strides),
            padding=padding,
            pooling=pooling,
            softmax_temperature=softmax_temperature,
        )
    if name == "impala":
        return ImpalaEncoder(
            stage_channels=tuple(features), pooling=pooling, softmax_temperature=softmax_temperature
        )
    if name == "resnet":
        return ResNetEncoder(
            stage_channels=tuple(features), pooling=pooling, softmax_temperature=softmax_temperature
        )
    raise ValueError(f"unknown encoder {name!r}; choose one of {ENCODERS}")
