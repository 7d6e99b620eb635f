"""Learners: immutable flax.struct pytrees with functional, jitted updates."""

from dsrl.agents.pixel_sac import PixelSACConfig, PixelSACLearner

__all__ = ["PixelSACConfig", "PixelSACLearner"]
