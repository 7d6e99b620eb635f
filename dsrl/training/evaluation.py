"""Control evaluation: run episodes with a noise source and summarise them.

The loop evaluates several noise sources on the SAME fixed set of seeded initial states, so their
curves are comparable (`EVAL_SOURCES`, the one definition of their names, labels and streams):
  evaluation/*           the actor's sampled latents (what the reference logs),
  evaluation_mode/*      the actor's distribution mode (deterministic),
  evaluation_base_iid/*  the frozen base policy with i.i.d. N(0, I) noise over (H, D),
  evaluation_base_warmup/*  the base policy under the warm-up family (e.g. horizon-repeated noise),
which shows how much the noise parameterisation alone changes the base policy.

Each of these sources is an `EpisodeNoise`: episode k draws from its own stream (a generator or
PRNG key derived from k), so its noise does not depend on which env worker runs it or which
episodes run beside it. Spreading `eval_episodes` over many workers (e.g. 500 episodes over 50
Ray workers) then gives the per-episode results of running them one after another, and an
episode re-run after a worker failure replays exactly. (The base policy still runs batched over
the workers; XLA may round a batch of one differently in the last bit, which moves no outcome
we have seen.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from dsrl.steering import AgentObservation, NoiseSource, Steering
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


@dataclasses.dataclass(frozen=True)
class EvalSource:
    """A noise source evaluation compares: its key in an eval-only summary.json, the prefix of its
    metrics in a training run's metrics.jsonl, its table labels, and (the base policy's fixed
    noise) the generator stream (seed, stream, episode) its episodes draw from."""

    key: str
    prefix: str
    label: str
    short_label: str
    stream: int | None = None  # None: the actor's own PRNG key

    def metric(self, name: str) -> str:
        return f"{self.prefix}/{name}"


ACTOR_MODE = EvalSource("actor_mode", "evaluation_mode", "DSRL, deterministic (actor mode)", "mode")
ACTOR_SAMPLED = EvalSource("actor_sampled", "evaluation", "DSRL, sampled latents", "sampled")
BASE_IID = EvalSource(
    "base_iid", "evaluation_base_iid", "base policy, i.i.d. noise", "base_iid", stream=3
)
BASE_WARMUP = EvalSource(
    "base_warmup", "evaluation_base_warmup", "base policy, warm-up noise family", "warmup", stream=4
)
EVAL_SOURCES = (ACTOR_MODE, ACTOR_SAMPLED, BASE_IID, BASE_WARMUP)  # the order tables print


@dataclasses.dataclass(frozen=True)
class EpisodeNoise:
    """A noise source drawn per evaluation episode: `make(k)` builds episode k's own NoiseSource,
    which is called with that episode's observation alone (a batch of one), once per query."""

    make: Callable[[int], NoiseSource]


def iid_episode_noise(steering: Steering, seed: int, stream: int) -> EpisodeNoise:
    """The base policy's i.i.d. N(0, I) noise, episode k from generator (seed, stream, k)."""
    return EpisodeNoise(lambda k: steering.iid_source(np.random.default_rng([seed, stream, k])))


def warmup_episode_noise(steering: Steering, seed: int, stream: int) -> EpisodeNoise:
    """The warm-up latent family, episode k from generator (seed, stream, k)."""
    return EpisodeNoise(lambda k: steering.warmup_source(np.random.default_rng([seed, stream, k])))


def mode_episode_noise(
    steering: Steering, agent: Any, first_q: dict[int, float] | None = None
) -> EpisodeNoise:
    """The actor's distribution mode (deterministic), one episode per agent call. With a dict
    `first_q`, episode k also records there the critic's Q(s_0, z_0) of its first query
    (`agent.latent_q`; a re-run episode overwrites its entry), for `critic_calibration`."""
    if first_q is None:
        return EpisodeNoise(lambda k: steering.agent_source(agent.mode_latents))

    def make(k: int) -> NoiseSource:
        first = [True]

        def act(obs: AgentObservation) -> np.ndarray:
            latents = agent.mode_latents(obs)
            if first[0]:
                first[0] = False
                first_q[k] = float(np.asarray(agent.latent_q(obs, latents)).reshape(-1)[0])
            return latents

        return steering.agent_source(act)

    return EpisodeNoise(make)


def sampled_episode_noise(steering: Steering, agent: Any) -> EpisodeNoise:
    """The actor's sampled latents, episode k with PRNG key fold_in(agent.rng, k): the same at
    every evaluation of the same agent (a checkpoint reproduces them), and the agent's own key
    is not advanced."""

    def make(k: int) -> NoiseSource:
        holder = {"agent": agent.replace(rng=jax.random.fold_in(agent.rng, k))}

        def act(obs: AgentObservation) -> np.ndarray:
            latents, holder["agent"] = holder["agent"].sample_latents(obs)
            return latents

        return steering.agent_source(act)

    return EpisodeNoise(make)


