"""The trajectory-wise alternating DSRL loop (one code path for simulation and real robots).

    repeat until `max_steps` gradient steps:
      collect one episode in each of `num_envs` envs with the current actor (random actions of
        the training family while the buffer holds <= `start_online_updates` transitions),
      insert their transitions (one per base-policy query), end the trajectories,
      then run `transitions x multi_grad_step` gradient steps in blocks of K = `update_block`
        (`buffer.sample(B, K)` -> `agent.update`, one host-to-device transfer per block).

Like the reference, `max_steps`, `eval_interval`, `log_interval` and `checkpoint_interval` count
GRADIENT steps (W&B's step axis); env steps and transitions are tracked alongside. Evaluation runs
at step 0 (actor and base policy) and whenever the gradient step crosses a multiple of
`eval_interval`.

Resuming is exact: a checkpoint holds the agent (with its PRNG key), the buffer (with its RNG
state) and the counters below; every other random draw (reset seeds, warm-up actions) is derived
from `(seed, counter)`, so a resumed run continues the same streams. Gradient steps owed to
collected data but not yet run are a counter too (`pending_grad_steps`), so a run killed between
two update blocks resumes in the middle of its update phase.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from dsrl.agents import spec as transition_keys
from dsrl.agents.spec import TransitionSpec
from dsrl.envs.vector import VectorEnvError
from dsrl.steering import Steering
from dsrl.training.evaluation import (
    EvalResult,
    episode_metrics,
    eval_seeds,
    evaluate,
    iid_episode_noise,
    mode_episode_noise,
    sampled_episode_noise,
    warmup_episode_noise,
)
from dsrl.training.rollout import AGENT_KEYS, Episode, run_episodes

log = logging.getLogger(__name__)

TIME_CATEGORIES = ("env", "base_policy", "agent", "update", "io")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Loop settings (names follow the reference's flags)."""

    seed: int = 0
    max_steps: int = 500_000  # gradient-step budget, as in the reference
    max_env_steps: int = -1  # optional second budget; -1: none
    batch_size: int = 256
    multi_grad_step: int = 20  # gradient steps per collected transition (UTD)
    update_block: int = 0  # K gradient steps per `agent.update` call; 0: = multi_grad_step
    start_online_updates: int = 500  # updates start once len(buffer) > this (transitions)
    start_online_trajs: int = 0  # ... and at least this many trajectories were collected
    first_update_grad_steps: int = 0  # extra gradient steps at the first update (real: 5000)
    discount: float = 0.999  # per env step; a transition's discount is discount**steps
    # Reward per query: -1, 0 on success (True, the reference); 0, +1 on success (False).
    use_step_penalty: bool = True
    eval_interval: int = 10_000
    eval_episodes: int = 10  # 0: no control evaluation (e.g. a real robot)
    eval_base_every_eval: bool = False  # also evaluate the base policy at every eval
    # The base policy under the warm-up noise family too (off where each eval episode is costly).
    eval_base_warmup: bool = True
    # The actor's sampled latents too ("evaluation/"), next to its mode ("evaluation_mode/");
    # off halves the evaluation's env steps where each episode is costly (the videos then come
    # from the mode's episodes).
    eval_sampled: bool = True
    num_video_episodes: int = 1
    video_fps: int = 50
    log_interval: int = 500
    checkpoint_interval: int = -1  # -1: only at the end (when a checkpointer is given)
    final_eval: bool = True  # evaluate once more at the end unless the last step was evaluated
    progress: bool = True

    def __post_init__(self):
        def need(ok: bool, name: str, rule: str, fix: str) -> None:
            if not ok:
                raise ValueError(
                    f"{name} must be {rule}, got {getattr(self, name)!r}: {fix} (--{name})"
                )

        for name in ("batch_size", "multi_grad_step", "eval_interval", "log_interval"):
            need(_is_int(getattr(self, name), 1), name, "a positive integer", "pass a count >= 1")
        need(_is_int(self.max_steps, 0), "max_steps", ">= 0", "the gradient-step budget, e.g. 1e6")
        need(
            _is_int(self.max_env_steps, -1),
            "max_env_steps",
            ">= -1",
            "an env-step budget, or -1 for none",
        )
        for name in ("update_block", "start_online_updates", "start_online_trajs"):
            need(_is_int(getattr(self, name), 0), name, ">= 0", "pass a count >= 0")
        need(_is_int(self.first_update_grad_steps, 0), "first_update_grad_steps", ">= 0", "or 0")
        need(
            _is_int(self.eval_episodes, 0),
            "eval_episodes",
            ">= 0",
            "pass 0 to turn control evaluation off, or a number of episodes",
        )
        need(_is_int(self.num_video_episodes, 0), "num_video_episodes", ">= 0", "or 0: no videos")
        need(_is_int(self.video_fps, 1), "video_fps", "a positive integer", "e.g. 10")
        need(
            isinstance(self.discount, int | float) and 0.0 < self.discount <= 1.0,
            "discount",
            "in (0, 1]",
            "e.g. 0.99",
        )
        need(
            _is_int(self.checkpoint_interval, 1) or self.checkpoint_interval == -1,
            "checkpoint_interval",
            "a positive gradient-step count or -1",
            "-1 checkpoints only at the end",
        )

    @property
    def block(self) -> int:
        return self.update_block or self.multi_grad_step


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum


