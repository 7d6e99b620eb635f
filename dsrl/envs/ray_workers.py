"""Env workers as Ray actors: the `VectorEnv(mode="ray")` backend.

Each actor builds one env from its env_fn and executes whole chunks with the same `run_chunk`
as the subprocess worker, so a run gives the same ChunkResults (and transitions) on either
backend for the same seeds. The VectorEnv keeps every piece of bookkeeping (elapsed steps,
seeding, discarded chunks); this class only moves calls to actors. A dead actor (node lost,
process killed) or one that misses its deadline is killed and recreated here, not by Ray's
max_restarts, so a restart is counted and its episode discarded exactly as for a subprocess.

Ray itself is joined once per process by `ensure_ray`: a local Ray started in this process
(address "") or an existing cluster (`ray start --head` on the head node, then "auto" on a node
of the cluster or its host:port from anywhere).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsrl.envs.base import EnvSpec
from dsrl.envs.worker_pool import _RestartingWorkers

log = logging.getLogger(__name__)

_DSRL_ROOT = str(Path(__file__).resolve().parents[2])  # the checkout whose dsrl runs here


def require_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(
            "Ray is not installed, but --env_backend ray / base_policy.ray need it: "
            "`pip install ray==2.60.0` (pinned in requirements.txt), or use --env_backend "
            "subprocess without base_policy.ray."
        ) from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A host:port that accepts no TCP connection fails here in seconds, not in Ray's minute of
    retries."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise ConnectionError(
            f"no Ray cluster answers at --ray_address={address} ({err}). Start one with "
            "`ray start --head --port=6379` on the head node and pass its host:6379, or pass "
            "'auto' on a node of the cluster, or leave --ray_address empty for a local Ray."
        ) from None


def _use_auth_token_if_any() -> None:
    """`ray start` turns token authentication on by default and keeps the token in
    ~/.ray/auth_token, but a client connecting from Python sends it only in token mode, else the
    cluster refuses it with a puzzling error after 20 s of retries. Ray's own switch (what `ray
    start` runs) enables token mode when a token is available (the file, RAY_AUTH_TOKEN or
    RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE is unset; a token also works with a cluster that has
    authentication off."""
    try:  # Ray 2.60 (pinned); it also refreshes Ray's config cached at import
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def ensure_ray(address: str = "", num_cpus: float | None = None) -> bool:
    """Connects this process to Ray unless it already is; True when it started a local Ray
    (then the caller owns it and shuts it down with `shutdown_local_ray()`).

    address: "" starts a local Ray with `num_cpus` logical CPUs (default this machine's cores;
    a caller that knows it will place N one-CPU actors passes at least N, so they never wait
    for each other), without dashboard and with warnings-only logs. "auto" or host:port joins
    an existing cluster, whose nodes must have dsrl installed."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        if address != "auto":
            _check_reachable(address)
        _use_auth_token_if_any()
        kwargs["address"] = address
    else:
        # The local workers import the same dsrl as this process, installed or not, and a closed
        # network is not asked for usage statistics.
        paths = [_DSRL_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        cores = os.cpu_count() or 1
        global _LOCAL_SESSION
        from dsrl.utils.ray_session import RaySessionGuard

        # Its own temp dir, loopback only, and a watchdog that stops it if this process dies
        # without `shutdown_local_ray` (SIGKILL, the OOM killer).
        _LOCAL_SESSION = RaySessionGuard()
        kwargs |= {
            # "local": a new Ray even when this machine runs a cluster (`ray start`) or left its
            # address behind in /tmp/ray, which ray.init() would otherwise join.
            "address": "local",
            "num_cpus": max(cores, math.ceil(num_cpus or 0)),
            **_LOCAL_SESSION.init_kwargs(),
        }
    try:
        with warnings.catch_warnings():
            # JAX warns on every fork; Ray's daemons are fork+exec'd, which is safe.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as err:
        _close_local_session()
        reason = str(err).strip().rstrip(".")
        if not address:
            raise ConnectionError(
                f"could not start a local Ray: {reason}. Check the Ray logs under /tmp/ray, or "
                "use --env_backend subprocess without base_policy.ray."
            ) from None
        raise ConnectionError(
            f"could not connect to Ray at --ray_address={address!r}: {reason}. Start a cluster "
            "with `ray start --head` on the head node and pass its address (host:6379, or "
            "'auto' on a node of the cluster), or leave --ray_address empty for a local Ray. A "
            "cluster with token authentication needs its token here too: copy the head's "
            "~/.ray/auth_token, or set RAY_AUTH_TOKEN."
        ) from None
    return not address


_LOCAL_SESSION = None  # the RaySessionGuard of the local Ray `ensure_ray` started, if any


def _close_local_session() -> None:
    global _LOCAL_SESSION
    if _LOCAL_SESSION is not None:
        session, _LOCAL_SESSION = _LOCAL_SESSION, None
        session.close()


def shutdown_local_ray() -> None:
    """Stops the local Ray that `ensure_ray` started: its daemons, then its temp directory."""
    ray = require_ray()
    try:
        ray.shutdown()
    finally:
        _close_local_session()


class _EnvActor:
    """Lives in a Ray worker process; one env."""

    def __init__(self, env_fn):
        os.environ.setdefault("MUJOCO_GL", "egl")
        self.env = env_fn()

    def start(self) -> tuple[EnvSpec, int]:
        return self.env.spec, os.getpid()

    def reset(self, seed):
        return self.env.reset(seed=seed)

    def step_chunk(self, payload):
        from dsrl.envs.chunk import run_chunk

        return run_chunk(self.env, *payload)


class RayWorkers(_RestartingWorkers):
    """The `_SubprocessWorkers` interface over Ray actors (see dsrl.envs.vector).

    num_cpus_per_worker: the CPUs each actor asks of the cluster (Ray places it on a node with
    that many free); 1 is one simulator per core, as the subprocess backend runs them."""

    KIND = "Ray worker"
    LOGS = "the Ray worker logs"

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
        n = len(env_fns)
        self._owns_ray = ensure_ray(address, num_cpus=n * num_cpus_per_worker)
        self.env_fns = list(env_fns)
        self.start_timeout_s = start_timeout_s
        self.max_worker_failures = max_worker_failures
        self._check_capacity(n * num_cpus_per_worker)
        self._actor_cls = self.ray.remote(num_cpus=num_cpus_per_worker, max_restarts=0)(_EnvActor)
        self.names = [f"env {i}" for i in range(n)]
        self.actors: list[Any] = [None] * n
        self.pids: list[int | None] = [None] * n
        self.restarts = [0] * n
        self.failures_in_a_row = [0] * n
        self._start_all()

    def _check_capacity(self, cpus: float) -> None:
        total = self.ray.cluster_resources().get("CPU", 0.0)
        if cpus > total:
            log.warning(
                "The env workers ask for %g CPUs but the Ray cluster has %g: the rest wait for "
                "free CPUs (an autoscaler may add nodes) until start_timeout_s. Lower "
                "env.ray_num_cpus or add nodes.",
                cpus,
                total,
            )

    def _launch(self, i: int) -> None:
        self.actors[i] = self._actor_cls.remote(self.env_fns[i])
        self.pids[i] = None

    def _await_start(self, i: int) -> EnvSpec:
        from dsrl.envs.chunk import VectorEnvError

        ref = self.actors[i].start.remote()
        ready, _ = self.ray.wait([ref], timeout=self.start_timeout_s)
        if not ready:
            raise VectorEnvError(
                f"Worker {self.names[i]} did not finish building its env within "
                f"{self.start_timeout_s:g} s (start_timeout_s): no node had a free CPU for it "
                "(env.ray_num_cpus; see `ray status`), the env is slow to load (raise "
                "start_timeout_s), or the simulator hangs."
            )
        try:
            spec, self.pids[i] = self.ray.get(ref)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.RayTaskError) as err:
            raise VectorEnvError(
                f"Worker {self.names[i]} failed during construction:\n{err}"
            ) from None
        return spec

    def _kill(self, i: int) -> None:
        try:
            self.ray.kill(self.actors[i], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def call(
        self, indices: Sequence[int], command: str, payloads: Sequence[Any], timeout_s: float
    ) -> list[Any]:
        """As `_SubprocessWorkers.call`: all workers run in parallel until one shared deadline;
        one that misses it or whose actor died is restarted and gets a WorkerFailure; an
        exception inside an env is raised as VectorEnvError."""
        from dsrl.envs.chunk import VectorEnvError
        from dsrl.envs.worker_pool import WorkerFailure

        ray = self.ray
        refs = {
            i: getattr(self.actors[i], command).remote(payload)
            for i, payload in zip(indices, payloads, strict=True)
        }
        deadline = time.monotonic() + timeout_s
        try:  # the common case in one round trip: every actor answers in time
            return ray.get(list(refs.values()), timeout=timeout_s)
        except (ray.exceptions.RayError, TimeoutError):
            pass  # sorted out below, one actor at a time, once all answered or time is up
        left = max(deadline - time.monotonic(), 0.0)
        _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=left)
        late = set(pending)
        failures: dict[int, str] = {}
        replies: dict[int, Any] = {}
        errors: dict[int, VectorEnvError] = {}
        for i, ref in refs.items():
            if ref in late:
                failures[i] = f"did not answer {command!r} within {timeout_s:g} s"
                continue
            try:
                replies[i] = ray.get(ref)
            except ray.exceptions.RayActorError:
                failures[i] = f"died during {command!r} (its Ray actor is gone)"
            except ray.exceptions.RayTaskError as err:
                errors[i] = VectorEnvError(
                    f"Worker {self.names[i]} failed during {command}:\n{err}"
                )
        for i in sorted(failures):
            self._restart(i, failures[i], command)
        if errors:
            raise errors[min(errors)]
        return [WorkerFailure(failures[i]) if i in failures else replies[i] for i in indices]

    def close(self) -> None:
        for i, actor in enumerate(self.actors):
            if actor is not None:
                self._kill(i)
        self.actors = []
        if self._owns_ray:
            self._owns_ray = False
            shutdown_local_ray()
