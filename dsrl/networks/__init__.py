"""Reusable networks: pixel encoders, the PixelMultiplexer, MLPs, the tanh-Gaussian policy and the
vmapped Q ensemble."""

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
from dsrl.networks.mlp import MLP, concat_inputs, default_init
from dsrl.networks.multiplexer import PixelMultiplexer
from dsrl.networks.policies import TanhGaussian, TanhGaussianPolicy

__all__ = [
    "ENCODERS",
    "MLP",
    "ImpalaEncoder",
    "PixelMultiplexer",
    "ResNetEncoder",
    "SmallEncoder",
    "SpatialSoftmax",
    "StateActionEnsemble",
    "StateActionValue",
    "TanhGaussian",
    "TanhGaussianPolicy",
    "concat_inputs",
    "default_init",
    "make_encoder",
    "pixels_to_float",
    "reduce_ensemble",
]
