"""The base-policy contract: a frozen policy mapping (observation, noise) -> action chunk.

Every base policy (the demo's flow MLP, our JAX Pi0, a remote Pi0 behind a websocket server)
implements this. DSRL never differentiates through it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

Observation = dict[str, Any]


@runtime_checkable
class BasePolicy(Protocol):
    """A frozen, deterministic-given-noise policy.

    Attributes:
      noise_shape: (horizon, noise_dim) of the initial noise for ONE observation,
        e.g. (50, 32) for Pi0-LIBERO, (10, 32) for Pi0-DROID.
      action_dim: dimension of the executed robot action (7 for LIBERO, 14 for Aloha).
    """

    noise_shape: tuple[int, int]
    action_dim: int

    def sample_actions(self, observation: Observation, noise: np.ndarray) -> np.ndarray:
        """Batched: every leaf of `observation` has a leading batch axis B (strings: a list of B),
        `noise` is float32 (B, *noise_shape). Returns float32 (B, horizon, action_dim) robot
        actions (unnormalised, ready for env.step). Same inputs -> same outputs."""
        ...
