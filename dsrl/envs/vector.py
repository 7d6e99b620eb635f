"""Run N envs side by side, one action chunk per worker per call.

DSRL queries the base policy once per chunk, so a worker receives a whole (T, A) chunk, executes
it locally and renders only on the step whose observation will be read (the last executed step):
one IPC round trip and one render per chunk instead of T. Two modes:

  * "subprocess" (default): each env lives in its own process (multiprocessing "spawn", safe
    with JAX/threads in the parent). Required for LIBERO and Aloha: their renderers must never
    share a process, and rendering is the bottleneck, so workers run in parallel.
  * "ray": each env lives in a Ray actor (dsrl.envs.ray_workers), on this machine or across a
    cluster; same chunks, same seeding, same restart and discard rules as "subprocess".
  * "inline": the envs live in this process and run one after the other; for cheap envs such
    as the numpy demo, where IPC would cost more than the env.

A Python exception inside an env is re-raised here as VectorEnvError naming the env, the worker
and its traceback (a bug: hiding it would hide it everywhere). A worker that stalls or dies (a
simulator deadlock, a segfault, the OOM killer) must not hang or end a day-long run: every wait on
a worker has a deadline (`start_timeout_s`, `reset_timeout_s`, `step_timeout_s`), and a worker
that misses it or dies is killed and restarted from the same env_fn. A failed reset is retried
on the new worker; a failed chunk comes back as a ChunkResult with `worker_restarted=True` (the
episode is discarded by the rollout). `worker_restarts` counts the restarts; a worker that fails
`max_worker_failures` times in a row without completing an episode raises WorkerFailedError.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation
from dsrl.envs.smoothing import ChunkSmoothing, SmoothedEnv, make_smoothed_env

EnvFn = Callable[[], Env]

log = logging.getLogger(__name__)


class VectorEnvError(RuntimeError):
    """An env worker failed; the message names the env and carries the worker's traceback."""


class WorkerFailedError(VectorEnvError):
    """One env worker stalled or died `max_worker_failures` times in a row."""


class _WorkerDied(VectorEnvError):
    """The worker's end of the pipe closed: the process is gone."""


@dataclasses.dataclass
class ChunkResult:
    """What one env did with one action chunk.

    obs: the observation after the last executed step (rendered).
    rewards: float32 (steps_executed,), the env reward of each executed step.
    success: the episode succeeded during the chunk.
    terminated / truncated: the episode ended (success / time limit) on the last executed step.
    steps_executed: <= T; the chunk stops early when the episode ends.
    frames: uint8 (steps_executed, H, W, 3) video frames (every step rendered) when requested.
    worker_restarted: the env's worker stalled or died during this chunk and was restarted: the
      episode is lost. Discard it (its earlier transitions included); `obs` is the last
      observation before the failure, nothing was executed, truncated is True, and the env must
      be reset before it is stepped again.
    """

    obs: Observation
    rewards: np.ndarray
    success: bool
    terminated: bool
    truncated: bool
    steps_executed: int
    frames: np.ndarray | None = None
    worker_restarted: bool = False
    # The actions executed (steps_executed, A): the chunk as smoothed by a SmoothedEnv.
    actions: np.ndarray | None = None


def video_frame(obs: Observation, video_key: str = "pixels") -> np.ndarray:
    """The RGB image recorded in videos: obs[video_key] (EnvSpec.video_key), else the agent
    pixels. Reset frames and chunk frames must both come through here so a video stacks."""
    frame = np.asarray(obs[video_key] if video_key in obs else obs["pixels"])
    return frame[..., :3]


def _video_frame(env: Env, obs: Observation) -> np.ndarray:
    return video_frame(obs, getattr(env.spec, "video_key", "pixels"))