def _round_source(source: NoiseSource | EpisodeNoise, episodes: Sequence[int]) -> NoiseSource:
    """The batched source of one round of episodes (their indices in the evaluation's seeds);
    rows past them (idle envs padding the batch) repeat the last episode's draw."""
    if not isinstance(source, EpisodeNoise):
        return source
    own = [source.make(k) for k in episodes]

    def batched(obs: AgentObservation) -> tuple[np.ndarray | None, np.ndarray]:
        rows = [src({key: v[j : j + 1] for key, v in obs.items()}) for j, src in enumerate(own)]
        pad = len(obs["state"]) - len(rows)
        latents = None
        if rows[0][0] is not None:
            latents = np.concatenate([r[0] for r in rows] + [rows[-1][0]] * pad)
        return latents, np.concatenate([r[1] for r in rows] + [rows[-1][1]] * pad)

    return batched


def discounted_return(episode: Episode, discount: float) -> float:
    """The agent's return from the episode's first query, each query's reward discounted by
    `discount` (per env step) to the power of the env steps before it, as the buffer's
    per-transition discounts do. An episode cut by its time limit is summed only to there."""
    steps_before = np.concatenate([[0], np.cumsum(episode.query_steps)[:-1]])
    rewards = np.asarray(episode.agent_rewards, np.float64)
    return float(np.sum(rewards * float(discount) ** steps_before)) if rewards.size else 0.0


def critic_calibration(
    episodes: Sequence[Episode], first_q: dict[int, float], discount: float
) -> dict[str, float]:
    """How the critic's value of the actor's own choice compares with what followed, over the
    episodes (by index) whose first-query Q is in `first_q`:
      critic_q_start        mean Q(s_0, z_0) (heads reduced as the actor maximises them),
      discounted_return     mean discounted agent return from s_0 (`discounted_return`),
      critic_q_error        their difference: > 0 means the critic promised more than came.
    An episode that ends by its time limit is summed to there while the critic bootstraps past
    it (mask 1), so with rewards <= 0 (the step penalty) the return is an upper bound on the
    policy's value and a positive error is overestimation for certain; with the 0 / +1 reward
    a failed episode's return of 0 is its value."""
    kept = [k for k, e in enumerate(episodes) if k in first_q and not e.discarded]
    if not kept:
        return {}
    q = float(np.mean([first_q[k] for k in kept]))
    ret = float(np.mean([discounted_return(episodes[k], discount) for k in kept]))
    return {"critic_q_start": q, "discounted_return": ret, "critic_q_error": q - ret}


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """RLinf's per-episode env metrics, averaged over episodes: `env/episode_len` (env steps),
    `env/return` (the env's reward summed over the episode: the same convention as every
    `avg_return`, so a failed LIBERO episode is 0 in both), `env/agent_return` (the agent's reward
    summed over the episode's queries, see `run_episodes(step_penalty=...)`: -(queries) for a
    failure with the step penalty), `env/success_once` (succeeded at any step)."""
    return {
        "env/episode_len": float(np.mean([e.length for e in episodes])),
        "env/return": float(np.mean([e.env_return for e in episodes])),
        "env/agent_return": float(np.mean([e.agent_return for e in episodes])),
        "env/success_once": float(np.mean([e.success for e in episodes])),
    }


def headline_metric(env_spec: Any) -> str:
    """What a run is judged by (its closing table, its best actor): the success rate, or the
    average return for an env whose spec says it has no success (e.g. Gym locomotion)."""
    return "success_rate" if getattr(env_spec, "has_success", True) else "avg_return"


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
    source: NoiseSource | EpisodeNoise,
    seeds: Sequence[int],
    *,
    num_video_episodes: int = 0,
    timer: Timer | None = None,
    step_penalty: bool = True,
    on_chunk: Callable[[int, int, int], bool | None] | None = None,
) -> EvalResult:
    """Run `len(seeds)` episodes in rounds of `vec_env.num_envs`, recording videos of the first
    `num_video_episodes` (agent-view frames, only in the first round). An `EpisodeNoise` source
    gives each episode its own noise stream (see the module docstring); a plain NoiseSource is
    called for the whole round.

    An episode lost to an env worker failure (`Episode.discarded`) is re-run with its seed, up to
    `_EVAL_RERUNS` times, so the metrics cover the same fixed seeds; one still lost after that is
    left out and counted in the metric `discarded_episodes` (present only then).
    on_chunk: see `run_episodes` (progress only: its return value is ignored here, since an
    evaluation cut short would not cover its fixed seeds; raise to abandon one)."""
    progress = None if on_chunk is None else (lambda *counts: on_chunk(*counts) and False)
    num_envs = int(vec_env.num_envs)
    episodes: list[Episode] = []
    for start in range(0, len(seeds), num_envs):
        round_seeds = list(seeds[start : start + num_envs])
        episodes += run_episodes(
            vec_env,
            steering,
            _round_source(source, range(start, start + len(round_seeds))),
            round_seeds,
            discount=1.0,
            store_transitions=False,
            step_penalty=step_penalty,
            record_frames=start == 0 and num_video_episodes > 0,
            timer=timer,
            on_chunk=progress,
        )
    for _ in range(_EVAL_RERUNS):
        lost = [k for k, e in enumerate(episodes) if e.discarded]
        for start in range(0, len(lost), num_envs):
            batch = lost[start : start + num_envs]
            rerun = run_episodes(
                vec_env,
                steering,
                _round_source(source, batch),
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
