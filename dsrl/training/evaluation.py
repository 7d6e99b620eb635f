"""Control evaluation: run episodes with a noise source and summarise them.

The loop evaluates several noise sources on the SAME fixed set of seeded initial states, so their
curves are comparable:
  evaluation/*           the actor's sampled latents (what the reference logs),
  evaluation_mode/*      the actor's distribution mode (deterministic),
  evaluation_base_iid/*  the frozen base policy with i.i.d. N(0, I) noise over (H, D),
  evaluation_base_warmup/*  the base policy under the warm-up family (e.g. horizon-repeated noise),
which shows how much the noise parameterisation alone changes the base policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from dsrl.steering import NoiseSource, Steering
from dsrl.training.rollout import Episode, Timer, run_episodes

_EVAL_RERUNS = 2  # re-runs of an evaluation episode lost to an env worker failure


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]  # unprefixed: success_rate, avg_return, avg_episode_len, ...
    videos: list[np.ndarray]  # uint8 (T, H, W, 3), one per recorded episode
    episodes: list[Episode]


def eval_seeds(seed: int, num_episodes: int) -> list[int]:
    """A fixed set of reset seeds, disjoint in stream from training seeds (see loop.train_seed)."""
    return [
        int(np.random.SeedSequence([seed, 1, i]).generate_state(1)[0]) for i in range(num_episodes)
    ]


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """RLinf's per-episode env metrics, averaged over episodes: `env/episode_len` (env steps),
    `env/return` (the agent's reward summed over the episode's queries, see
    `run_episodes(step_penalty=...)`), `env/success_once` (succeeded at any step)."""
    return {
        "env/episode_len": float(np.mean([e.length for e in episodes])),
        "env/return": float(np.mean([e.agent_return for e in episodes])),
        "env/success_once": float(np.mean([e.success for e in episodes])),
    }


def summarize(episodes: Sequence[Episode], max_reward: float) -> dict[str, float]:
    """Success rate, mean env return, mean length, and the reference's `Reward >= r` fractions."""
    if not episodes:
        raise ValueError("cannot summarise zero episodes")
    metrics = {
        "success_rate": float(np.mean([e.success for e in episodes])),
        "avg_return": float(np.mean([e.env_return for e in episodes])),
        "avg_episode_len": float(np.mean([e.length for e in episodes])),
        "avg_num_queries": float(np.mean([e.num_queries for e in episodes])),
        **episode_metrics(episodes),
    }
    # The reference logs, for each integer reward level, the fraction of episodes reaching it
    # (Aloha's staged 0..4 reward makes this a progress histogram).
    for level in range(int(np.floor(max_reward)) + 1):
        metrics[f"Reward >= {level}"] = float(np.mean([e.max_reward >= level for e in episodes]))
    return metrics | per_task_metrics(episodes)


def per_task_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """`task_<id>/success_rate`, `task_<id>/avg_return` and `task_<id>/episodes` for the episodes
    of a multi-task env (dsrl.envs.libero_suite), none for a single-task one. The overall
    `success_rate` stays the mean over all episodes: the mean over tasks when each task ran as
    many episodes (see the suite docs for the settings that balance them)."""
    tasks = sorted({e.task_id for e in episodes if e.task_id is not None})
    metrics = {}
    for task in tasks:
        mine = [e for e in episodes if e.task_id == task]
        metrics[f"task_{task}/success_rate"] = float(np.mean([e.success for e in mine]))
        metrics[f"task_{task}/avg_return"] = float(np.mean([e.env_return for e in mine]))
        metrics[f"task_{task}/episodes"] = float(len(mine))
    return metrics


def evaluate(
    vec_env: Any,
    steering: Steering,
    source: NoiseSource,
    seeds: Sequence[int],
    *,
    num_video_episodes: int = 0,
    timer: Timer | None = None,
    step_penalty: bool = True,
) -> EvalResult:
    """Run `len(seeds)` episodes in rounds of `vec_env.num_envs`, recording videos of the first
    `num_video_episodes` (agent-view frames, only in the first round).

    An episode lost to an env worker failure (`Episode.discarded`) is re-run with its seed, up to
    `_EVAL_RERUNS` times, so the metrics cover the same fixed seeds; one still lost after that is
    left out and counted in the metric `discarded_episodes` (present only then)."""
    num_envs = int(vec_env.num_envs)
    episodes: list[Episode] = []
    for start in range(0, len(seeds), num_envs):
        round_seeds = list(seeds[start : start + num_envs])
        episodes += run_episodes(
            vec_env,
            steering,
            source,
            round_seeds,
            discount=1.0,
            store_transitions=False,
            step_penalty=step_penalty,
            record_frames=start == 0 and num_video_episodes > 0,
            timer=timer,
        )
    for _ in range(_EVAL_RERUNS):
        lost = [k for k, e in enumerate(episodes) if e.discarded]
        for start in range(0, len(lost), num_envs):
            batch = lost[start : start + num_envs]
            rerun = run_episodes(
                vec_env,
                steering,
                source,
                [seeds[k] for k in batch],
                discount=1.0,
                store_transitions=False,
                step_penalty=step_penalty,
                record_frames=any(k < num_video_episodes for k in batch),
                timer=timer,
            )
            for k, episode in zip(batch, rerun, strict=True):
                episodes[k] = episode
    kept = [e for e in episodes if not e.discarded]
    metrics = summarize(kept, float(vec_env.spec.max_reward))
    if len(kept) < len(episodes):
        metrics["discarded_episodes"] = float(len(episodes) - len(kept))
    videos = [e.frames for e in episodes[:num_video_episodes] if e.frames is not None]
    return EvalResult(metrics=metrics, videos=videos, episodes=episodes)
