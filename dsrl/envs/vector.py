"""Run N envs side by side, one action chunk per worker per call.

DSRL queries the base policy once per chunk, so a worker receives a whole (T, A) chunk, executes
it locally and renders only on the step whose observation will be read (the last executed step):
one IPC round trip and one render per chunk instead of T. Two modes:

  * "subprocess" (default): each env lives in its own process (multiprocessing "spawn", safe
    with JAX/threads in the parent). Required for LIBERO and Aloha: their renderers must never
    share a process, and rendering is the bottleneck, so workers run in parallel.
  * "inline": the envs live in this process and run one after the other; for cheap envs such
    as the numpy demo, where IPC would cost more than the env.

A worker exception is re-raised here as VectorEnvError naming the env, the worker and its
traceback; a worker that dies is reported the same way, with its exit code.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing as mp
import os
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation

EnvFn = Callable[[], Env]


class VectorEnvError(RuntimeError):
    """An env worker failed; the message names the env and carries the worker's traceback."""


@dataclasses.dataclass
class ChunkResult:
    """What one env did with one action chunk.

    obs: the observation after the last executed step (rendered).
    rewards: float32 (steps_executed,), the env reward of each executed step.
    success: the episode succeeded during the chunk.
    terminated / truncated: the episode ended (success / time limit) on the last executed step.
    steps_executed: <= T; the chunk stops early when the episode ends.
    frames: uint8 (steps_executed, H, W, 3) video frames (every step rendered) when requested.
    """

    obs: Observation
    rewards: np.ndarray
    success: bool
    terminated: bool
    truncated: bool
    steps_executed: int
    frames: np.ndarray | None = None


def video_frame(obs: Observation, video_key: str = "pixels") -> np.ndarray:
    """The RGB image recorded in videos: obs[video_key] (EnvSpec.video_key), else the agent
    pixels. Reset frames and chunk frames must both come through here so a video stacks."""
    frame = np.asarray(obs[video_key] if video_key in obs else obs["pixels"])
    return frame[..., :3]


def _video_frame(env: Env, obs: Observation) -> np.ndarray:
    return video_frame(obs, getattr(env.spec, "video_key", "pixels"))


def run_chunk(
    env: Env, actions: np.ndarray, record_frames: bool = False, steps_left: int | None = None
) -> ChunkResult:
    """Executes up to T = len(actions) steps of `env`, rendering only the step that is read.

    steps_left: steps before the env's time limit (None: unknown). The rendered step is the last
    one of the chunk or, when the time limit falls inside the chunk, the step that hits it. An
    episode can also end early on success; that step was stepped without rendering, so its
    images are refreshed with `env.render_current()` when the env has one (LIBERO, Aloha) and
    are otherwise stale (harmless for training: a success observation is terminal, mask 0).
    With record_frames every step is rendered (full render cost) and its video frame kept.
    """
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[0] == 0:
        raise ValueError(f"Expected a non-empty action chunk shaped (T, A), got {actions.shape}.")
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
    return ChunkResult(
        obs=obs,
        rewards=np.asarray(rewards, dtype=np.float32),
        success=success,
        terminated=bool(terminated),
        truncated=bool(truncated),
        steps_executed=len(rewards),
        frames=np.stack(frames) if record_frames else None,
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


class _SubprocessWorkers:
    def __init__(self, env_fns: Sequence[EnvFn], start_method: str):
        ctx = mp.get_context(start_method)
        self.names = [f"env {i}" for i in range(len(env_fns))]
        self.conns, self.procs = [], []
        for i, fn in enumerate(env_fns):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(i, fn, child), daemon=True, name=f"dsrl-env-{i}"
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.specs = [self._receive(i, "construction") for i in range(len(env_fns))]
        self.names = [f"env {i} ({spec.name})" for i, spec in enumerate(self.specs)]

    def _receive(self, i: int, what: str):
        try:
            status, payload = self.conns[i].recv()
        except (EOFError, ConnectionResetError, BrokenPipeError):
            self.procs[i].join(timeout=5)
            raise VectorEnvError(
                f"Worker {self.names[i]} died during {what} (exit code {self.procs[i].exitcode}); "
                "check its stderr (out of memory? a crash in the simulator?)."
            ) from None
        if status == "error":
            raise VectorEnvError(f"Worker {self.names[i]} failed during {what}:\n{payload}")
        return payload

    def call(self, indices: Sequence[int], command: str, payloads: Sequence[Any]) -> list[Any]:
        for i, payload in zip(indices, payloads, strict=True):
            try:
                self.conns[i].send((command, payload))
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.procs[i].join(timeout=5)
                raise VectorEnvError(
                    f"Worker {self.names[i]} is gone (exit code {self.procs[i].exitcode}); "
                    f"cannot send {command!r}."
                ) from None
        # Receive from every worker before raising, so no reply is left in a pipe.
        results, first_error = [], None
        for i in indices:
            try:
                results.append(self._receive(i, command))
            except VectorEnvError as err:
                results.append(None)
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        return results

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc.is_alive():
                try:
                    conn.send(("close", None))
                    conn.recv()
                except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
                    pass
        for conn, proc in zip(self.conns, self.procs, strict=True):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()
        self.conns, self.procs = [], []


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
    """

    def __init__(
        self, env_fns: Sequence[EnvFn], mode: str = "subprocess", start_method: str = "spawn"
    ):
        if not env_fns:
            raise ValueError("VectorEnv needs at least one env_fn.")
        if mode not in ("subprocess", "inline"):
            raise ValueError(f"mode must be 'subprocess' or 'inline', got {mode!r}.")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r} (fork is "
                "unsafe with JAX and GL contexts in the parent)."
            )
        self.mode = mode
        self.num_envs = len(env_fns)
        self._closed = False
        if mode == "inline":
            self._envs = [fn() for fn in env_fns]
            specs = [env.spec for env in self._envs]
            self._workers = None
        else:
            self._envs = None
            self._workers = _SubprocessWorkers(env_fns, start_method)
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
        self.spec: EnvSpec = specs[0]
        atexit.register(_close_at_exit, weakref.ref(self))

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
            obs = self._workers.call(indices, "reset", seeds)
        for i in indices:
            self._elapsed[i] = 0
        return obs

    def step_chunk(
        self,
        actions: np.ndarray,
        active: np.ndarray | Sequence[bool] | None = None,
        record_frames: bool = False,
    ) -> list[ChunkResult | None]:
        """Executes actions[i] (T, A) in env i for every active env, in parallel across workers.

        actions: (N, T, A). active: bool (N,), None = all; inactive envs are not stepped and get
        None. Returns one ChunkResult per env (see ChunkResult)."""
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
        payloads = [
            (actions[i], record_frames, self.specs[i].max_episode_steps - self._elapsed[i])
            for i in indices
        ]
        if self._envs is not None:
            outputs = [run_chunk(self._envs[i], *p) for i, p in zip(indices, payloads, strict=True)]
        else:
            outputs = self._workers.call(indices, "step_chunk", payloads)
        results: list[ChunkResult | None] = [None] * self.num_envs
        for i, res in zip(indices, outputs, strict=True):
            results[i] = res
            self._elapsed[i] += res.steps_executed
        return results

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
