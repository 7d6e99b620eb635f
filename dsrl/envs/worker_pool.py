"""Env workers in subprocesses, with deadlines and restarts (used by dsrl.envs.vector; the Ray
workers in dsrl.envs.ray_workers share `_RestartingWorkers`)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from dsrl.envs.base import Env, EnvSpec
from dsrl.envs.chunk import VectorEnvError, WorkerFailedError, _WorkerDied, run_chunk

EnvFn = Callable[[], Env]

log = logging.getLogger("dsrl.envs.vector")


# -- subprocess worker ---------------------------------------------------------------------------


def _worker(index: int, env_fn: EnvFn, conn) -> None:
    # A terminal's Ctrl-C reaches the whole process group: the launcher finishes the chunk in
    # flight and saves, so its workers must not die under it. They end when the launcher closes
    # them, or at EOF on the pipe if it is killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("MUJOCO_GL", "egl")
    env = None
    try:
        env = env_fn()
        conn.send(("ok", env.spec))
    except BaseException:  # noqa: BLE001 - reported to the parent verbatim
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    try:
        while True:
            try:
                command, payload = conn.recv()
            except (EOFError, KeyboardInterrupt):
                break
            if command == "close":
                conn.send(("ok", None))
                break
            try:
                if command == "reset":
                    result = env.reset(seed=payload)
                elif command == "step_chunk":
                    result = run_chunk(env, *payload)
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send(("ok", result))
            except Exception:  # noqa: BLE001 - the env stays usable; the parent decides
                conn.send(("error", traceback.format_exc()))
    finally:
        try:
            env.close()
        finally:
            conn.close()


@dataclasses.dataclass(frozen=True)
class WorkerFailure:
    """A worker that stalled past its deadline or died during a call; it has been restarted."""

    reason: str


class _RestartingWorkers:
    """The start-up and restart bookkeeping of the subprocess and the Ray workers. A subclass
    sets `env_fns`, `restarts`, `failures_in_a_row` and `max_worker_failures`, says what it is
    (`KIND`) and where a failed worker's output went (`LOGS`), implements _kill, _launch,
    _await_start and close, and calls `_start_all`."""

    KIND = "Worker"
    LOGS = "its stderr above"

    def _start_all(self) -> None:
        """Launches every worker and waits for its spec. A failure here is most likely the
        config (a missing asset, a bad kwarg): it is raised, after closing what started,
        instead of restarting."""
        try:
            for i in range(len(self.env_fns)):
                self._launch(i)
            self.specs = [self._await_start(i) for i in range(len(self.env_fns))]
        except BaseException:
            self.close()
            raise
        self.names = [f"env {i} ({spec.name})" for i, spec in enumerate(self.specs)]

    def _restart(self, i: int, reason: str, command: str = "step_chunk") -> None:
        """Replaces worker i after `reason` (during `command`); raises WorkerFailedError after
        too many in a row."""
        # Only a chunk loses an episode (the rollout discards it and counts it in
        # env/discarded_episodes, or an evaluation re-runs it); a failed reset is retried.
        outcome = (
            "Its episode is discarded."
            if command == "step_chunk"
            else f"The {command!r} is retried on the new worker; no episode is lost."
        )
        while True:
            self._kill(i)
            self.failures_in_a_row[i] += 1
            if self.failures_in_a_row[i] >= self.max_worker_failures:
                raise WorkerFailedError(
                    f"{self.KIND} {self.names[i]} failed {self.failures_in_a_row[i]} times in a "
                    f"row (last: {reason}); stopping instead of restarting it again. Check the "
                    f"simulator ({self.LOGS}), or raise the deadlines (reset_timeout_s, "
                    "step_timeout_s) if it is only slow."
                )
            self.restarts[i] += 1
            log.warning(
                "%s %s %s; restarting it (restart %d, failure %d in a row). %s",
                self.KIND,
                self.names[i],
                reason,
                self.restarts[i],
                self.failures_in_a_row[i],
                outcome,
            )
            self._launch(i)
            try:
                self._await_start(i)
                return
            except VectorEnvError as err:
                reason = f"could not be restarted ({_first_line(err)})"

    def episode_completed(self, i: int) -> None:
        """A whole episode ran without a failure: worker i is healthy again."""
        self.failures_in_a_row[i] = 0


class _SubprocessWorkers(_RestartingWorkers):
    """One process per env. Every wait has a deadline; a worker that misses it or dies is
    killed and restarted from the same env_fn (WorkerFailure in its result slot), and one that
    fails `max_worker_failures` times in a row raises WorkerFailedError."""

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        start_method: str,
        *,
        start_timeout_s: float,
        max_worker_failures: int,
    ):
        self._ctx = mp.get_context(start_method)
        self.env_fns = list(env_fns)
        self.start_timeout_s = start_timeout_s
        self.max_worker_failures = max_worker_failures
        n = len(self.env_fns)
        self.names = [f"env {i}" for i in range(n)]
        self.conns: list[Any] = [None] * n
        self.procs: list[Any] = [None] * n
        self.restarts = [0] * n
        self.failures_in_a_row = [0] * n
        self._start_all()

    def _launch(self, i: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker, args=(i, self.env_fns[i], child), daemon=True, name=f"dsrl-env-{i}"
        )
        proc.start()
        child.close()  # the worker holds the only other end: its death reads as EOF here
        self.conns[i], self.procs[i] = parent, proc

    def _await_start(self, i: int) -> EnvSpec:
        if not self.conns[i].poll(self.start_timeout_s):
            raise VectorEnvError(
                f"Worker {self.names[i]} did not finish building its env within "
                f"{self.start_timeout_s:g} s (start_timeout_s); raise it if the env is slow to "
                "load, else the simulator hangs on start."
            )
        return self._receive(i, "construction")

    def _receive(self, i: int, what: str):
        try:
            status, payload = self.conns[i].recv()
        except (EOFError, ConnectionResetError, BrokenPipeError, OSError):
            self.procs[i].join(timeout=5)
            raise _WorkerDied(
                f"Worker {self.names[i]} died during {what} (exit code {self.procs[i].exitcode}); "
                "check its stderr (out of memory? a crash in the simulator?)."
            ) from None
        if status == "error":
            raise VectorEnvError(f"Worker {self.names[i]} failed during {what}:\n{payload}")
        return payload

    def _kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc.is_alive():
            proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
        proc.join(timeout=10)
        self.conns[i].close()

    def call(
        self, indices: Sequence[int], command: str, payloads: Sequence[Any], timeout_s: float
    ) -> list[Any]:
        """Sends `command` to the workers `indices` and waits for all of them until one shared
        deadline (they run in parallel). A worker that misses it or dies is restarted and gets
        a WorkerFailure; an exception inside an env is raised as VectorEnvError."""
        failures: dict[int, str] = {}
        for i, payload in zip(indices, payloads, strict=True):
            try:
                self.conns[i].send((command, payload))
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.procs[i].join(timeout=1)
                failures[i] = f"was gone before {command!r} (exit code {self.procs[i].exitcode})"
        deadline = time.monotonic() + timeout_s
        waiting = {self.conns[i]: i for i in indices if i not in failures}
        replies: dict[int, Any] = {}
        errors: dict[int, VectorEnvError] = {}
        while waiting:
            ready = mp_connection.wait(list(waiting), timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                break
            for conn in ready:
                i = waiting.pop(conn)
                # `ready` means the reply has begun; a worker stopped half-way through sending a
                # large one (video frames) would block recv forever. Past the deadline the
                # watchdog kills it, which ends recv with EOF.
                watchdog = threading.Timer(
                    max(deadline - time.monotonic(), 0) + 1.0, self.procs[i].kill
                )
                watchdog.start()
                try:
                    replies[i] = self._receive(i, command)
                except _WorkerDied:
                    stalled = watchdog.finished.is_set()
                    how = "stalled while sending its reply to" if stalled else "died during"
                    failures[i] = f"{how} {command!r} (exit code {self.procs[i].exitcode})"
                except VectorEnvError as err:
                    errors[i] = err  # a Python exception in the env: a bug to report, not hide
                finally:
                    watchdog.cancel()
        for i in waiting.values():
            state = "alive but not answering" if self.procs[i].is_alive() else "dead"
            failures[i] = f"did not answer {command!r} within {timeout_s:g} s ({state})"
        for i in sorted(failures):
            self._restart(i, failures[i], command)
        if errors:
            raise errors[min(errors)]
        return [WorkerFailure(failures[i]) if i in failures else replies[i] for i in indices]

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc is not None and proc.is_alive():
                try:
                    conn.send(("close", None))
                    if conn.poll(5):
                        conn.recv()
                    else:
                        proc.kill()  # stalled: it would never answer, nor exit by itself
                except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
                    pass
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc is None:
                continue
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            conn.close()
        self.conns, self.procs = [], []


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
