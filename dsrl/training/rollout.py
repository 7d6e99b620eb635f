"""Steered rollouts: latent -> noise -> base-policy plan -> executed chunk -> one transition.

A *plan* is the base policy's whole output for one query, (H, A) per env; the *chunk* is the part
of it the env executes, its first `query_freq` actions.

One *query* is one decision of the RL agent. For `num_envs` parallel envs it costs:

  1. one batched agent call (`select` below) on the agent observations ("pixels", "state");
  2. one batched `base_policy.sample_actions(observation, noise)` for all envs;
  3. one `VectorEnv.step_chunk` executing the first `query_freq` actions of every plan (each
     worker runs its chunk locally, rendering only at its end).

Each env contributes ONE transition per query (DSRL's decision-level MDP). With the env's
`spec.reward_convention` "success" (LIBERO, Aloha, real, demo):
  reward -1 per query, 0 on the query in which the task succeeded (mask 0: a true terminal);
  with `step_penalty=False` (RLinf's `use_step_penalty: False`) 0 per query and +1 on success;
  a timeout keeps mask 1 (the critic still bootstraps); a termination without success (not
  produced by our envs, but allowed by the Env contract) gets reward -1 and mask 0;
  discount = gamma ** steps_executed, the true length of a final partial chunk.
With "env_sum" (the authors' Gym and Robomimic release): reward = the env's own rewards summed
over the executed chunk; mask 0 only when the env terminates (a success does not end the episode).

Nothing here knows about a specific simulator or robot: the training loop, evaluation and the
real-robot launcher all go through `run_episodes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from dsrl.agents import spec as transition_keys
from dsrl.agents.spec import TransitionSpec
from dsrl.envs.libero_suite import TASK_ID_KEY
from dsrl.envs.vector import video_frame
from dsrl.steering import AgentObservation, NoiseSource, Steering
from dsrl.training.aliases import query_with_aliases

Observation = dict[str, Any]
AGENT_KEYS = ("pixels", "state")  # "pixels" is absent for a state-based env
REWARD_CONVENTIONS = ("success", "env_sum")


class Timer(Protocol):
    """Accumulates wall time per category ("env", "base_policy", "agent", ...)."""

    def section(self, name: str) -> contextlib.AbstractContextManager: ...


class NullTimer:
    """A Timer that measures nothing."""

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        yield


@dataclasses.dataclass
class Episode:
    """One finished episode of one env."""

    transitions: list[dict[str, Any]]  # one per query, empty when not stored
    env_return: float  # sum of the env's own rewards
    max_reward: float
    success: bool
    length: int  # env steps executed
    num_queries: int
    # The return of the agent's reward (the per-query rewards above), stored or not.
    agent_return: float = 0.0
    frames: np.ndarray | None = None  # uint8 (T, H, W, 3) agent-view frames when recorded
    # The env's worker stalled or died mid-episode (ChunkResult.worker_restarted): the episode
    # is incomplete, its transitions were dropped, and it is neither a success nor a failure.
    discarded: bool = False
    # The env's "task_id" observation (dsrl.envs.libero_suite), None for a single-task env.
    task_id: int | None = None


def agent_observation(obs: Observation) -> AgentObservation:
    """The RL agent's view of one env observation: "state", and "pixels" when the env has them."""
    if "state" not in obs:
        raise KeyError(
            "env observation lacks the agent key 'state'; an Env must return 'state' (float32 "
            f"(d,)) and, for a pixel agent, 'pixels' (uint8 H,W,C). Got keys {sorted(obs)}."
        )
    return {k: obs[k] for k in AGENT_KEYS if k in obs}


def stack_observations(observations: Sequence[Observation]) -> Observation:
    """Batch a list of observation dicts along a new leading axis (strings become lists)."""
    first = observations[0]
    out: Observation = {}
    for key, value in first.items():
        column = [o[key] for o in observations]
        if isinstance(value, dict):
            out[key] = stack_observations(column)
        elif isinstance(value, str | bytes):
            out[key] = list(column)
        else:
            out[key] = np.stack([np.asarray(v) for v in column])
    return out