@dataclasses.dataclass(frozen=True)
class LoopState:
    """The loop's counters; everything the loop needs besides agent and buffer to resume."""

    grad_steps: int = 0
    env_steps: int = 0
    num_online_samples: int = 0  # transitions collected (= base-policy queries)
    num_online_trajs: int = 0
    pending_grad_steps: int = 0  # owed to collected data, not yet run
    last_eval_step: int = -1
    updates_started: int = 0

    def to_tree(self) -> dict[str, int]:
        return {k: int(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> LoopState:
        return cls(**{f.name: int(np.asarray(tree[f.name])) for f in dataclasses.fields(cls)})


class Stopwatch:
    """Wall time per category; whatever is not inside a section is loop overhead ("other")."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(TIME_CATEGORIES, 0.0)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        total = max(time.perf_counter() - self.start, 1e-9)
        out = {}
        for name, sec in self.seconds.items():
            out[f"time/{name}_s"] = sec
            out[f"time/{name}_frac"] = sec / total
        other = max(total - sum(self.seconds.values()), 0.0)
        out["time/other_s"] = other
        out["time/other_frac"] = other / total
        out["time/total_s"] = total
        return out


@dataclasses.dataclass
class TrainResult:
    agent: Any
    state: LoopState
    evaluations: list[dict[str, float]]  # every logged eval row (with step and env_steps)
    time: dict[str, float]


def train_seeds(seed: int, first_traj: int, count: int) -> list[int]:
    """Reset seeds of training trajectories `first_traj .. first_traj + count - 1`."""
    return [
        int(np.random.SeedSequence([seed, 0, first_traj + j]).generate_state(1)[0])
        for j in range(count)
    ]


def example_transition(
    observation_spec: dict[str, tuple[tuple[int, ...], Any]],
    steering: Steering,
    transition_spec: TransitionSpec = TransitionSpec(),
) -> dict[str, Any]:
    """One zero transition with the layout `run_episodes` stores (for `ReplayBuffer(...)`).

    observation_spec: {key: (shape, dtype)} of the env's agent observation ("pixels", "state")
    and of every base-policy key in `transition_spec.policy_observation_keys`; the stored
    observations hold exactly the agent keys plus those. The "latents" have the steering's
    `latent_dim`; with `transition_spec.action_chunks`, the executed "action_chunks"
    (query_freq, robot action dim) and the "noise" (H, D) are the steering's shapes too, and so
    are the `transition_spec.num_aliases` aliases ("alias_latents", "alias_chunks")."""
    # "pixels" only where the env has them (a state-based env's agent reads "state" alone).
    agent_keys = [k for k in AGENT_KEYS if k in observation_spec or k == "state"]
    keys = (*agent_keys, *transition_spec.policy_observation_keys)
    missing = [k for k in keys if k not in observation_spec]
    if missing:
        raise ValueError(
            f"example_transition: observation_spec lacks {missing} (it has "
            f"{sorted(observation_spec)}); pass the env's observation spec merged with the base "
            "policy's observation keys the learner asks to store."
        )
    obs = {k: np.zeros(observation_spec[k][0], dtype=observation_spec[k][1]) for k in keys}
    transition = {
        transition_keys.OBSERVATIONS: obs,
        transition_keys.LATENTS: np.zeros((steering.latent_dim,), np.float32),
        transition_keys.REWARDS: np.float32(0),
        transition_keys.MASKS: np.float32(0),
        transition_keys.DISCOUNTS: np.float32(0),
        transition_keys.NEXT_OBSERVATIONS: {k: v.copy() for k, v in obs.items()},
    }
    if transition_spec.action_chunks:
        chunk_shape = (steering.query_freq, int(steering.base_policy.action_dim))
        transition[transition_keys.ACTION_CHUNKS] = np.zeros(chunk_shape, np.float32)
        transition[transition_keys.NOISE] = np.zeros(
            tuple(steering.noise_param.noise_shape), np.float32
        )
    transition |= example_aliases(steering, transition_spec.num_aliases)
    return transition


def example_aliases(steering: Steering, num_aliases: int) -> dict[str, np.ndarray]:
    """The zero alias fields of one transition (none for K = 0): K latents and K executed
    chunks, stored as float16 (see docs/dsrl_na.md for the bytes per transition)."""
    if not num_aliases:
        return {}
    dtype = np.dtype(transition_keys.ALIAS_DTYPE)
    chunk_shape = (steering.query_freq, int(steering.base_policy.action_dim))
    return {
        transition_keys.ALIAS_LATENTS: np.zeros((num_aliases, steering.latent_dim), dtype),
        transition_keys.ALIAS_CHUNKS: np.zeros((num_aliases, *chunk_shape), dtype),
    }


def check_buffer_capacity(capacity: int, config: LoopConfig) -> None:
    if capacity <= config.start_online_updates:
        raise ValueError(
            f"replay buffer capacity {capacity} <= start_online_updates "
            f"{config.start_online_updates}: updates would never start; raise the capacity "
            "(--config.replay.capacity) or lower start_online_updates."
        )


def _crossed(prev: int, new: int, interval: int) -> bool:
    return interval > 0 and new // interval > prev // interval


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


class _Trainer:
    """One run of the loop; holds the mutable bookkeeping so `train` stays readable."""

    def __init__(
        self, *, env, eval_env, steering, agent, buffer, config, logger, checkpointer, spec
    ):
        self.env = env
        self.eval_env = eval_env if eval_env is not None else env
        self.steering = steering
        self.agent = agent
        self.buffer = buffer
        self.config = config
        self.logger = logger
        self.checkpointer = checkpointer
        self.transition_spec = spec
        self.watch = Stopwatch()
        self.evaluations: list[dict[str, float]] = []
        self.last_update_metrics: dict[str, float] = {}
        self.last_episodes: list[Episode] = []
        self.eval_seeds = eval_seeds(config.seed, config.eval_episodes)
        self.discarded_episodes = 0  # training episodes lost to env worker failures

    # -- logging ------------------------------------------------------------------------------
    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None:
            with self.watch.section("io"):
                self.logger.log(metrics, step=step)

    def _counters(self, state: LoopState) -> dict[str, float]:
        return {
            "num_online_samples": state.num_online_samples,
            "num_online_trajs": state.num_online_trajs,
            "env_steps": state.env_steps,
        }

    # -- evaluation ---------------------------------------------------------------------------
    def _sampled_act(self, obs):
        latents, self.agent = self.agent.sample_actions(obs)
        return latents

    def _run_eval(self, source, num_video: int = 0) -> EvalResult:
        return evaluate(
            self.eval_env,
            self.steering,
            source,
            self.eval_seeds,
            num_video_episodes=num_video,
            timer=self.watch,
            step_penalty=self.config.use_step_penalty,
        )

    def evaluate(self, state: LoopState, include_base: bool) -> dict[str, float]:
        with self.checkpoint_on_env_failure(state):
            return self._evaluate(state, include_base)

    def _evaluate(self, state: LoopState, include_base: bool) -> dict[str, float]:
        cfg = self.config
        step = state.grad_steps
        row: dict[str, float] = {}
        # Per-episode noise streams (evaluation.EpisodeNoise): the same results on any number
        # of env workers.
        with_videos = None
        if cfg.eval_sampled:
            with_videos = self._run_eval(
                sampled_episode_noise(self.steering, self.agent), cfg.num_video_episodes
            )
            row |= _prefixed("evaluation", with_videos.metrics)
        mode = self._run_eval(
            mode_episode_noise(self.steering, self.agent),
            0 if with_videos else cfg.num_video_episodes,
        )
        row |= _prefixed("evaluation_mode", mode.metrics)
        with_videos = with_videos or mode
        if include_base:
            # Fixed generators: the same base-policy noise at every evaluation, like the
            # reference's per-eval PRNGKey(seed + 456).
            iid = self._run_eval(iid_episode_noise(self.steering, cfg.seed, 3))
            row |= _prefixed("evaluation_base_iid", iid.metrics)
            if cfg.eval_base_warmup:
                warm_source = warmup_episode_noise(self.steering, cfg.seed, 4)
                row |= _prefixed("evaluation_base_warmup", self._run_eval(warm_source).metrics)
        row |= self._counters(state)
        self._log(row, step)
        if self.logger is not None:
            with self.watch.section("io"):
                for i, frames in enumerate(with_videos.videos):
                    self.logger.log_video(f"eval_video/{i}", frames, step=step, fps=cfg.video_fps)
        self.evaluations.append({"step": float(step), **row})
        return row

    # -- collection ---------------------------------------------------------------------------
    def updates_ready(self, state: LoopState) -> bool:
        return (
            len(self.buffer) > self.config.start_online_updates
            and state.num_online_trajs >= self.config.start_online_trajs
        )

    def collect(self, state: LoopState) -> LoopState:
        cfg = self.config
        num_envs = int(self.env.num_envs)
        seeds = train_seeds(cfg.seed, state.num_online_trajs, num_envs)
        if self.updates_ready(state):
            source = self.steering.agent_source(self._sampled_act)
        else:
            rng = np.random.default_rng([cfg.seed, 2, state.num_online_trajs])
            source = self.steering.warmup_source(rng)
        with self.checkpoint_on_env_failure(state):
            all_episodes = run_episodes(
                self.env,
                self.steering,
                source,
                seeds,
                discount=cfg.discount,
                transition_spec=self.transition_spec,
                timer=self.watch,
                step_penalty=cfg.use_step_penalty,
                alias_rng=np.random.default_rng([cfg.seed, 5, state.num_online_trajs]),
            )
        # Episodes lost to an env worker failure are not stored (ChunkResult.worker_restarted).
        episodes = [e for e in all_episodes if not e.discarded]
        self.discarded_episodes += len(all_episodes) - len(episodes)
        num_transitions = 0
        with self.watch.section("io"):
            for episode in episodes:
                for transition in episode.transitions:
                    self.buffer.insert(transition)
                self.buffer.end_trajectory()
                num_transitions += len(episode.transitions)
        self.last_episodes = episodes
        state = dataclasses.replace(
            state,
            env_steps=state.env_steps + sum(e.length for e in all_episodes),
            num_online_samples=state.num_online_samples + num_transitions,
            num_online_trajs=state.num_online_trajs + len(episodes),
        )
        if self.updates_ready(state):
            owed = num_transitions * cfg.multi_grad_step
            if not state.updates_started:
                owed += cfg.first_update_grad_steps
            state = dataclasses.replace(
                state, pending_grad_steps=state.pending_grad_steps + owed, updates_started=1
            )
        return state

    # -- updates ------------------------------------------------------------------------------
    def update_block(self, state: LoopState) -> LoopState:
        k = self.config.block
        with self.watch.section("update"):
            batches = self.buffer.sample(self.config.batch_size, num_batches=k)
            self.agent, metrics = self.agent.update(batches)
        self.last_update_metrics = {k_: float(v) for k_, v in metrics.items()}
        return dataclasses.replace(
            state,
            grad_steps=state.grad_steps + k,
            pending_grad_steps=max(state.pending_grad_steps - k, 0),
        )

    def log_training(self, state: LoopState) -> None:
        row = _prefixed("training", self.last_update_metrics)
        row["replay_buffer_size"] = len(self.buffer)
        row["replay_buffer/size"] = len(self.buffer)
        capacity = getattr(self.buffer, "capacity", None)
        if capacity:
            row["replay_buffer/capacity"] = capacity
            row["replay_buffer/utilization"] = len(self.buffer) / capacity
        if self.last_episodes:
            row |= episode_metrics(self.last_episodes)
            row["episode_return (exploration)"] = float(
                np.mean([e.env_return for e in self.last_episodes])
            )
            row["is_success (exploration)"] = float(
                np.mean([e.success for e in self.last_episodes])
            )
        row |= self._counters(state)
        row |= self.watch.metrics()
        envs = {id(self.env): self.env, id(self.eval_env): self.eval_env}.values()
        row["env/worker_restarts"] = sum(getattr(e, "worker_restarts", 0) for e in envs)
        row["env/discarded_episodes"] = self.discarded_episodes
        self._log(row, state.grad_steps)

    def checkpoint(self, state: LoopState) -> None:
        if self.checkpointer is None:
            return
        with self.watch.section("io"):
            self.checkpointer.save(
                state.grad_steps,
                {"agent": self.agent, "counters": state.to_tree()},
                self.buffer,
            )

    @contextlib.contextmanager
    def checkpoint_on_env_failure(self, state: LoopState) -> Iterator[None]:
        """Writes a checkpoint of `state` (the last consistent one: the buffer is filled only
        after a collection returns) when an env worker gives up, then lets the error stop the
        run: a resume continues from here instead of the last interval checkpoint."""
        try:
            yield
        except VectorEnvError as err:
            try:
                self.checkpoint(state)
            except Exception as ckpt_err:  # noqa: BLE001 - the env error is the one to raise
                log.error(
                    "Env workers failed and the checkpoint could not be written: %s", ckpt_err
                )
            else:
                if self.checkpointer is not None:
                    log.error(
                        "Env workers failed (%s); checkpoint step %d written, resume the run "
                        "from it once the env is fixed.",
                        str(err).splitlines()[0],
                        state.grad_steps,
                    )
            raise


def canonical_agent(agent: Any) -> Any:
    """Python-number leaves (e.g. a fresh optimizer state's `step` = 0) as 0-d jax arrays.

    After one update those leaves ARE jax arrays, so a fresh agent and a trained one would have
    different pytree leaf types: a checkpoint template built from a fresh agent would not match
    the disk, and the jitted update would trace twice. Canonicalising both avoids that."""

    def fix(leaf: Any) -> Any:
        if isinstance(leaf, bool):
            return leaf
        if isinstance(leaf, int):
            return jnp.asarray(leaf, dtype=jnp.int32)
        if isinstance(leaf, float):
            return jnp.asarray(leaf, dtype=jnp.float32)
        return leaf

    return jax.tree_util.tree_map(fix, agent)


def checkpoint_template(agent: Any) -> dict[str, Any]:
    """The pytree layout `train` checkpoints, for `RunCheckpointer.restore`."""
    return {"agent": canonical_agent(agent), "counters": LoopState().to_tree()}


def restore(
    checkpointer: Any, agent_template: Any, example_transition: dict[str, Any] | None = None
) -> tuple[Any, LoopState, Any] | None:
    """(agent, loop state, buffer) from the latest checkpoint of a run, or None if it has none.

    With `example_transition`, the saved buffer must have its layout (a resume whose config
    changed the observation or latent shapes fails here, naming the difference)."""
    restored = checkpointer.restore(
        checkpoint_template(agent_template), example_transition=example_transition
    )
    if restored is None:
        return None
    tree, buffer = restored
    return tree["agent"], LoopState.from_tree(tree["counters"]), buffer


def train(
    *,
    env: Any,
    steering: Steering,
    agent: Any,
    buffer: Any,
    config: LoopConfig,
    logger: Any | None = None,
    checkpointer: Any | None = None,
    eval_env: Any | None = None,
    state: LoopState | None = None,
    transition_spec: TransitionSpec | None = None,
) -> TrainResult:
    """Run (or resume, given `state` and the restored agent and buffer) the DSRL loop.

    env / eval_env: vector envs (`num_envs`, `spec`, `reset(seeds)`, `step_chunk(...)`); eval
    defaults to the training env. agent: a learner with `update(batches) -> (agent, metrics)`,
    `sample_actions(obs) -> (latents, agent)`, `eval_actions(obs) -> latents` and
    `transition_spec()`. buffer: a `ReplayBuffer` built from `example_transition(...)` with the
    same transition spec. logger: `RunLogger` or None. checkpointer: `RunCheckpointer` or None.
    transition_spec: what each transition stores; default `agent.transition_spec()`.
    """
    cfg = config
    if transition_spec is None:
        transition_spec = agent.transition_spec()
    capacity = getattr(buffer, "capacity", None)
    if capacity is not None:
        check_buffer_capacity(capacity, cfg)
    trainer = _Trainer(
        env=env,
        eval_env=eval_env,
        steering=steering,
        agent=canonical_agent(agent),
        buffer=buffer,
        config=cfg,
        logger=logger,
        checkpointer=checkpointer,
        spec=transition_spec,
    )
    state = state or LoopState()
    do_eval = cfg.eval_episodes > 0
    bar = tqdm.tqdm(
        total=cfg.max_steps,
        initial=state.grad_steps,
        unit="grad",
        dynamic_ncols=True,
        disable=not cfg.progress,
    )

    def env_budget_left(s: LoopState) -> bool:
        return cfg.max_env_steps < 0 or s.env_steps < cfg.max_env_steps

    if do_eval and state.last_eval_step < 0:
        trainer.evaluate(state, include_base=True)
        state = dataclasses.replace(state, last_eval_step=0)

    while state.grad_steps < cfg.max_steps:
        if state.pending_grad_steps >= cfg.block:
            prev = state.grad_steps
            state = trainer.update_block(state)
            bar.update(state.grad_steps - prev)
            if _crossed(prev, state.grad_steps, cfg.log_interval):
                trainer.log_training(state)
            if do_eval and _crossed(prev, state.grad_steps, cfg.eval_interval):
                row = trainer.evaluate(state, include_base=cfg.eval_base_every_eval)
                state = dataclasses.replace(state, last_eval_step=state.grad_steps)
                bar.set_postfix(
                    env_steps=state.env_steps,
                    success=f"{row['evaluation_mode/success_rate']:.2f}",
                )
            if _crossed(prev, state.grad_steps, cfg.checkpoint_interval):
                trainer.checkpoint(state)
            continue
        if not env_budget_left(state):
            break
        state = trainer.collect(state)
        bar.set_postfix(env_steps=state.env_steps, buffer=len(buffer))

    bar.close()
    if do_eval and cfg.final_eval and state.last_eval_step != state.grad_steps:
        trainer.evaluate(state, include_base=False)
        state = dataclasses.replace(state, last_eval_step=state.grad_steps)
    trainer.log_training(state)
    trainer.checkpoint(state)
    return TrainResult(
        agent=trainer.agent,
        state=state,
        evaluations=trainer.evaluations,
        time=trainer.watch.metrics(),
    )
