"""DSRL-SAC's config: the shared SAC learning choices (dsrl.agents.config.SACConfig) plus an
optional conservative critic term (off by default). Defaults are the reference's LIBERO values."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from dsrl.agents.config import SACConfig


@dataclasses.dataclass(frozen=True)
class PixelSACConfig(SACConfig):
    """Validated, hashable DSRL-SAC config (a static field of the jitted learner).

    cql_alpha > 0 adds CQL's conservative term to the critic loss (not in the DSRL reference):
    cql_alpha * mean over heads and batch of [logsumexp_j Q(s, z_j) - log(2M) - Q(s, z_data)],
    z_j being M latents drawn uniformly from the latent box and M from the current actor at s
    (`cql_samples` = M, no importance weights). It pushes down the critic where the actor or
    chance looks and the data does not, so the actor cannot climb the critic's errors away
    from the latents it has tried. The term is logged as `training/critic_penalty`."""

    cql_alpha: float = 0.0
    cql_samples: int = 10

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(float(self.cql_alpha)) and float(self.cql_alpha) >= 0):
            raise ValueError(
                f"PixelSACConfig: cql_alpha must be a finite number >= 0 (0: off), got "
                f"{self.cql_alpha}; set it with --config.agent.cql_alpha"
            )
        if int(self.cql_samples) < 1:
            raise ValueError(
                f"PixelSACConfig: cql_samples must be >= 1, got {self.cql_samples}; set it with "
                "--config.agent.cql_samples"
            )


def default_config() -> ml_collections.ConfigDict:
    """The reference's LIBERO learner settings as an overridable ConfigDict."""
    return PixelSACConfig.default_config()
