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
    # Per query: the agent's reward and the env steps its chunk executed (stored or not), so a
    # discounted return can be computed afterwards (evaluation.discounted_return).
    agent_rewards: tuple[float, ...] = ()
    query_steps: tuple[int, ...] = ()


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


@dataclasses.dataclass(frozen=True)
class _Rules:
    """How one executed chunk becomes a transition (fixed for a rollout)."""

    env_sum: bool  # the env's own rewards summed ("env_sum") vs the success rule ("success")
    penalty: float  # the success rule's reward per query: -1 (step penalty) or 0
    discount: float
    max_steps: int
    store: bool
    spec: TransitionSpec
    num_aliases: int


@dataclasses.dataclass
class _Query:
    """One batched decision: latents -> noise -> plans; `executed` is each plan's chunk."""

    latents: np.ndarray | None
    noise: np.ndarray
    plans: np.ndarray  # float32 (N, H, A)
    executed: np.ndarray  # float32 (N, query_freq, A)
    alias_latents: Any = None
    alias_chunks: Any = None


def _reward_rule(spec: Any) -> bool:
    """True for "env_sum"; refuses an unknown convention."""
    convention = getattr(spec, "reward_convention", "success")
    if convention not in REWARD_CONVENTIONS:
        raise ValueError(
            f"{spec.name}: reward_convention {convention!r} is not one of "
            f"{REWARD_CONVENTIONS}; fix the env's EnvSpec"
        )
    return convention == "env_sum"


def _query(
    steering: Steering,
    source: NoiseSource,
    obs_list: Sequence[Observation],
    rules: _Rules,
    alias_rng: np.random.Generator | None,
    timer: Timer,
) -> _Query:
    agent_obs = stack_observations([agent_observation(o) for o in obs_list])
    with timer.section("agent"):
        latents, noise = source(agent_obs)
    noise = np.asarray(noise, dtype=np.float32)
    if rules.store and latents is None:
        raise ValueError("store_transitions=True needs a noise source that returns latents")
    alias_latents = alias_chunks = None
    with timer.section("base_policy"):
        policy_obs = stack_observations(obs_list)
        if rules.num_aliases:  # the aliases' chunks come from the same base-policy call
            plans, alias_latents, alias_chunks = query_with_aliases(
                steering,
                policy_obs,
                noise,
                alias_rng,
                rules.num_aliases,
                rules.spec.clip_aliases,
            )
        else:
            plans = steering.base_policy.sample_actions(policy_obs, noise)
    plans = np.asarray(plans, dtype=np.float32)
    executed = plans[:, : steering.query_freq]
    return _Query(latents, noise, plans, executed, alias_latents, alias_chunks)


def _transition(
    query: _Query,
    i: int,
    obs: Observation,
    res: Any,
    reward: float,
    terminated: bool,
    rules: _Rules,
) -> dict[str, Any]:
    """The stored transition of env i for one query (see `run_episodes` for its fields)."""
    transition = {
        transition_keys.OBSERVATIONS: agent_observation(obs),
        transition_keys.LATENTS: query.latents[i],
        transition_keys.REWARDS: np.float32(reward),
        transition_keys.MASKS: np.float32(0.0 if terminated else 1.0),
        transition_keys.DISCOUNTS: np.float32(rules.discount ** int(res.steps_executed)),
        transition_keys.NEXT_OBSERVATIONS: agent_observation(res.obs),
    }
    for key in rules.spec.policy_observation_keys:
        transition[transition_keys.OBSERVATIONS][key] = obs[key]
        transition[transition_keys.NEXT_OBSERVATIONS][key] = res.obs[key]
    if rules.spec.action_chunks:
        transition[transition_keys.ACTION_CHUNKS] = query.executed[i]
        transition[transition_keys.NOISE] = query.noise[i]
    if rules.num_aliases:
        transition[transition_keys.ALIAS_LATENTS] = query.alias_latents[i]
        transition[transition_keys.ALIAS_CHUNKS] = query.alias_chunks[i]
    return transition


def _step_chunk(
    vec_env: Any, query: _Query, active: np.ndarray, record_frames: bool, query_freq: int
) -> Any:
    kwargs = {}
    if getattr(vec_env, "smoothing", None) is not None:  # the plan past this chunk
        kwargs["tails"] = query.plans[:, query_freq:]
    return vec_env.step_chunk(
        query.executed, active=active.copy(), record_frames=record_frames, **kwargs
    )