def _frames_to_rgb(frames: Any) -> np.ndarray | None:
    if frames is None:
        return None
    frames = np.asarray(frames)
    if frames.ndim == 3:  # a single frame
        frames = frames[None]
    if frames.size == 0:
        return None
    return np.ascontiguousarray(frames[..., :3]).astype(np.uint8, copy=False)


def run_episodes(
    vec_env: Any,
    steering: Steering,
    source: NoiseSource,
    seeds: Sequence[int | None],
    *,
    discount: float,
    store_transitions: bool = True,
    transition_spec: TransitionSpec = TransitionSpec(),
    record_frames: bool = False,
    timer: Timer | None = None,
    step_penalty: bool = True,
    alias_rng: np.random.Generator | None = None,
    on_chunk: Callable[[int, int, int], bool | None] | None = None,
) -> list[Episode]:
    """Run one episode in each of the first `len(seeds)` envs of `vec_env`, in lock-step.

    Every query is ONE batched agent call, ONE batched base-policy call over all `num_envs`
    envs (finished envs are padded with their last observation so that jitted policies see one
    batch shape), and ONE `step_chunk`. Returns the episodes in the order of `seeds`; an episode
    whose env worker was restarted mid-way comes back `discarded`, with no transitions.

    Each stored transition holds `dsrl.agents.spec.COMMON_KEYS` plus what `transition_spec` asks
    for: `action_chunks` adds the executed "action_chunks" (query_freq, robot action dim) and the
    "noise" (H, D) that produced them; `policy_observation_keys` adds those base-policy
    observation keys to the stored "observations" / "next_observations"; `num_aliases` K > 0
    adds K (latent, executed chunk) aliases per transition, drawn from `alias_rng` and computed
    in the same base-policy call as the executed chunk (`dsrl.training.aliases`).

    step_penalty: the agent's reward is -1 per query and 0 on success (the reference); False:
    0 per query and +1 on success (RLinf's `use_step_penalty: False`, reward_coef 1).

    on_chunk(env_steps, queries, episodes_ended): called after every chunk with the env steps it
    executed (all envs), its queries (= transitions) and the episodes it ended, for progress; a True return stops the rollout
    there, the episodes still running ending as truncated (a graceful stop keeps their data).
    """
    timer = timer or NullTimer()
    num_aliases = int(transition_spec.num_aliases) if store_transitions else 0
    if num_aliases and alias_rng is None:
        raise ValueError("a transition spec with num_aliases > 0 needs alias_rng=<Generator>")
    num_envs = int(vec_env.num_envs)
    n = len(seeds)
    if not 1 <= n <= num_envs:
        raise ValueError(f"got {n} seeds for a vector env with {num_envs} envs")
    max_steps = int(vec_env.spec.max_episode_steps)
    convention = getattr(vec_env.spec, "reward_convention", "success")
    if convention not in REWARD_CONVENTIONS:
        raise ValueError(
            f"{vec_env.spec.name}: reward_convention {convention!r} is not one of "
            f"{REWARD_CONVENTIONS}; fix the env's EnvSpec"
        )
    env_sum = convention == "env_sum"
    all_seeds = list(seeds) + [None] * (num_envs - n)
    with timer.section("env"):
        obs_list = list(vec_env.reset(all_seeds))
    task_ids = [obs_list[i].get(TASK_ID_KEY) for i in range(n)]
    active = np.zeros(num_envs, dtype=bool)
    active[:n] = True
    transitions: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    returns = np.zeros(n)
    agent_returns = np.zeros(n)
    penalty = -1.0 if step_penalty else 0.0
    max_rewards = np.full(n, -np.inf)
    successes = np.zeros(n, dtype=bool)
    lengths = np.zeros(n, dtype=np.int64)
    queries = np.zeros(n, dtype=np.int64)
    discarded = np.zeros(n, dtype=bool)
    frames: list[list[np.ndarray]] = [[] for _ in range(n)]
    if record_frames:
        for i in range(n):
            frames[i].append(video_frame(obs_list[i], vec_env.spec.video_key))

    stopped = False
    while active.any() and not stopped:
        agent_obs = stack_observations([agent_observation(o) for o in obs_list])
        with timer.section("agent"):
            latents, noise = source(agent_obs)
        noise = np.asarray(noise, dtype=np.float32)
        if store_transitions and latents is None:
            raise ValueError("store_transitions=True needs a noise source that returns latents")
        with timer.section("base_policy"):
            policy_obs = stack_observations(obs_list)
            if num_aliases:  # the aliases' chunks come from the same base-policy call
                plans, alias_latents, alias_chunks = query_with_aliases(
                    steering,
                    policy_obs,
                    noise,
                    alias_rng,
                    num_aliases,
                    transition_spec.clip_aliases,
                )
            else:
                plans = steering.base_policy.sample_actions(policy_obs, noise)
        executed = np.asarray(plans, dtype=np.float32)[:, : steering.query_freq]
        with timer.section("env"):
            kwargs = {}
            if getattr(vec_env, "smoothing", None) is not None:  # the plan past this chunk
                kwargs["tails"] = np.asarray(plans, dtype=np.float32)[:, steering.query_freq :]
            results = vec_env.step_chunk(
                executed, active=active.copy(), record_frames=record_frames, **kwargs
            )
        chunk_steps, chunk_queries, chunk_ended = 0, 0, 0
        for i in np.flatnonzero(active[:n]):
            res = results[i]
            if getattr(res, "worker_restarted", False):
                # Half an episode from a dead worker: training on it would teach that the chunk
                # after the failure never came. obs_list[i] keeps padding the batch.
                discarded[i], active[i] = True, False
                transitions[i], frames[i] = [], []
                continue
            steps = int(res.steps_executed)
            chunk_steps += steps
            chunk_queries += 1
            env_rewards = np.asarray(res.rewards, dtype=np.float64).reshape(-1)
            success = bool(res.success)
            lengths[i] += steps
            queries[i] += 1
            returns[i] += float(env_rewards.sum())
            if env_rewards.size:
                max_rewards[i] = max(max_rewards[i], float(env_rewards.max()))
            terminated = bool(res.terminated) or (success and not env_sum)
            # A worker that never reports truncation still cannot run past the spec's limit.
            truncated = bool(res.truncated) or lengths[i] >= max_steps
            done = terminated or truncated
            successes[i] |= success
            if env_sum:
                reward = float(env_rewards.sum())
            else:
                reward = penalty + (1.0 if success else 0.0)
            agent_returns[i] += reward
            if store_transitions:
                transition = {
                    transition_keys.OBSERVATIONS: agent_observation(obs_list[i]),
                    transition_keys.LATENTS: latents[i],
                    transition_keys.REWARDS: np.float32(reward),
                    transition_keys.MASKS: np.float32(0.0 if terminated else 1.0),
                    transition_keys.DISCOUNTS: np.float32(discount**steps),
                    transition_keys.NEXT_OBSERVATIONS: agent_observation(res.obs),
                }
                for key in transition_spec.policy_observation_keys:
                    transition[transition_keys.OBSERVATIONS][key] = obs_list[i][key]
                    transition[transition_keys.NEXT_OBSERVATIONS][key] = res.obs[key]
                if transition_spec.action_chunks:
                    transition[transition_keys.ACTION_CHUNKS] = executed[i]
                    transition[transition_keys.NOISE] = noise[i]
                if num_aliases:
                    transition[transition_keys.ALIAS_LATENTS] = alias_latents[i]
                    transition[transition_keys.ALIAS_CHUNKS] = alias_chunks[i]
                transitions[i].append(transition)
            if record_frames:
                chunk_frames = _frames_to_rgb(res.frames)
                if chunk_frames is not None:
                    frames[i].extend(chunk_frames)
            obs_list[i] = res.obs
            if done:
                active[i] = False
                chunk_ended += 1
        if on_chunk is not None:
            stopped = bool(on_chunk(chunk_steps, chunk_queries, chunk_ended))

    return [
        Episode(
            transitions=transitions[i],
            env_return=float(returns[i]),
            max_reward=float(max_rewards[i]) if np.isfinite(max_rewards[i]) else 0.0,
            success=bool(successes[i]) and not discarded[i],
            length=int(lengths[i]),
            num_queries=int(queries[i]),
            agent_return=float(agent_returns[i]),
            frames=np.stack(frames[i]).astype(np.uint8) if record_frames and frames[i] else None,
            discarded=bool(discarded[i]),
            task_id=None if task_ids[i] is None else int(task_ids[i]),
        )
        for i in range(n)
    ]
