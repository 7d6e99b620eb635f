"""The base-policy contract: a frozen policy mapping (observation, noise) -> action chunk.

Every base policy (the demo's flow MLP, our JAX Pi0, a remote Pi0 behind a websocket server)
implements this. DSRL never differentiates through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
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


# (params, base-policy observations {key: (B, ...)}, noise (B, H, D)) -> chunks (B, H, A).
JaxSampler = Callable[[Any, Mapping[str, Any], Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class JaxBasePolicy:
    """A frozen base policy as a pure JAX function, callable inside a jitted update (DSRL-NA).

    `observation_spec` names the base policy's own observation keys ({key: (shape, dtype)} for
    ONE observation); a learner that runs the policy on stored data asks the loop to store them
    next to the agent's "pixels" / "state". `params` travel to the jitted update as an argument
    (not a compile-time constant) and are never checkpointed with the agent. Compared by
    identity: one JaxBasePolicy object means one compilation.
    """

    apply_fn: JaxSampler
    params: Any
    observation_spec: Mapping[str, tuple[tuple[int, ...], Any]]
    noise_shape: tuple[int, int]
    action_dim: int


def as_jax_base_policy(base_policy: Any) -> JaxBasePolicy:
    """A JaxBasePolicy from a JaxBasePolicy or a policy with a pure-JAX sampler.

    Supported: `dsrl.base_policies.flow_mlp.FlowMLPPolicy` (observation key `config.state_key`).
    A Pi0 policy would need its images and tokenized prompt stored in the buffer; see
    docs/dsrl_na.md."""
    if isinstance(base_policy, JaxBasePolicy):
        return base_policy
    cfg = getattr(base_policy, "config", None)
    if hasattr(base_policy, "sample_actions_jax") and hasattr(cfg, "state_key"):
        return JaxBasePolicy(
            apply_fn=base_policy.sample_actions_jax,
            params=base_policy.params,
            observation_spec={cfg.state_key: ((int(cfg.state_dim),), np.float32)},
            noise_shape=tuple(int(n) for n in base_policy.noise_shape),
            action_dim=int(base_policy.action_dim),
        )
    raise ValueError(
        f"DSRL-NA runs the base policy inside its jitted update and needs a pure-JAX sampler; "
        f"{type(base_policy).__name__} has none. Pass a JaxBasePolicy(apply_fn, params, "
        "observation_spec, noise_shape, action_dim) or a FlowMLPPolicy, or use "
        "--algorithm pixel_sac (which never calls the base policy during updates)."
    )
