"""Gymnasium MuJoCo locomotion (Hopper, Walker2d, HalfCheetah, v5 on the pinned mujoco) as a
state-based DSRL env.

The authors' release runs D4RL's `*-medium-v2` (gym + mujoco-py); v5 is the same robots on the
maintained bindings (same 11 / 17 / 17-d observations and 3 / 6 / 6-d actions in [-1, 1]).
Their reward convention: the env's own reward, summed over the executed chunk
(`reward_convention="env_sum"`); an episode ends when the robot falls (terminated, mask 0) or
after 1000 steps (truncated). There is no success: info["success"] is always False.

Observation: {"state": float32 (d,), "policy_state": the same vector for the base policy}.
With `normalization_path` (DPPO's normalization.npz) the state is min-max mapped to [-1, 1]
and actions are mapped from [-1, 1] to the dataset's range, as the release's wrapper does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation
from dsrl.envs.state_common import POLICY_STATE, MinMaxNormalization, state_observation

# Short names (the release's env families) -> gymnasium ids.
GYM_TASKS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}


class GymMujocoEnv(Env):
    """One gymnasium MuJoCo env behind dsrl's Env contract (see the module docstring)."""

    def __init__(
        self,
        task: str = "hopper",
        max_episode_steps: int = 1000,
        normalization_path: str | None = None,
        seed: int | None = None,
    ):
        if task not in GYM_TASKS:
            raise ValueError(f"unknown Gym task {task!r}; choose one of {sorted(GYM_TASKS)}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        import gymnasium  # imported here: the registry must not import simulators

        # Our own step counter truncates; gymnasium's TimeLimit is set to the same limit.
        self._env = gymnasium.make(GYM_TASKS[task], max_episode_steps=int(max_episode_steps))
        obs_dim = int(self._env.observation_space.shape[0])
        action_dim = int(self._env.action_space.shape[0])
        self._norm = MinMaxNormalization(normalization_path, obs_dim, action_dim, task)
        self._low = np.asarray(self._env.action_space.low, np.float64)
        self._high = np.asarray(self._env.action_space.high, np.float64)
        self.spec = EnvSpec(
            name=f"gym_{task}",
            observation_spec={
                "state": ((obs_dim,), np.float32),
                POLICY_STATE: ((obs_dim,), np.float32),
            },
            action_dim=action_dim,
            max_episode_steps=int(max_episode_steps),
            # No success level (returns are the measure); the evaluation's "Reward >= r" table
            # then has the one row r = 0.
            max_reward=0.0,
            reward_convention="env_sum",
            has_success=False,
        )
        self._seed = seed
        self._steps = 0
        self._over = True

    def reset(self, seed: int | None = None) -> Observation:
        seed = self._seed if seed is None and self._seed is not None else seed
        self._seed = None  # the constructor's seed applies to the first episode only
        obs, _ = self._env.reset(seed=seed)
        self._steps, self._over = 0, False
        return state_observation(self._norm.observation(obs))

    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        action = self._checked_action(action, self._over)
        action = np.clip(self._norm.action(action), self._low, self._high)
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._steps += 1
        truncated = bool(truncated) or self._steps >= self.spec.max_episode_steps
        self._over = bool(terminated) or truncated
        info = {**info, "success": False}
        return (
            state_observation(self._norm.observation(obs)),
            float(reward),
            bool(terminated),
            (truncated),
            info,
        )

    def close(self) -> None:
        self._env.close()
