"""DSRL-NA: an action-space critic distilled into a noise-space critic (noise aliasing)."""

from dsrl.agents.noise_aliasing.config import NoiseAliasingConfig, default_config
from dsrl.agents.noise_aliasing.learner import NoiseAliasingLearner
from dsrl.base_policies.base import JaxBasePolicy, as_jax_base_policy

__all__ = [
    "JaxBasePolicy",
    "NoiseAliasingConfig",
    "NoiseAliasingLearner",
    "as_jax_base_policy",
    "default_config",
]
