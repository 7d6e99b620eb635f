"""Learners: immutable flax.struct pytrees with functional, jitted updates.

dsrl.agents.sac holds the SAC steps both algorithms are made of, dsrl.agents.execution how a
block of steps runs on the backend, dsrl.agents.common the rest they share (the `Learner` base).
"""

from dsrl.agents.config import SACConfig
from dsrl.agents.execution import ExecutionConfig
from dsrl.agents.pixel_sac import PixelSACConfig, PixelSACLearner
from dsrl.agents.spec import TransitionSpec

__all__ = ["ExecutionConfig", "PixelSACConfig", "PixelSACLearner", "SACConfig", "TransitionSpec"]
