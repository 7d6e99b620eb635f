"""The base policy as a Ray actor, behind the BasePolicy contract.

`RayBasePolicy(make_policy, num_gpus=1)` builds the policy *inside* one Ray actor (on a GPU node
when num_gpus > 0) from a picklable zero-argument factory such as
`functools.partial(Pi0Policy.from_checkpoint, "gs://...")`: the weights are loaded where they are
used and never travel, each call ships only observations and noise (one batched call per query
for all env workers: the rollout already stacks them). The loop sees an ordinary base policy.

`sample_actions_multi(observation, noise (B, K, H, D))` asks K noises for each observation in one
call: Pi0 computes each observation's prefix (images + prompt) once and reuses it for all K; a
policy without prefix reuse runs the K noises as one batch of B*K.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _tile(observation: dict[str, Any], k: int) -> dict[str, Any]:
    """Each observation repeated k times along the batch axis (B -> B*k, row-major)."""
    out = {}
    for key, value in observation.items():
        if isinstance(value, list | tuple):
            out[key] = [v for v in value for _ in range(k)]
        else:
            out[key] = np.repeat(np.asarray(value), k, axis=0)
    return out


def sample_actions_multi(policy: Any, observation: dict[str, Any], noise: np.ndarray) -> np.ndarray:
    """K noises per observation: noise (B, K, H, D) -> (B, K, H, A); prefix reuse when the
    policy has it (Pi0's `sample_actions_multi`), else one batch of B*K."""
    noise = np.asarray(noise, np.float32)
    if hasattr(policy, "sample_actions_multi"):
        return np.asarray(policy.sample_actions_multi(observation, noise))
    b, k = noise.shape[:2]
    flat = policy.sample_actions(_tile(observation, k), noise.reshape(b * k, *noise.shape[2:]))
    flat = np.asarray(flat)
    return flat.reshape(b, k, *flat.shape[1:])


class _PolicyActor:
    def __init__(self, make_policy: Callable[[], Any]):
        self.policy = make_policy()

    def describe(self) -> tuple[tuple[int, int], int]:
        return tuple(int(n) for n in self.policy.noise_shape), int(self.policy.action_dim)

    def sample_actions(self, observation, noise):
        return np.asarray(self.policy.sample_actions(observation, noise))

    def sample_actions_multi(self, observation, noise):
        return sample_actions_multi(self.policy, observation, noise)

    def calls(self) -> int:
        return getattr(self.policy, "calls", -1)


class RayBasePolicy:
    """A BasePolicy whose model lives in a Ray actor (see the module docstring).

    Args:
      make_policy: picklable zero-argument callable building the real base policy; called once,
        in the actor.
      num_gpus / num_cpus: the actor's resource request (num_gpus=1 places it on a GPU node).
      ray_address: "" a local Ray in this process (unless Ray is already initialised), "auto" or
        host:port an existing cluster.
      timeout_s: deadline of one call.
    """

    def __init__(
        self,
        make_policy: Callable[[], Any],
        *,
        num_gpus: float = 0.0,
        num_cpus: float = 1.0,
        ray_address: str = "",
        timeout_s: float = 600.0,
    ):
        from dsrl.envs.ray_workers import ensure_ray, require_ray

        self._ray = require_ray()
        ensure_ray(ray_address)
        actor_cls = self._ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=1)(
            _PolicyActor
        )
        self.timeout_s = timeout_s
        self._actor = actor_cls.remote(make_policy)
        self.noise_shape, self.action_dim = self._get(self._actor.describe.remote())

    def _get(self, ref):
        return self._ray.get(ref, timeout=self.timeout_s)

    def sample_actions(self, observation: dict[str, Any], noise: np.ndarray) -> np.ndarray:
        noise = np.asarray(noise, np.float32)
        return self._get(self._actor.sample_actions.remote(observation, noise))

    def sample_actions_multi(self, observation: dict[str, Any], noise: np.ndarray) -> np.ndarray:
        noise = np.asarray(noise, np.float32)
        return self._get(self._actor.sample_actions_multi.remote(observation, noise))

    def close(self) -> None:
        if self._actor is not None:
            try:
                self._ray.kill(self._actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._actor = None
