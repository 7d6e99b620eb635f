"""The environment contract shared by LIBERO, Aloha, DROID (real) and the demo task.

An env returns observation dicts. Two keys are reserved for the RL agent:
  "pixels": uint8 (H, W, C) agent image(s), several cameras stacked on channels; absent for a
            state-based env (Gym MuJoCo, Robomimic low-dim), whose agent is MLP-only;
  "state":  float32 (d,) low-dimensional proprioception (the whole observation without pixels).
Every other key is for the base policy (full-resolution camera images, the prompt, ...).

`step(action, render=...)` lets callers skip camera rendering on steps whose observation nobody
reads (inside an action chunk): the returned observation then carries no fresh images (the
previous ones may be repeated) and must not be given to a policy.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np

Observation = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static facts about an env, known before the first reset."""

    name: str
    # Agent observation layout: {"pixels": ((H, W, C), np.uint8), "state": ((d,), np.float32)},
    # or {"state": ...} alone for a state-based env.
    observation_spec: dict[str, tuple[tuple[int, ...], Any]]
    action_dim: int
    max_episode_steps: int
    # Reward value that means success (1 for LIBERO, 4 for Aloha TransferCube).
    max_reward: float = 1.0
    prompt: str | None = None
    # Observation key of the image recorded in videos (a full-size camera where the env has one).
    video_key: str = "pixels"
    # The agent's reward per query (dsrl.training.rollout, REWARD_CONVENTIONS): "success" (the
    # reference's -1 per query, 0 on success, which ends the episode) or "env_sum" (the env's own
    # rewards summed over the executed chunk, as the authors' Gym/Robomimic release does; only
    # the env's termination ends the episode).
    reward_convention: str = "success"
    # Whether info["success"] means anything (False for Gym locomotion, measured by its return):
    # the closing tables then print average returns instead of success rates.
    has_success: bool = True


class Env(abc.ABC):
    spec: EnvSpec

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode. A given seed makes the episode's initial state reproducible."""

    @abc.abstractmethod
    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """One env step: (observation, reward, terminated, truncated, info).

        info["success"] is a bool. terminated means the task ended (success); truncated means the
        episode hit max_episode_steps."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def _checked_action(self, action: np.ndarray, episode_over: bool) -> np.ndarray:
        """float64 (action_dim,) action, or a clear error for a finished episode / wrong shape."""
        if episode_over:
            raise RuntimeError(
                f"{self.spec.name}: step() called after the episode ended; call reset() first."
            )
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.spec.action_dim,):
            raise ValueError(
                f"{self.spec.name}: expected an action of shape ({self.spec.action_dim},), "
                f"got {action.shape}."
            )
        return action
