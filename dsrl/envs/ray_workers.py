"""Env workers as Ray actors: the `VectorEnv(mode="ray")` backend.

Each actor builds one env from its env_fn and executes whole chunks with the same `run_chunk`
as the subprocess worker, so a run gives the same ChunkResults (and transitions) on either
backend for the same seeds. The VectorEnv keeps every piece of bookkeeping (elapsed steps,
seeding, discarded chunks); this class only moves calls to actors. A dead actor (node lost,
process killed) or one that misses its deadline is killed and recreated here, not by Ray's
max_restarts, so a restart is counted and its episode discarded exactly as for a subprocess.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from dsrl.envs.base import EnvSpec

log = logging.getLogger(__name__)


def require_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(
            "env backend 'ray' needs Ray, which is not installed: `pip install ray==2.60.0` "
            "(pinned in requirements.txt), or use --env_backend subprocess."
        ) from None
    return ray


def ensure_ray(address: str = "", num_cpus: int | None = None) -> None:
    """Connects to Ray once: `address` "" starts a local Ray in this process; "auto" or
    host:port joins an existing cluster (started with `ray start --head`)."""
    ray = require_ray()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True)
    if address:
        kwargs["address"] = address
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise ConnectionError(
            f"Could not connect to a Ray cluster at --ray_address={address!r}: {err}. Start one "
            "with `ray start --head` on the head node and pass its address (host:6379, or "
            "'auto' on a node of the cluster), or leave --ray_address empty for a local Ray."
        ) from None


class _EnvActor:
    """Lives in a Ray worker process; one env."""

    def __init__(self, env_fn):
        os.environ.setdefault("MUJOCO_GL", "egl")
        self.env = env_fn()

    def spec(self) -> EnvSpec:
        return self.env.spec

    def pid(self) -> int:
        return os.getpid()

    def reset(self, seed):
        return self.env.reset(seed=seed)

    def step_chunk(self, payload):
        from dsrl.envs.vector import run_chunk

        return run_chunk(self.env, *payload)

    def close(self) -> None:
        self.env.close()


class RayWorkers:
    """The `_SubprocessWorkers` interface over Ray actors (see dsrl.envs.vector)."""

    def __init__(
        self,
        env_fns: Sequence,
        *,
        start_timeout_s: float,
        max_worker_failures: int,
        num_cpus_per_worker: float = 1.0,
        address: str = "",
    ):
        self.ray = require_ray()
        ensure_ray(address)
        self.env_fns = list(env_fns)
        self.start_timeout_s = start_timeout_s
        self.max_worker_failures = max_worker_failures
        self._actor_cls = self.ray.remote(num_cpus=num_cpus_per_worker, max_restarts=0)(_EnvActor)
        n = len(self.env_fns)
        self.names = [f"env {i}" for i in range(n)]
        self.actors: list[Any] = [None] * n
        self.pids: list[int | None] = [None] * n
        self.restarts = [0] * n
        self.failures_in_a_row = [0] * n
        try:
            for i in range(n):
                self._launch(i)
            self.specs = [self._await_start(i) for i in range(n)]
        except BaseException:
            self.close()
            raise
        self.names = [f"env {i} ({spec.name})" for i, spec in enumerate(self.specs)]

    def _launch(self, i: int) -> None:
        self.actors[i] = self._actor_cls.options(name=None).remote(self.env_fns[i])
        self.pids[i] = None

    def _await_start(self, i: int) -> EnvSpec:
        from dsrl.envs.vector import VectorEnvError

        ray = self.ray
        refs = [self.actors[i].spec.remote(), self.actors[i].pid.remote()]
        ready, _ = ray.wait(refs, num_returns=2, timeout=self.start_timeout_s)
        if len(ready) < 2:
            raise VectorEnvError(
                f"Worker {self.names[i]} did not finish building its env within "
                f"{self.start_timeout_s:g} s (start_timeout_s); raise it if the env is slow to "
                "load, else no node has a free CPU for it (num_cpus) or the simulator hangs."
            )
        try:
            spec, self.pids[i] = ray.get(refs)
        except ray.exceptions.RayActorError as err:
            raise VectorEnvError(
                f"Worker {self.names[i]} failed during construction:\n{err}"
            ) from None
        except ray.exceptions.RayTaskError as err:
            raise VectorEnvError(
                f"Worker {self.names[i]} failed during construction:\n{err}"
            ) from None
        return spec

    def _kill(self, i: int) -> None:
        try:
            self.ray.kill(self.actors[i], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _restart(self, i: int, reason: str) -> None:
        from dsrl.envs.vector import VectorEnvError, WorkerFailedError, _first_line

        while True:
            self._kill(i)
            self.failures_in_a_row[i] += 1
            if self.failures_in_a_row[i] >= self.max_worker_failures:
                raise WorkerFailedError(
                    f"Worker {self.names[i]} failed {self.failures_in_a_row[i]} times in a row "
                    f"(last: {reason}); stopping instead of restarting it again. Check the "
                    "simulator (the Ray worker logs), or raise the deadlines (reset_timeout_s, "
                    "step_timeout_s) if it is only slow."
                )
            self.restarts[i] += 1
            log.warning(
                "Ray worker %s %s; restarting it (restart %d, failure %d in a row). Its episode "
                "is discarded.",
                self.names[i],
                reason,
                self.restarts[i],
                self.failures_in_a_row[i],
            )
            self._launch(i)
            try:
                self._await_start(i)
                return
            except VectorEnvError as err:
                reason = f"could not be restarted ({_first_line(err)})"

    def call(
        self, indices: Sequence[int], command: str, payloads: Sequence[Any], timeout_s: float
    ) -> list[Any]:
        from dsrl.envs.vector import VectorEnvError, WorkerFailure

        ray = self.ray
        refs = {}
        for i, payload in zip(indices, payloads, strict=True):
            refs[i] = getattr(self.actors[i], command).remote(payload)
        deadline = time.monotonic() + timeout_s
        pending = list(refs.values())
        while pending and (left := deadline - time.monotonic()) > 0:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=left)
        failures: dict[int, str] = {}
        replies: dict[int, Any] = {}
        errors: dict[int, VectorEnvError] = {}
        pending_set = set(pending)
        for i, ref in refs.items():
            if ref in pending_set:
                failures[i] = f"did not answer {command!r} within {timeout_s:g} s"
                continue
            try:
                replies[i] = ray.get(ref)
            except ray.exceptions.RayActorError:
                failures[i] = f"died during {command!r} (its Ray actor is gone)"
            except ray.exceptions.RayTaskError as err:
                errors[i] = VectorEnvError(f"Worker {self.names[i]} failed during {command}:\n{err}")
        for i in sorted(failures):
            self._restart(i, failures[i])
        if errors:
            raise errors[min(errors)]
        return [WorkerFailure(failures[i]) if i in failures else replies[i] for i in indices]

    def episode_completed(self, i: int) -> None:
        self.failures_in_a_row[i] = 0

    def close(self) -> None:
        for i, actor in enumerate(self.actors):
            if actor is not None:
                self._kill(i)
        self.actors = []
