"""DSRL-SAC's config: the shared SAC learning choices (dsrl.agents.config.SACConfig) as they are;
DSRL-SAC adds no field of its own. Defaults are the reference's LIBERO values."""

from __future__ import annotations

import dataclasses

import ml_collections

from dsrl.agents.config import SACConfig


@dataclasses.dataclass(frozen=True)
class PixelSACConfig(SACConfig):
    """Validated, hashable DSRL-SAC config (a static field of the jitted learner)."""


def default_config() -> ml_collections.ConfigDict:
    """The reference's LIBERO learner settings as an overridable ConfigDict."""
    return PixelSACConfig.default_config()
