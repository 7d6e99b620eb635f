"""Reusable networks: pixel encoders, the PixelMultiplexer (StateInput for state-only agents),
MLPs, the tanh-Gaussian policy and the vmapped Q ensemble."""

from dsrl.networks.encoders import (
    ENCODERS,
    ImpalaEncoder,
    ResNetEncoder,
    SmallEncoder,
    SpatialSoftmax,
    make_encoder,
    pixels_to_float,
)
from dsrl.networks.ensemble import StateActionEnsemble, StateActionValue, reduce_ensemble
from dsrl.networks.mlp import ACTIVATIONS, MLP, activation, concat_inputs, default_init
from dsrl.networks.multiplexer import PixelMultiplexer, StateInput
from dsrl.networks.policies import TanhGaussian, TanhGaussianPolicy

__all__ = [
    "ACTIVATIONS",
    "ENCODERS",
    "MLP",
    "ImpalaEncoder",
    "PixelMultiplexer",
    "ResNetEncoder",
    "SmallEncoder",
    "SpatialSoftmax",
    "StateInput",
    "StateActionEnsemble",
    "StateActionValue",
    "TanhGaussian",
    "TanhGaussianPolicy",
    "activation",
    "concat_inputs",
    "default_init",
    "make_encoder",
    "pixels_to_float",
    "reduce_ensemble",
]
