"""Smooth chunk boundaries: blend the start of a new action chunk into the previous one's plan,
and cap the change of action between consecutive steps.

A chunked policy replans every `query_freq` steps, and the new chunk's first action can be far
from the action just executed: on a real arm (a Franka under joint or Cartesian control) that is
a jerk at every chunk boundary. `ChunkSmoother` rewrites each chunk before it is executed:

  blend: for t < blend_steps, a'_t = (1 - w_t) * p_t + w_t * a_t with w_t = (t + 1) /
    (blend_steps + 1), where p_t is the previous chunk's plan for the same step (its unexecuted
    tail, when the caller passes it) or, past that tail, the last executed action;
  cap: every executed action differs from the one before it (across chunk boundaries too) by
    at most `max_action_delta` per dimension.

Both are off by default (an unchanged chunk), start afresh at every episode (`reset`), and live
in the env layer (`SmoothedEnv`, used by `run_chunk`), so sim workers, inline envs and the real
robot execute the same smoothed chunks. The replay buffer keeps the base policy's chunk.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dsrl.envs.base import Env, Observation


@dataclasses.dataclass(frozen=True)
class ChunkSmoothing:
    blend_steps: int = 0  # steps of a new chunk cross-faded from the previous plan; 0: none
    max_action_delta: float = 0.0  # per-step, per-dimension action change bound; 0: none

    def __post_init__(self):
        if isinstance(self.blend_steps, bool) or not isinstance(self.blend_steps, int | np.integer):
            raise ValueError(f"blend_steps must be an integer >= 0, got {self.blend_steps!r}")
        if self.blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0 (0: no blending), got {self.blend_steps}")
        delta = self.max_action_delta
        if not isinstance(delta, int | float) or not math.isfinite(delta) or delta < 0:
            raise ValueError(
                f"max_action_delta must be a finite number >= 0 (0: no cap), got {delta!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.blend_steps > 0 or self.max_action_delta > 0


class ChunkSmoother:
    """The smoothing state of one env: the last executed action and the previous plan's tail."""

    def __init__(self, config: ChunkSmoothing):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.last_action: np.ndarray | None = None
        self.plan: np.ndarray | None = None  # previous chunk's unexecuted actions, (R, A)

    def smooth(self, actions: np.ndarray) -> np.ndarray:
        """The chunk (T, A) to execute instead of `actions`; does not change the state."""
        out = np.array(actions, dtype=np.float64)
        cfg = self.config
        if self.last_action is None:  # first chunk of the episode: nothing to blend from
            prev = out[0]
            start = 1
        else:
            b = min(cfg.blend_steps, len(out))
            if b:
                ref = np.repeat(self.last_action[None], b, axis=0)
                if self.plan is not None and len(self.plan):
                    r = min(len(self.plan), b)
                    ref[:r] = self.plan[:r]
                w = (np.arange(1, b + 1) / (b + 1))[:, None]
                out[:b] = (1.0 - w) * ref + w * out[:b]
            prev = self.last_action
            start = 0
        if cfg.max_action_delta > 0:
            d = cfg.max_action_delta
            for t in range(start, len(out)):
                out[t] = prev + np.clip(out[t] - prev, -d, d)
                prev = out[t]
        return out.astype(np.asarray(actions).dtype, copy=False)

    def executed(self, raw: np.ndarray, smoothed: np.ndarray, steps: int, tail: Any) -> None:
        """Records that the first `steps` of `smoothed` ran; the plan for the steps that follow
        is the rest of the raw chunk, then `tail` (the base policy's unexecuted actions)."""
        if steps <= 0:
            return
        self.last_action = np.asarray(smoothed[steps - 1], np.float64).copy()
        rest = [np.asarray(raw[steps:], np.float64)]
        if tail is not None:
            rest.append(np.asarray(tail, np.float64).reshape(-1, raw.shape[1]))
        self.plan = np.concatenate(rest, axis=0)


class SmoothedEnv(Env):
    """`env` whose chunks `run_chunk` smooths (see the module docstring); reset clears it."""

    def __init__(self, env: Env, config: ChunkSmoothing):
        self.env = env
        self.spec = env.spec
        self.smoother = ChunkSmoother(config)

    def reset(self, seed: int | None = None) -> Observation:
        self.smoother.reset()
        return self.env.reset(seed=seed)

    def step(self, action: np.ndarray, render: bool = True):
        return self.env.step(action, render=render)

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str) -> Any:  # render_current and env-specific attributes
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


def make_smoothed_env(env_fn: Any, config: ChunkSmoothing) -> Env:
    """env_fn() wrapped in SmoothedEnv (picklable with functools.partial, for env workers)."""
    return SmoothedEnv(env_fn(), config)
