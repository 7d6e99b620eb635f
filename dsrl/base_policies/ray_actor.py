"""The base policy as a Ray actor, behind the BasePolicy contract.

`RayBasePolicy(make_policy, num_gpus=1)` builds the policy *inside* one Ray actor (on a GPU node
when num_gpus > 0) from a picklable zero-argument factory such as
`functools.partial(Pi0Policy.from_checkpoint, "gs://...")`: the weights are loaded where they are
used and never travel; each call ships only observations and noise. The rollout already stacks
the observations of all env workers, so one query is one actor call. The loop sees an ordinary
base policy.

`sample_actions_multi(observation, noise (B, K, H, D))` asks K noises for each observation in one
call: Pi0 computes each observation's prefix (images + prompt) once and reuses it for all K; a
policy without prefix reuse runs the K noises as one batch of B*K.

The actor asks for no CPU by default: it mostly waits for the accelerator (or, on a CPU box,
works while the env workers wait for it), and a CPU request would compete with the env workers
for a small machine's cores until one of them never starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# A dead policy actor is rebuilt by Ray and the interrupted call re-run (the policy is
# deterministic given its inputs, so a repeated call is harmless).
_MAX_RESTARTS = 3


def _tile(observation: dict[str, Any], k: int) -> dict[str, Any]:
    """Each observation repeated k times along the batch axis (B -> B*k, row-major)."""
    out = {}
    for key, value in observation.items():
        if isinstance(value, dict):
            out[key] = _tile(value, k)
        elif isinstance(value, list | tuple):
            out[key] = [v for v in value for _ in range(k)]
        else:
            out[key] = np.repeat(np.asarray(value), k, axis=0)
    return out


def sample_actions_multi(policy: Any, observation: dict[str, Any], noise: np.ndarray) -> np.ndarray:
    """K noises per observation: noise (B, K, H, D) -> (B, K, H, A); prefix reuse when the
    policy has it (Pi0's `sample_actions_multi`), else one batch of B*K."""
    noise = np.asarray(noise, np.float32)
    if noise.ndim != 4:
        raise ValueError(f"noise must be (B, K, H, D), got shape {noise.shape}.")
    if hasattr(policy, "sample_actions_multi"):
        return np.asarray(policy.sample_actions_multi(observation, noise))
    b, k = noise.shape[:2]
    flat = policy.sample_actions(_tile(observation, k), noise.reshape(b * k, *noise.shape[2:]))
    flat = np.asarray(flat)
    return flat.reshape(b, k, *flat.shape[1:])


class _PolicyActor:
    """Lives in a Ray worker process; builds and holds the policy."""

    def __init__(self, make_policy: Callable[[], Any]):
        import os

        self.pid = os.getpid()
        self.policy = make_policy()
        self.calls = 0

    def describe(self) -> dict[str, Any]:
        return {
            "noise_shape": tuple(int(n) for n in self.policy.noise_shape),
            "action_dim": int(self.policy.action_dim),
            "pid": self.pid,
        }

    def sample_actions(self, observation, noise):
        self.calls += 1
        return np.asarray(self.policy.sample_actions(observation, noise))

    def sample_actions_multi(self, observation, noise):
        self.calls += 1
        return sample_actions_multi(self.policy, observation, noise)

    def num_calls(self) -> int:
        return self.calls


class RayBasePolicy:
    """A BasePolicy whose model lives in a Ray actor (see the module docstring).

    Args:
      make_policy: picklable zero-argument callable building the real base policy; called once,
        in the actor (again only if Ray has to rebuild a dead actor).
      num_gpus / num_cpus: the actor's resource request (num_gpus=1 places it on a GPU node).
      ray_address: "" a local Ray in this process (unless Ray is already initialised), "auto" or
        host:port an existing cluster.
      local_ray_cpus: CPUs a local Ray started here must offer at least (the env workers' request).
      timeout_s: deadline of one call, the first (which builds the policy) included.
    """

    def __init__(
        self,
        make_policy: Callable[[], Any],
        *,
        num_gpus: float = 0.0,
        num_cpus: float = 0.0,
        ray_address: str = "",
        local_ray_cpus: float = 0.0,
        timeout_s: float = 600.0,
    ):
        from dsrl.envs.ray_workers import ensure_ray, require_ray

        self._ray = require_ray()
        self._owns_ray = ensure_ray(ray_address, num_cpus=local_ray_cpus + num_cpus)
        self.timeout_s = timeout_s
        actor_cls = self._ray.remote(
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            max_restarts=_MAX_RESTARTS,
            max_task_retries=_MAX_RESTARTS,
        )(_PolicyActor)
        self._actor = actor_cls.remote(make_policy)
        try:
            info = self._get(self._actor.describe.remote(), "building the base policy")
        except BaseException:
            self.close()
            raise
        self.noise_shape: tuple[int, int] = info["noise_shape"]
        self.action_dim: int = info["action_dim"]
        self.actor_pid: int = info["pid"]

    def _get(self, ref, what: str):
        ray = self._ray
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"the Ray base-policy actor did not finish {what} within {self.timeout_s:g} s: "
                "no node has the resources it asks for (base_policy.ray_num_gpus; see `ray "
                "status`) or the model is slow to load."
            ) from None
        except ray.exceptions.RayActorError as err:
            raise RuntimeError(
                f"the Ray base-policy actor died {_MAX_RESTARTS + 1} times while {what}: {err}"
            ) from None

    def sample_actions(self, observation: dict[str, Any], noise: np.ndarray) -> np.ndarray:
        """One actor call for the whole batch: noise (B, H, D) -> float32 (B, H, action_dim)."""
        ref = self._actor.sample_actions.remote(observation, np.asarray(noise, np.float32))
        return self._get(ref, "sampling actions")

    def sample_actions_multi(self, observation: dict[str, Any], noise: np.ndarray) -> np.ndarray:
        """K noises per observation in one actor call: (B, K, H, D) -> (B, K, H, action_dim)."""
        ref = self._actor.sample_actions_multi.remote(observation, np.asarray(noise, np.float32))
        return self._get(ref, "sampling actions")

    def num_calls(self) -> int:
        """Sampling calls the actor has served (the one-call-per-query contract, observable)."""
        return self._get(self._actor.num_calls.remote(), "counting calls")

    def close(self) -> None:
        if self._actor is not None:
            try:
                self._ray.kill(self._actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._actor = None
        if self._owns_ray:
            from dsrl.envs.ray_workers import shutdown_local_ray

            self._owns_ray = False
            shutdown_local_ray()
