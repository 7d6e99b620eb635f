"""DSRL-SAC: SAC in the base policy's latent-noise space."""

from dsrl.agents.pixel_sac.config import PixelSACConfig, default_config
from dsrl.agents.pixel_sac.learner import PixelSACLearner

__all__ = ["PixelSACConfig", "PixelSACLearner", "default_config"]
