"""The trajectory-wise alternating DSRL loop (one code path for simulation and real robots).

    repeat until `max_steps` gradient steps:
      collect one episode in each of `num_envs` envs with the current actor (random actions of
        the training family while the buffer holds <= `start_online_updates` transitions),
      insert their transitions (one per base-policy query), end the trajectories,
      then run `transitions x multi_grad_step` gradient steps in blocks of K = `update_block`
        (`buffer.sample(B, K)` -> `agent.update`, one host-to-device transfer per block; the
        last block is shortened so that a run ends exactly at `max_steps`).

Like the reference, `max_steps`, `eval_interval`, `log_interval` and `checkpoint_interval` count
GRADIENT steps (W&B's step axis); env steps and transitions are tracked alongside. Evaluation runs
at step 0 (actor and base policy) and whenever the gradient step crosses a multiple of
`eval_interval`.

Resuming is exact: a checkpoint holds the agent (with its PRNG key), the buffer (with its RNG
state) and the counters below; every other random draw (reset seeds, warm-up actions) is derived
from `(seed, counter)`, so a resumed run continues the same streams. Gradient steps owed to
collected data but not yet run are a counter too (`pending_grad_steps`), so a run killed between
two update blocks resumes in the middle of its update phase.

Ctrl-C (SIGINT) or SIGTERM stops the loop after the chunk in flight (dsrl.utils.interrupt):
the episodes running end there as truncated and are stored, a checkpoint of the last consistent
state is written and `train` raises `TrainingInterrupted` (a SystemExit with status 130 / 143).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from dsrl.agents.spec import TransitionSpec
from dsrl.envs.vector import VectorEnvError
from dsrl.steering import Steering
from dsrl.training.best import BestActor
from dsrl.training.buffer_layout import (  # noqa: F401 - re-exported: loop.<name> is the API
    canonical_agent,
    check_buffer_capacity,
    checkpoint_template,
    example_aliases,
    example_transition,
    restore,
)
from dsrl.training.evaluation import (
    ACTOR_MODE,
    ACTOR_SAMPLED,
    BASE_IID,
    BASE_WARMUP,
    EvalResult,
    critic_calibration,
    episode_metrics,
    eval_seeds,
    evaluate,
    headline_metric,
    iid_episode_noise,
    mode_episode_noise,
    sampled_episode_noise,
    warmup_episode_noise,
)
from dsrl.training.loop_config import (  # noqa: F401 - re-exported
    TIME_CATEGORIES,
    LoopConfig,
    LoopState,
    Stopwatch,
)
from dsrl.training.progress import Progress
from dsrl.training.returns import n_step_transitions
from dsrl.training.rollout import Episode, run_episodes
from dsrl.utils.interrupt import StopRequested, StopSignals

log = logging.getLogger(__name__)


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
        self.progress = Progress(False, config.max_steps, 0)
        self.stop: StopSignals | None = None
        self._eval_bar = None
        self._videos: list[np.ndarray] = []
        self.best: BestActor | None = None
        if checkpointer is not None and config.keep_best and config.eval_episodes > 0:
            metric = headline_metric(getattr(self.eval_env, "spec", None))
            self.best = BestActor(checkpointer.directory.parent, metric)

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested

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
        latents, self.agent = self.agent.sample_latents(obs)
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
            on_chunk=self._eval_chunk,
        )

    def _eval_chunk(self, env_steps: int, queries: int, ended: int) -> None:
        del env_steps, queries
        if self._eval_bar is not None:
            self._eval_bar.update(ended)
        if self.stop_requested():  # an evaluation cut short would not cover its seeds
            raise StopRequested(self.stop.name)

    def evaluate(self, state: LoopState, include_base: bool) -> dict[str, float]:
        with self.checkpoint_on_env_failure(state):
            return self._evaluate(state, include_base)

    def _evaluate(self, state: LoopState, include_base: bool) -> dict[str, float]:
        cfg = self.config
        step = state.grad_steps
        row: dict[str, float] = {}
        sources = 1 + cfg.eval_sampled + (include_base * (1 + cfg.eval_base_warmup))
        self._eval_bar = self.progress.evaluation(sources * cfg.eval_episodes)
        try:
            row = self._evaluate_sources(cfg, include_base)
        finally:
            self._eval_bar.close()
            self._eval_bar = None
        row |= self._counters(state)
        if self.best is not None:
            with self.watch.section("io"):
                state_tree = {"agent": self.agent, "counters": state.to_tree()}
                self.best.offer(step, state.env_steps, len(self.eval_seeds), row, state_tree)
            row |= self.best.metrics()
        self._log(row, step)
        if self.logger is not None:
            with self.watch.section("io"):
                for i, frames in enumerate(self._videos):
                    self.logger.log_video(f"eval_video/{i}", frames, step=step, fps=cfg.video_fps)
        self.evaluations.append({"step": float(step), **row})
        return row

    def _evaluate_sources(self, cfg: LoopConfig, include_base: bool) -> dict[str, float]:
        row: dict[str, float] = {}
        # Per-episode noise streams (evaluation.EpisodeNoise): the same results on any number
        # of env workers.
        with_videos = None
        if cfg.eval_sampled:
            with_videos = self._run_eval(
                sampled_episode_noise(self.steering, self.agent), cfg.num_video_episodes
            )
            row |= _prefixed(ACTOR_SAMPLED.prefix, with_videos.metrics)
        first_q: dict[int, float] = {}
        mode = self._run_eval(
            mode_episode_noise(self.steering, self.agent, first_q),
            0 if with_videos else cfg.num_video_episodes,
        )
        calibration = critic_calibration(mode.episodes, first_q, cfg.discount)
        row |= _prefixed(ACTOR_MODE.prefix, mode.metrics | calibration)
        with_videos = with_videos or mode
        if include_base:
            # Fixed generators: the same base-policy noise at every evaluation, like the
            # reference's per-eval PRNGKey(seed + 456).
            iid = self._run_eval(iid_episode_noise(self.steering, cfg.seed, BASE_IID.stream))
            row |= _prefixed(BASE_IID.prefix, iid.metrics)
            if cfg.eval_base_warmup:
                warm_source = warmup_episode_noise(self.steering, cfg.seed, BASE_WARMUP.stream)
                row |= _prefixed(BASE_WARMUP.prefix, self._run_eval(warm_source).metrics)
        self._videos = with_videos.videos
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
        warming_up = not self.updates_ready(state)
        if not warming_up:
            act = self._sampled_act
            if cfg.hold_exploration:
                # One draw per env for this episode (run_episodes runs one per env), from its
                # own stream so a resumed run draws the same.
                eps_rng = np.random.default_rng([cfg.seed, 6, state.num_online_trajs])
                eps = eps_rng.standard_normal((num_envs, self.steering.latent_dim))

                def act(obs):
                    return self.agent.latents_from_noise(obs, eps)

            source = self.steering.agent_source(act)
        else:
            rng = np.random.default_rng([cfg.seed, 2, state.num_online_trajs])
            if cfg.hold_exploration:  # one warm-up latent per env, held for its episode
                held = self.steering.noise_param.sample_warmup(rng, num_envs)
                source = self.steering.agent_source(lambda obs: held)
            else:
                source = self.steering.warmup_source(rng)
            self.progress.warmup(cfg.start_online_updates + 1, len(self.buffer), state.env_steps)
        counts = {"env_steps": state.env_steps, "queries": len(self.buffer)}

        def on_chunk(env_steps: int, queries: int, ended: int) -> bool:
            counts["env_steps"] += env_steps
            if warming_up:
                trajs = ""
                if cfg.start_online_trajs:
                    done = state.num_online_trajs + ended
                    trajs = f"{done}/{cfg.start_online_trajs}"
                self.progress.warmup_chunk(queries, counts["env_steps"], trajs)
            else:
                self.progress.train_bar().set_postfix(env_steps=counts["env_steps"])
            return self.stop_requested()  # a stop keeps the chunks run so far

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
                on_chunk=on_chunk,
            )
        # Episodes lost to an env worker failure are not stored (ChunkResult.worker_restarted).
        episodes = [e for e in all_episodes if not e.discarded]
        self.discarded_episodes += len(all_episodes) - len(episodes)
        num_transitions = 0
        with self.watch.section("io"):
            for episode in episodes:
                for transition in n_step_transitions(episode.transitions, cfg.n_step):
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
    def update_block(self, state: LoopState, k: int) -> LoopState:
        """`k` gradient steps (the update block, or fewer to end exactly at `max_steps`)."""
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
    `sample_latents(obs) -> (latents, agent)`, `mode_latents(obs) -> latents` and
    `transition_spec()`. buffer: a `ReplayBuffer` built from `example_transition(...)` with the
    same transition spec. logger: `RunLogger` or None. checkpointer: `RunCheckpointer` or None.
    transition_spec: what each transition stores; default `agent.transition_spec()`.
    Raises `dsrl.utils.interrupt.TrainingInterrupted` after checkpointing on SIGINT / SIGTERM
    (in the main thread; elsewhere no handler is installed).
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
    trainer.state = state or LoopState()
    trainer.progress = Progress(cfg.progress, cfg.max_steps, trainer.state.grad_steps)
    with StopSignals() as trainer.stop:
        try:
            _run(trainer)
        except StopRequested:
            pass  # trainer.state is the last consistent state: saved below
        finally:
            trainer.progress.close()
        state = trainer.state
        if trainer.stop.requested:
            trainer.log_training(state)
            trainer.checkpoint(state)
            raise trainer.stop.exit(_stopped_message(trainer))
    do_eval = cfg.eval_episodes > 0
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


def _run(trainer: _Trainer) -> None:
    """Collect and update until a budget is spent or a stop is requested, keeping
    `trainer.state` the last consistent state (what a checkpoint of the run would hold)."""
    cfg = trainer.config
    do_eval = cfg.eval_episodes > 0
    if do_eval and trainer.state.last_eval_step < 0:
        trainer.evaluate(trainer.state, include_base=True)
        trainer.state = dataclasses.replace(trainer.state, last_eval_step=0)
    if trainer.state.updates_started:
        trainer.progress.train_bar()
    while not trainer.stop_requested():
        state = trainer.state
        # The last block is shortened so the run ends exactly at max_steps.
        block = min(cfg.block, cfg.max_steps - state.grad_steps)
        if block <= 0:
            break
        if state.pending_grad_steps >= block:
            trainer.progress.train_bar()  # shown while the first block compiles
            trainer.state = state = trainer.update_block(state, block)
            prev = state.grad_steps - block
            postfix = {"env_steps": state.env_steps, "buffer": len(trainer.buffer)}
            if _crossed(prev, state.grad_steps, cfg.log_interval):
                trainer.log_training(state)
            if do_eval and _crossed(prev, state.grad_steps, cfg.eval_interval):
                row = trainer.evaluate(state, include_base=cfg.eval_base_every_eval)
                trainer.state = state = dataclasses.replace(state, last_eval_step=state.grad_steps)
                postfix["success"] = f"{row[ACTOR_MODE.metric('success_rate')]:.2f}"
            trainer.progress.grad_steps(block, **postfix)
            if _crossed(prev, state.grad_steps, cfg.checkpoint_interval):
                trainer.checkpoint(state)
            continue
        if not (cfg.max_env_steps < 0 or state.env_steps < cfg.max_env_steps):
            break
        trainer.state = trainer.collect(state)


def _stopped_message(trainer: _Trainer) -> str:
    state = trainer.state
    where = "not saved (no checkpointer)"
    if trainer.checkpointer is not None:
        directory = getattr(trainer.checkpointer, "directory", None)
        where = (
            f"checkpoint step {state.grad_steps} saved in {directory}; resume with "
            f"--resume {directory.parent if directory is not None else '<run dir>'}"
        )
    return (
        f"[dsrl] stopped by {trainer.stop.name} at {state.grad_steps} gradient steps, "
        f"{state.env_steps} env steps, {len(trainer.buffer)} transitions: {where}"
    )