class _Tally:
    """Per-env bookkeeping of the episodes a rollout runs (the first n envs)."""

    def __init__(self, n: int, task_ids: list[Any], rules: _Rules, record_frames: bool):
        self.rules, self.record_frames, self.task_ids = rules, record_frames, task_ids
        self.transitions: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.frames: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.returns = np.zeros(n)
        self.max_rewards = np.full(n, -np.inf)
        self.successes = np.zeros(n, dtype=bool)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.discarded = np.zeros(n, dtype=bool)
        # Per query (so the episode's query count and agent return are derived from them).
        self.agent_rewards: list[list[float]] = [[] for _ in range(n)]
        self.query_steps: list[list[int]] = [[] for _ in range(n)]

    def add(self, i: int, obs: Observation, res: Any, query: _Query) -> bool:
        """Books env i's chunk result; True when its episode is over."""
        rules = self.rules
        if getattr(res, "worker_restarted", False):
            # Half an episode from a dead worker: training on it would teach that the chunk
            # after the failure never came. The caller's obs keeps padding the batch.
            self.discarded[i] = True
            self.transitions[i], self.frames[i] = [], []
            return True
        steps = int(res.steps_executed)
        env_rewards = np.asarray(res.rewards, dtype=np.float64).reshape(-1)
        success = bool(res.success)
        self.lengths[i] += steps
        self.returns[i] += float(env_rewards.sum())
        if env_rewards.size:
            self.max_rewards[i] = max(self.max_rewards[i], float(env_rewards.max()))
        terminated = bool(res.terminated) or (success and not rules.env_sum)
        # A worker that never reports truncation still cannot run past the spec's limit.
        truncated = bool(res.truncated) or self.lengths[i] >= rules.max_steps
        self.successes[i] |= success
        if rules.env_sum:
            reward = float(env_rewards.sum())
        else:
            reward = rules.penalty + (1.0 if success else 0.0)
        self.agent_rewards[i].append(reward)
        self.query_steps[i].append(steps)
        if rules.store:
            self.transitions[i].append(_transition(query, i, obs, res, reward, terminated, rules))
        if self.record_frames:
            chunk_frames = _frames_to_rgb(res.frames)
            if chunk_frames is not None:
                self.frames[i].extend(chunk_frames)
        return terminated or truncated

    def episode(self, i: int) -> Episode:
        frames = self.frames[i]
        task_id = self.task_ids[i]
        return Episode(
            transitions=self.transitions[i],
            env_return=float(self.returns[i]),
            max_reward=float(self.max_rewards[i]) if np.isfinite(self.max_rewards[i]) else 0.0,
            success=bool(self.successes[i]) and not self.discarded[i],
            length=int(self.lengths[i]),
            num_queries=len(self.query_steps[i]),
            agent_return=float(sum(self.agent_rewards[i])),
            frames=np.stack(frames).astype(np.uint8) if self.record_frames and frames else None,
            discarded=bool(self.discarded[i]),
            task_id=None if task_id is None else int(task_id),
            agent_rewards=tuple(self.agent_rewards[i]),
            query_steps=tuple(self.query_steps[i]),
        )


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
    executed (all envs), its queries (= transitions) and the episodes it ended, for progress; a
    True return stops the rollout there, the episodes still running ending as truncated (a
    graceful stop keeps their data).
    """
    timer = timer or NullTimer()
    num_aliases = int(transition_spec.num_aliases) if store_transitions else 0
    if num_aliases and alias_rng is None:
        raise ValueError("a transition spec with num_aliases > 0 needs alias_rng=<Generator>")
    num_envs = int(vec_env.num_envs)
    n = len(seeds)
    if not 1 <= n <= num_envs:
        raise ValueError(f"got {n} seeds for a vector env with {num_envs} envs")
    rules = _Rules(
        env_sum=_reward_rule(vec_env.spec),
        penalty=-1.0 if step_penalty else 0.0,
        discount=discount,
        max_steps=int(vec_env.spec.max_episode_steps),
        store=store_transitions,
        spec=transition_spec,
        num_aliases=num_aliases,
    )
    with timer.section("env"):
        obs_list = list(vec_env.reset(list(seeds) + [None] * (num_envs - n)))
    tally = _Tally(n, [obs_list[i].get(TASK_ID_KEY) for i in range(n)], rules, record_frames)
    if record_frames:
        tally.frames = [[video_frame(obs_list[i], vec_env.spec.video_key)] for i in range(n)]
    active = np.arange(num_envs) < n

    stopped = False
    while active.any() and not stopped:
        query = _query(steering, source, obs_list, rules, alias_rng, timer)
        with timer.section("env"):
            results = _step_chunk(vec_env, query, active, record_frames, steering.query_freq)
        chunk_steps, chunk_queries, chunk_ended = 0, 0, 0
        for i in np.flatnonzero(active[:n]):
            res = results[i]
            done = tally.add(i, obs_list[i], res, query)
            if tally.discarded[i]:
                active[i] = False
                continue
            chunk_steps += int(res.steps_executed)
            chunk_queries += 1
            obs_list[i] = res.obs
            if done:
                active[i] = False
                chunk_ended += 1
        if on_chunk is not None:
            stopped = bool(on_chunk(chunk_steps, chunk_queries, chunk_ended))

    return [tally.episode(i) for i in range(n)]
