"""Running a diffusion base policy on its own in a gymnasium env (no steering): the base rate a
DSRL run starts from, measured as the release measures it (x_T ~ N(0, I), whole chunks executed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    episode_return: float
    length: int
    terminated: bool  # the env ended it (e.g. the robot fell), not the step limit


def run_base_policy(
    policy: Any,
    env: Any,
    *,
    episodes: int,
    seed: int,
    max_steps: int = 1000,
    observation_fn: Callable[[Any], np.ndarray] | None = None,
) -> list[EpisodeResult]:
    """Rolls `policy` (BasePolicy) in a gymnasium `env`, one chunk per query, every action of the
    chunk executed. Episode i resets with seed `seed + i`; its noises come from
    np.random.default_rng(seed + i). `observation_fn` maps the env's observation to the policy's
    state vector (default: the observation itself)."""
    key = policy.config.state_key if hasattr(policy, "config") else "policy_state"
    results = []
    for episode in range(episodes):
        rng = np.random.default_rng(seed + episode)
        obs, _ = env.reset(seed=seed + episode)
        total, steps, terminated, truncated = 0.0, 0, False, False
        while steps < max_steps and not (terminated or truncated):
            state = np.asarray(obs if observation_fn is None else observation_fn(obs), np.float32)
            noise = rng.standard_normal((1, *policy.noise_shape)).astype(np.float32)
            chunk = policy.sample_actions({key: state[None]}, noise)[0]
            for action in chunk:
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                if terminated or truncated or steps >= max_steps:
                    break
        results.append(EpisodeResult(total, steps, bool(terminated)))
    return results
