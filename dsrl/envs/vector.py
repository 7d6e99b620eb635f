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
import functools
import logging
import weakref
from collections.abc import Callable, Sequence

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation
from dsrl.envs.chunk import (  # noqa: F401 - the public names of this module
    ChunkResult,
    NonFiniteActionError,
    VectorEnvError,
    WorkerFailedError,
    _video_frame,
    run_chunk,
    video_frame,
)
from dsrl.envs.smoothing import ChunkSmoothing, make_smoothed_env
from dsrl.envs.worker_pool import (  # noqa: F401 - _RestartingWorkers: dsrl.envs.ray_workers
    EnvFn,
    WorkerFailure,
    _first_line,
    _RestartingWorkers,
    _SubprocessWorkers,
)

log = logging.getLogger(__name__)


def _close_at_exit(ref: weakref.ReferenceType) -> None:
    venv = ref()
    if venv is not None:
        venv.close()


def _refuse_non_finite(actions: np.ndarray, active: np.ndarray) -> None:
    """A NaN action reaches no env: a simulator fails on it with a puzzling error, or worse, a
    robot moves."""
    finite = np.isfinite(actions).all(axis=(1, 2))
    if bad := np.flatnonzero(active & ~finite).tolist():
        raise NonFiniteActionError(
            f"the action chunks for env(s) {bad} hold NaN or inf, so none was sent: the policy "
            "diverged (often a learning rate that is too high, e.g. --critic_lr / --actor_lr). "
            "Checkpoints already saved are kept (non-finite state is never saved); resume from "
            "the last one with lower learning rates."
        )


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
        _refuse_non_finite(actions, active)
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


def run_seeded_episodes(
    act: Callable[[list[Observation]], np.ndarray],
    env_fn: Callable[[], Env],
    seeds: Sequence[int],
    workers: int,
    query_freq: int | None = None,
) -> list[bool]:
    """Success of one episode per reset seed, `workers` subprocess envs stepping in parallel
    (what the base-policy makers in scripts/ evaluate with). `act(observations)` (one per worker;
    idle workers repeat the first) returns action chunks (workers, T, A), of which the first
    `query_freq` steps (all T when None) are executed, rendering once per chunk. An episode
    succeeds if any of its chunks reports a success."""
    successes = []
    with VectorEnv([env_fn] * workers) as vec:
        for start in range(0, len(seeds), workers):
            round_seeds = list(seeds[start : start + workers])
            obs = vec.reset(seeds=round_seeds, indices=list(range(len(round_seeds))))
            obs = obs + [obs[0]] * (workers - len(round_seeds))
            active = np.arange(workers) < len(round_seeds)
            done = np.zeros(workers, bool)
            success = np.zeros(workers, bool)
            while np.any(active & ~done):
                chunk = act(obs)[:, :query_freq]
                for i, res in enumerate(vec.step_chunk(chunk, active=active & ~done)):
                    if res is not None:
                        obs[i] = res.obs
                        success[i] |= res.success
                        done[i] = res.terminated or res.truncated
            successes += [bool(s) for s in success[: len(round_seeds)]]
    return successes