def run_chunk(
    env: Env,
    actions: np.ndarray,
    record_frames: bool = False,
    steps_left: int | None = None,
    tail: np.ndarray | None = None,
) -> ChunkResult:
    """Executes up to T = len(actions) steps of `env`, rendering only the step that is read.

    steps_left: steps before the env's time limit (None: unknown). The rendered step is the last
    one of the chunk or, when the time limit falls inside the chunk, the step that hits it. An
    episode can also end early on success; that step was stepped without rendering, so its
    images are refreshed with `env.render_current()` when the env has one (LIBERO, Aloha) and
    are otherwise stale (harmless for training: a success observation is terminal, mask 0).
    With record_frames every step is rendered (full render cost) and its video frame kept.
    A SmoothedEnv's chunk is smoothed first (dsrl.envs.smoothing); `tail` is the base policy's
    plan beyond this chunk (the unexecuted rest), which the next chunk blends from.
    """
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[0] == 0:
        raise ValueError(f"Expected a non-empty action chunk shaped (T, A), got {actions.shape}.")
    raw = actions
    if isinstance(env, SmoothedEnv):
        actions = env.smoother.smooth(raw)
    horizon = actions.shape[0]
    render_at = horizon - 1 if steps_left is None else max(0, min(horizon, steps_left) - 1)
    rewards, frames = [], []
    obs, terminated, truncated, success = None, False, False, False
    for t in range(horizon):
        render = record_frames or t == render_at
        obs, reward, terminated, truncated, info = env.step(actions[t], render=render)
        rewards.append(reward)
        success = success or bool(info.get("success", False))
        if record_frames:
            frames.append(_video_frame(env, obs))
        if terminated or truncated:
            if not render and hasattr(env, "render_current"):
                obs = env.render_current()
            break
    if isinstance(env, SmoothedEnv):
        env.smoother.executed(raw, actions, len(rewards), tail)
    return ChunkResult(
        obs=obs,
        rewards=np.asarray(rewards, dtype=np.float32),
        success=success,
        terminated=bool(terminated),
        truncated=bool(truncated),
        steps_executed=len(rewards),
        frames=np.stack(frames) if record_frames else None,
        actions=np.asarray(actions[: len(rewards)]),
    )


# -- subprocess worker ---------------------------------------------------------------------------


def _worker(index: int, env_fn: EnvFn, conn) -> None:
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

    def _restart(self, i: int, reason: str) -> None:
        """Replaces worker i after `reason`; raises WorkerFailedError after too many in a row."""
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
                "%s %s %s; restarting it (restart %d, failure %d in a row). Its episode is "
                "discarded.",
                self.KIND,
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
            self._restart(i, failures[i])
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


def _close_at_exit(ref: weakref.ReferenceType) -> None:
    venv = ref()
    if venv is not None:
        venv.close()


