"""The embedded demo task: a cheap numpy pixel task where only the steering noise picks the goal.

Scene (arena [-1, 1]^2, y up): the agent starts near the bottom centre, two identical-looking goals
sit at the top left and top right, and a coloured cue strip along the top edge of the image says
which goal pays (red: left, blue: right). Entering the paying goal ends the episode with reward 1
(success); entering the other goal traps the agent there until the time limit (reward 0).

Why this needs steering across several queries, not a bandit:
  * The base policy (a flow MLP, `dsrl.base_policies.flow_mlp`) sees only the agent position
    ("policy_state"), never the cue. Its demonstrations (`scripted_action`) first drive up a
    corridor to a fork point at the arena centre, then to either goal with equal probability
    regardless of the cue. So it succeeds about half the time, and only its input noise decides
    which branch it takes.
  * The fork is more than one chunk away from the start, and the goal is at least 3 chunks away at
    full speed (`min_steps_to_goal`): the first query's noise cannot decide the episode, the
    decision happens at the 2nd/3rd query, and the reward arrives at the 3rd-5th query, so the
    critic has to carry value back over several queries.
  * The cue is visible only in "pixels"; the agent's "state" is proprioception (position and
    velocity), like LIBERO's.

What `scripts/pretrain_flow_mlp.py` measured the shipped base policy with: image_size 32,
max_episode_steps 48, query_freq 8 (= the base policy's horizon, so each chunk runs fully
open-loop, 6 queries per episode), noise mode "repeat" (agent action dim 2), action_magnitude
1.0 (the training preset, dsrl/presets/demo.py, bounds the latent at 1.5). With these the
shipped base policy succeeds 0.43 with i.i.d. noise over 200 episodes (0.47 with repeat warm-up
noise; ~3% of episodes time out between the goals, the other failures are the trap) while a
per-query best-of-16 noise oracle succeeds 1.0, and so does the constant repeat action (+-1, 0)
chosen by the cue.
Successful episodes take ~26 steps (4 queries); the branch is picked at the 2nd/3rd query.

Observations:
  "pixels": uint8 (S, S, 3), S = image_size (32 or 64): agent, goals, cue strip.
  "state": float32 (4,): agent x, y, and the last step's velocity (vx, vy) in units of max_step.
  "policy_state": float32 (2,): agent x, y; the base policy's input (no cue).
Actions: float32 (2,) desired velocity; its norm is clipped to 1; one unit moves max_step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation

LEFT, RIGHT = 0, 1

_BACKGROUND = (40, 40, 48)
_GOAL_COLOUR = (230, 210, 60)
_AGENT_COLOUR = (60, 230, 90)
_CUE_COLOURS = {LEFT: (230, 50, 50), RIGHT: (60, 90, 240)}


@dataclasses.dataclass(frozen=True)
class DemoEnvConfig:
    """Task geometry and rendering. Distances are in arena units ([-1, 1]^2)."""

    image_size: int = 32
    max_episode_steps: int = 48
    # Distance moved by one step at full speed (|action| = 1).
    max_step: float = 0.07
    start_center: tuple[float, float] = (0.0, -0.8)
    # Uniform start jitter half-widths in (x, y).
    start_jitter: tuple[float, float] = (0.1, 0.05)
    left_goal: tuple[float, float] = (-0.55, 0.6)
    right_goal: tuple[float, float] = (0.55, 0.6)
    goal_radius: float = 0.12
    # Fork point the demonstrations pass through before turning to a goal.
    fork: tuple[float, float] = (0.0, 0.0)
    # The cue strip shows the paying goal from this step on (grey before): 0 = from the start.
    cue_visible_from_step: int = 0

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(
                f"DemoEnvConfig.image_size={self.image_size}: use a multiple of 16, >= 16 "
                "(e.g. 32 or 64)."
            )
        if self.max_episode_steps < 1:
            raise ValueError(
                f"DemoEnvConfig.max_episode_steps={self.max_episode_steps} must be >= 1."
            )


@dataclasses.dataclass(frozen=True)
class DemoState:
    """The full simulator state: enough to clone an episode (used by oracles and tests)."""

    position: np.ndarray  # float64 (2,)
    velocity: np.ndarray  # float64 (2,), last displacement / max_step
    cue: int  # LEFT or RIGHT: which goal pays
    t: int
    trapped: bool  # entered the non-paying goal
    done: bool


def min_steps_to_goal(config: DemoEnvConfig = DemoEnvConfig()) -> int:
    """Fewest steps any policy needs from the nearest possible start to the nearest goal edge."""
    cx, cy = config.start_center
    jx, jy = config.start_jitter
    best = np.inf
    for gx, gy in (config.left_goal, config.right_goal):
        dx = max(abs(gx - cx) - jx, 0.0)
        dy = max(abs(gy - cy) - jy, 0.0)
        best = min(best, np.hypot(dx, dy) - config.goal_radius)
    return int(np.ceil(best / config.max_step))


def scripted_action(
    position: np.ndarray, goal_side: int, config: DemoEnvConfig, speed: float = 0.85
) -> np.ndarray:
    """The demonstrator: head for the fork until level with it, then for the chosen goal.

    Returns float32 (2,). The choice of `goal_side` is the demonstration's, not the cue's: the
    pretraining data mixes both sides so that the base policy is bimodal at the fork.
    """
    fork = np.asarray(config.fork)
    if position[1] < fork[1] - 0.5 * config.max_step:
        target = fork
    else:
        target = np.asarray(config.left_goal if goal_side == LEFT else config.right_goal)
    delta = target - position
    dist = float(np.linalg.norm(delta))
    if dist < 1e-9:
        return np.zeros(2, np.float32)
    # Full speed until the last step, which lands on the target instead of overshooting.
    step = min(speed, dist / config.max_step)
    return (delta / dist * step).astype(np.float32)


class DemoEnv(Env):
    """See the module docstring. `DemoEnv(image_size=64)` overrides `DemoEnvConfig` fields."""

    def __init__(self, config: DemoEnvConfig | None = None, **overrides: Any):
        config = config or DemoEnvConfig()
        if overrides:
            fields = {f.name for f in dataclasses.fields(DemoEnvConfig)}
            unknown = sorted(set(overrides) - fields)
            if unknown:
                raise TypeError(
                    f"DemoEnv got unknown option(s) {unknown}; valid options: {sorted(fields)}."
                )
            config = dataclasses.replace(config, **overrides)
        self.config = config
        size = config.image_size
        self.spec = EnvSpec(
            name="demo",
            observation_spec={
                "pixels": ((size, size, 3), np.uint8),
                "state": ((4,), np.float32),
            },
            action_dim=2,
            max_episode_steps=config.max_episode_steps,
            max_reward=1.0,
        )
        self._scale = size // 16
        self._backgrounds = {cue: self._draw_background(cue) for cue in (LEFT, RIGHT, None)}
        self._state: DemoState | None = None
        self._pixels: np.ndarray | None = None

    # ----------------------------------------------------------------------------------------
    # Env API

    def reset(self, seed: int | None = None) -> Observation:
        rng = np.random.default_rng(seed)
        c = self.config
        jitter = rng.uniform(-1.0, 1.0, size=2) * np.asarray(c.start_jitter)
        self._state = DemoState(
            position=np.asarray(c.start_center, np.float64) + jitter,
            velocity=np.zeros(2),
            cue=int(rng.integers(2)),
            t=0,
            trapped=False,
            done=False,
        )
        return self._observation(render=True)

    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        s = self._state
        if s is None or s.done:
            raise RuntimeError(
                "DemoEnv.step called on a finished or never-started episode: reset()."
            )
        action = np.asarray(action, np.float64)
        if action.shape != (2,):
            raise ValueError(
                f"DemoEnv.step expects one action of shape (2,), got {action.shape}; "
                "step a chunk one action at a time."
            )
        c = self.config
        position = s.position
        if not s.trapped:
            norm = float(np.linalg.norm(action))
            if norm > 1.0:
                action = action / norm
            position = np.clip(position + c.max_step * action, -1.0, 1.0)
        velocity = (position - s.position) / c.max_step
        paying = np.asarray(c.left_goal if s.cue == LEFT else c.right_goal)
        other = np.asarray(c.right_goal if s.cue == LEFT else c.left_goal)
        success = bool(np.linalg.norm(position - paying) <= c.goal_radius)
        trapped = s.trapped or bool(np.linalg.norm(position - other) <= c.goal_radius)
        t = s.t + 1
        truncated = not success and t >= c.max_episode_steps
        self._state = DemoState(position, velocity, s.cue, t, trapped, success or truncated)
        obs = self._observation(render=render)
        info = {"success": success, "trapped": trapped, "cue": s.cue}
        return obs, float(success), success, truncated, info

    # ----------------------------------------------------------------------------------------
    # State access for oracles / tests

    @property
    def state(self) -> DemoState:
        if self._state is None:
            raise RuntimeError("DemoEnv has no state before reset().")
        return self._state

    def set_state(self, state: DemoState, render: bool = False) -> Observation:
        """Restore a state from `state` (e.g. to try several chunks from one point)."""
        self._state = state
        return self._observation(render=render)

    def render_current(self) -> Observation:
        """The current observation with freshly drawn pixels (after steps taken with render=False,
        e.g. when a chunk ends early on success: videos then show the final frame)."""
        return self._observation(render=True)

    def render(self) -> np.ndarray:
        """uint8 (S, S, 3) of the current state."""
        s = self.state
        visible = s.t >= self.config.cue_visible_from_step
        image = self._backgrounds[s.cue if visible else None].copy()
        row, col = self._to_pixel(s.position)
        half = self._scale // 2  # agent: a 3x3 square at 32 px, 5x5 at 64 px
        image[max(row - half, 0) : row + half + 1, max(col - half, 0) : col + half + 1] = (
            _AGENT_COLOUR
        )
        return image

    # ----------------------------------------------------------------------------------------

    def _observation(self, render: bool) -> Observation:
        s = self.state
        if render or self._pixels is None:
            self._pixels = self.render()
        position = s.position.astype(np.float32)
        return {
            "pixels": self._pixels,
            "state": np.concatenate([position, s.velocity.astype(np.float32)]),
            "policy_state": position,
        }

    def _to_pixel(self, xy: np.ndarray) -> tuple[int, int]:
        size = self.config.image_size
        col = int(round((xy[0] + 1.0) / 2.0 * (size - 1)))
        row = int(round((1.0 - xy[1]) / 2.0 * (size - 1)))
        return row, col

    def _draw_background(self, cue: int | None) -> np.ndarray:
        size, k = self.config.image_size, self._scale
        image = np.empty((size, size, 3), np.uint8)
        image[:] = _BACKGROUND
        # Cue strip: the top rows (3 px at 32x32), grey while the cue is hidden.
        image[: 3 * k // 2] = _CUE_COLOURS[cue] if cue is not None else (128, 128, 128)
        radius_px = max(int(round(self.config.goal_radius / 2.0 * (size - 1))), k)
        for goal in (self.config.left_goal, self.config.right_goal):
            row, col = self._to_pixel(np.asarray(goal))
            image[row - radius_px : row + radius_px + 1, col - radius_px : col + radius_px + 1] = (
                _GOAL_COLOUR
            )
        return image


# --------------------------------------------------------------------------------------------
# Evaluation of a base policy on the demo (used by scripts/pretrain_flow_mlp.py and the tests)

NoiseFn = Callable[[np.random.Generator, int], np.ndarray]


def evaluate_noise_strategy(
    policy: Any,
    seeds: Sequence[int],
    noise_fn: NoiseFn,
    query_freq: int = 8,
    config: DemoEnvConfig | None = None,
    oracle_candidates: int = 0,
    rng_seed: int = 0,
) -> np.ndarray:
    """Success (bool, len(seeds)) of the base `policy` driven by noise from `noise_fn`.

    All episodes run in lockstep with one batched policy call per query. `noise_fn(rng, n)`
    returns (n, H, D) noise. With `oracle_candidates = K > 0` each query instead tries K
    candidates from `noise_fn` per env, simulates each chunk from a copy of the env state and
    keeps the best one (success first, then least distance to the paying goal, never the trap):
    an upper bound on what steering the noise can achieve with one query of look-ahead.
    """
    config = config or DemoEnvConfig()
    rng = np.random.default_rng(rng_seed)
    envs = [DemoEnv(config) for _ in seeds]
    obs = [env.reset(int(seed)) for env, seed in zip(envs, seeds, strict=True)]
    success = np.zeros(len(envs), bool)
    active = list(range(len(envs)))
    while active:
        states = np.stack([obs[i]["policy_state"] for i in active])
        if oracle_candidates > 0:
            chunks = _oracle_chunks(
                policy,
                [envs[i] for i in active],
                states,
                noise_fn,
                rng,
                oracle_candidates,
                query_freq,
            )
        else:
            noise = noise_fn(rng, len(active))
            chunks = policy.sample_actions({"policy_state": states}, noise)
        still_active = []
        for i, chunk in zip(active, chunks, strict=True):
            done = False
            for action in chunk[:query_freq]:
                obs[i], _, terminated, truncated, info = envs[i].step(action, render=False)
                if terminated or truncated:
                    success[i], done = info["success"], True
                    break
            if not done:
                still_active.append(i)
        active = still_active
    return success


def _chunk_score(env: DemoEnv, chunk: np.ndarray, query_freq: int) -> float:
    start = env.state
    score = None
    for step, action in enumerate(chunk[:query_freq]):
        _, _, terminated, truncated, info = env.step(action, render=False)
        if terminated:
            score = 10.0 - step * 1e-3
            break
        if truncated:
            break
    if score is None:
        s = env.state
        paying = env.config.left_goal if s.cue == LEFT else env.config.right_goal
        score = -10.0 if s.trapped else -float(np.linalg.norm(s.position - np.asarray(paying)))
    env.set_state(start)
    return score


def _oracle_chunks(policy, envs, states, noise_fn, rng, num_candidates, query_freq):
    n = len(envs)
    noise = noise_fn(rng, n * num_candidates)
    repeated = np.repeat(states, num_candidates, axis=0)
    chunks = policy.sample_actions({"policy_state": repeated}, noise)
    chunks = chunks.reshape(n, num_candidates, *chunks.shape[1:])
    best = []
    for env, candidates in zip(envs, chunks, strict=True):
        scores = [_chunk_score(env, c, query_freq) for c in candidates]
        best.append(candidates[int(np.argmax(scores))])
    return np.stack(best)
