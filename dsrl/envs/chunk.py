"""One action chunk in one env (`run_chunk`, what a worker runs per call), its result, and the
errors of the vector env (dsrl.envs.vector)."""

from __future__ import annotations

import dataclasses

import numpy as np

from dsrl.envs.base import Env, Observation
from dsrl.envs.smoothing import SmoothedEnv


class VectorEnvError(RuntimeError):
    """An env worker failed; the message names the env and carries the worker's traceback."""


class WorkerFailedError(VectorEnvError):
    """One env worker stalled or died `max_worker_failures` times in a row."""


class _WorkerDied(VectorEnvError):
    """The worker's end of the pipe closed: the process is gone."""


class NonFiniteActionError(ValueError):
    """Actions holding NaN or inf were about to be sent to an env (training diverged); nothing
    was sent."""


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