class VectorEnv:
    """N envs stepped one action chunk at a time (see the module docstring).

    Args:
      env_fns: picklable zero-argument callables building the envs (e.g.
        `functools.partial(make_env, "libero", task_id=3)`), one per worker.
      mode: "subprocess" or "inline".
      start_method: multiprocessing start method for "subprocess" ("spawn" or "forkserver").
      start_timeout_s / reset_timeout_s / step_timeout_s: deadlines for building an env, a
        reset, and one chunk ("subprocess" only). Generous by default: LIBERO takes ~10-60 s to
        build and a 50-step chunk with rendering takes seconds, on a loaded machine much more.
      max_worker_failures: a worker that stalls or dies this many times in a row (without a
        completed episode in between) raises WorkerFailedError instead of another restart.
      smoothing: blend chunk boundaries and cap per-step action changes (ChunkSmoothing); each
        env is wrapped in a SmoothedEnv where it lives (worker or this process). None: off.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        mode: str = "subprocess",
        start_method: str = "spawn",
        *,
        start_timeout_s: float = 600.0,
        reset_timeout_s: float = 300.0,
        step_timeout_s: float = 300.0,
        max_worker_failures: int = 3,
        smoothing: ChunkSmoothing | None = None,
        ray_address: str = "",
        ray_num_cpus_per_worker: float = 1.0,
    ):
        if not env_fns:
            raise ValueError("VectorEnv needs at least one env_fn.")
        if mode not in ("subprocess", "inline", "ray"):
            raise ValueError(f"mode must be 'subprocess', 'inline' or 'ray', got {mode!r}.")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r} (fork is "
                "unsafe with JAX and GL contexts in the parent)."
            )
        for name, value in (
            ("start_timeout_s", start_timeout_s),
            ("reset_timeout_s", reset_timeout_s),
            ("step_timeout_s", step_timeout_s),
        ):
            if not value > 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}.")
        if isinstance(max_worker_failures, bool) or not isinstance(max_worker_failures, int):
            raise ValueError(f"max_worker_failures must be an int, got {max_worker_failures!r}.")
        if max_worker_failures < 1:
            raise ValueError(f"max_worker_failures must be >= 1, got {max_worker_failures}.")
        self.reset_timeout_s, self.step_timeout_s = float(reset_timeout_s), float(step_timeout_s)
        self.max_worker_failures = int(max_worker_failures)
        self.mode = mode
        self.smoothing = smoothing if smoothing is not None and smoothing.enabled else None
        if self.smoothing is not None:
            env_fns = [functools.partial(make_smoothed_env, fn, self.smoothing) for fn in env_fns]
        self.num_envs = len(env_fns)
        self._closed = False
        if mode == "inline":
            self._envs = [fn() for fn in env_fns]
            specs = [env.spec for env in self._envs]
            self._workers = None
        elif mode == "ray":
            from dsrl.envs.ray_workers import RayWorkers

            self._envs = None
            self._workers = RayWorkers(
                env_fns,
                start_timeout_s=float(start_timeout_s),
                max_worker_failures=max_worker_failures,
                num_cpus_per_worker=ray_num_cpus_per_worker,
                address=ray_address,
            )
            specs = self._workers.specs
        else:
            self._envs = None
            self._workers = _SubprocessWorkers(
                env_fns,
                start_method,
                start_timeout_s=float(start_timeout_s),
                max_worker_failures=max_worker_failures,
            )
            specs = self._workers.specs
        for i, spec in enumerate(specs[1:], start=1):
            if (spec.observation_spec, spec.action_dim) != (
                specs[0].observation_spec,
                specs[0].action_dim,
            ):
                self.close()
                raise ValueError(
                    f"All envs of a VectorEnv must share observation_spec and action_dim; env 0 "
                    f"({specs[0].name}) and env {i} ({spec.name}) differ."
                )
        self.specs: list[EnvSpec] = specs
        self._elapsed = [0] * self.num_envs  # steps since each env's reset, for render timing
        # The observation each env last returned: what a discarded chunk reports (ChunkResult).
        self._last_obs: list[Observation | None] = [None] * self.num_envs
        self._needs_reset = [False] * self.num_envs  # a restarted worker has a fresh env
        self.spec: EnvSpec = specs[0]
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def worker_restarts(self) -> int:
        """Env workers restarted so far after stalling or dying (0 in "inline" mode)."""
        return sum(self._workers.restarts) if self._workers is not None else 0

    @property
    def worker_pids(self) -> list[int | None]:
        """Process id of each env's worker (None in "inline" mode); changes on a restart."""
        if self._workers is None:
            return [None] * self.num_envs
        if self.mode == "ray":
            return list(self._workers.pids)
        return [proc.pid for proc in self._workers.procs]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("This VectorEnv is closed.")

    def reset(
        self, seeds: Sequence[int | None] | None = None, indices: Sequence[int] | None = None
    ) -> list[Observation]:
        """Resets the envs `indices` (default: all); seeds[k] (or None) seeds env indices[k].

        Returns their first observations, in the order of `indices`."""
        self._check_open()
        indices = list(range(self.num_envs)) if indices is None else [int(i) for i in indices]
        seeds = [None] * len(indices) if seeds is None else list(seeds)
        if len(seeds) != len(indices):
            raise ValueError(f"Got {len(seeds)} seeds for {len(indices)} envs to reset.")
        if any(not 0 <= i < self.num_envs for i in indices):
            raise ValueError(f"reset indices must lie in [0, {self.num_envs}), got {indices}.")
        if self._envs is not None:
            obs = [self._envs[i].reset(seed=s) for i, s in zip(indices, seeds, strict=True)]
        else:
            obs = self._workers.call(indices, "reset", seeds, self.reset_timeout_s)
            # A worker that failed the reset was restarted: reset it again, with the same seed
            # (no episode has started, so nothing is lost). `call` raises after too many.
            while retry := [k for k, o in enumerate(obs) if isinstance(o, WorkerFailure)]:
                again = self._workers.call(
                    [indices[k] for k in retry],
                    "reset",
                    [seeds[k] for k in retry],
                    self.reset_timeout_s,
                )
                for k, o in zip(retry, again, strict=True):
                    obs[k] = o
        for i, o in zip(indices, obs, strict=True):
            self._elapsed[i] = 0
            self._last_obs[i] = o
            self._needs_reset[i] = False
        return obs

    def step_chunk(
        self,
        actions: np.ndarray,
        active: np.ndarray | Sequence[bool] | None = None,
        record_frames: bool = False,
        tails: np.ndarray | None = None,
    ) -> list[ChunkResult | None]:
        """Executes actions[i] (T, A) in env i for every active env, in parallel across workers.

        actions: (N, T, A). active: bool (N,), None = all; inactive envs are not stepped and get
        None. Returns one ChunkResult per env (see ChunkResult); `worker_restarted` marks an env
        whose worker stalled or died during the chunk (its episode is lost; reset it).
        tails: (N, R, A) the base policy's actions after each chunk (unexecuted), which chunk
        smoothing blends the next chunk from; ignored without smoothing."""
        self._check_open()
        actions = np.asarray(actions)
        expected = (self.num_envs, self.spec.action_dim)
        if actions.ndim != 3 or (actions.shape[0], actions.shape[2]) != expected:
            raise ValueError(
                f"step_chunk expects actions shaped (num_envs={self.num_envs}, T, "
                f"action_dim={self.spec.action_dim}), got {actions.shape}."
            )
        active = np.ones(self.num_envs, bool) if active is None else np.asarray(active, bool)
        if active.shape != (self.num_envs,):
            raise ValueError(f"active must be shaped ({self.num_envs},), got {active.shape}.")
        indices = [i for i in range(self.num_envs) if active[i]]
        if stale := [i for i in indices if self._needs_reset[i]]:
            raise ValueError(
                f"envs {stale} were restarted after a worker failure (ChunkResult."
                "worker_restarted) and must be reset before they are stepped again."
            )
        use_tails = tails is not None and self.smoothing is not None
        payloads = [
            (
                actions[i],
                record_frames,
                self.specs[i].max_episode_steps - self._elapsed[i],
                np.asarray(tails[i]) if use_tails else None,
            )
            for i in indices
        ]
        if self._envs is not None:
            outputs = [run_chunk(self._envs[i], *p) for i, p in zip(indices, payloads, strict=True)]
        else:
            outputs = self._workers.call(indices, "step_chunk", payloads, self.step_timeout_s)
        results: list[ChunkResult | None] = [None] * self.num_envs
        for i, res in zip(indices, outputs, strict=True):
            if isinstance(res, WorkerFailure):
                res = self._discarded_chunk(i)
            else:
                self._elapsed[i] += res.steps_executed
                self._last_obs[i] = res.obs
                if self._workers is not None and (res.terminated or res.truncated):
                    self._workers.episode_completed(i)
            results[i] = res
        return results

    def _discarded_chunk(self, i: int) -> ChunkResult:
        self._needs_reset[i] = True
        return ChunkResult(
            obs=self._last_obs[i],
            rewards=np.zeros(0, np.float32),
            success=False,
            terminated=False,
            truncated=True,
            steps_executed=0,
            worker_restarted=True,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._workers is not None:
            self._workers.close()
        if self._envs is not None:
            for env in self._envs:
                env.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing left to report to
            pass
