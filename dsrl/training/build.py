"""Run assembly: `build_run` creates (or, with `resume_dir`, restores) every component of a run.

It writes the run's config.json only once everything is built and a resume has restored, and a
launch that fails before training removes the run directory it created. The component makers
(`make_base_policy`, `make_steering`, `make_vec_env`, `make_agent`) are shared with
`dsrl.training.eval_only`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dsrl.agents import registry
from dsrl.agents.spec import TransitionSpec
from dsrl.steering import Steering, make_noise_param
from dsrl.training import loop, validation
from dsrl.training.config import BasePolicySection, EnvSection, RunConfig
from dsrl.training.config_io import write_config_file
from dsrl.training.flags import ConfigError
from dsrl.utils.run_lock import RunDirLock, RunDirLockedError


def check_logdir(logdir: str) -> None:
    """Fails, before any work, when runs cannot be created under `logdir`."""
    path = Path(logdir).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise ConfigError(
            f"--logdir {logdir}: {problem}; pass a writable directory (created if missing)"
        )


def make_base_policy(config: RunConfig) -> Any:
    """The frozen base policy: in this process, behind a policy server (base_policy.remote), or
    in a Ray actor that builds it there (base_policy.ray; it owns a local Ray it starts)."""
    bp = config.base_policy
    if not bp.ray:
        return _make_local_base_policy(bp)
    from dsrl.base_policies.ray_actor import RayBasePolicy

    env_cpus = config.env.num_envs * config.env.ray_num_cpus if config.env.mode == "ray" else 0
    with _ray_errors_as_config_errors():
        return RayBasePolicy(
            functools.partial(_make_local_base_policy, bp),
            num_gpus=bp.ray_num_gpus,
            ray_address=config.env.ray_address,
            local_ray_cpus=env_cpus,  # a local Ray started here must fit the env workers too
        )


@contextlib.contextmanager
def _ray_errors_as_config_errors():
    """Ray missing or a cluster that does not answer: a ConfigError naming the fix."""
    try:
        yield
    except (ImportError, ConnectionError) as err:
        raise ConfigError(str(err)) from None


def _make_local_base_policy(bp: BasePolicySection) -> Any:
    if bp.remote:
        from dsrl.base_policies.remote import RemotePolicy, parse_address
        from dsrl.serving import API_KEY_ENV

        host, port = parse_address(bp.remote)
        return RemotePolicy(host, port, api_key=os.environ.get(API_KEY_ENV))
    if bp.kind == "flow_mlp":
        from dsrl.base_policies.flow_mlp import FlowMLPPolicy

        if not bp.checkpoint:
            return FlowMLPPolicy.load_demo()
        if bp.checkpoint == "libero":
            return FlowMLPPolicy.load_libero()
        return FlowMLPPolicy.load(bp.checkpoint)
    if bp.kind == "diffusion_mlp":
        from dsrl.base_policies.diffusion import DiffusionMLPPolicy

        return DiffusionMLPPolicy.load(bp.checkpoint)
    from dsrl.base_policies.pi0 import shipped

    if bp.checkpoint in shipped.SHIPPED:
        return shipped.load(shipped.SHIPPED[bp.checkpoint], num_steps=bp.num_steps or None)
    # A directory make_pi0_libero.py wrote (e.g. its --out runs/pi0_small) carries its own
    # variant, robot and tokenizer.
    if bp.checkpoint and shipped.is_made(bp.checkpoint):
        return shipped.load(bp.checkpoint, num_steps=bp.num_steps or None)
    from dsrl.base_policies.pi0 import Pi0Policy

    kwargs = {"robot": bp.robot, "variant": bp.variant, "dtype": bp.dtype}
    if bp.tokenizer_path:
        kwargs["tokenizer_path"] = bp.tokenizer_path
    if bp.num_steps:
        kwargs["num_steps"] = bp.num_steps
    if bp.action_horizon:
        kwargs["action_horizon"] = bp.action_horizon  # a Pi0Config override of the variant
    return Pi0Policy.from_checkpoint(bp.checkpoint, **kwargs)


def check_num_cameras(config: RunConfig, observation_spec: Mapping[str, Any]) -> None:
    """The reference's --num_cameras against the channels of the env's agent pixels, and its
    --add_states 0 against an agent observation with no pixels."""
    want = config.env.num_cameras
    if "pixels" not in observation_spec and not config.env.add_states:
        raise ConfigError(
            f"--add_states 0 drops the agent's state, but the {config.env.name} env gives the "
            "agent no images (a state-based env, or LIBERO's agent_obs='policy_state'): it would "
            "see nothing; leave --add_states out"
        )
    if "pixels" not in observation_spec:  # a state-based env
        if want:
            raise ConfigError(
                f"--num_cameras {want}: the {config.env.name} env gives the agent no images "
                "(a state-based env); leave --num_cameras out"
            )
        return
    channels = int(observation_spec["pixels"][0][-1])
    if want and channels != 3 * want:
        raise ConfigError(
            f"--num_cameras {want} expects {3 * want} pixel channels, but the {config.env.name} "
            f"env gives the agent {channels} ({channels // 3} RGB camera(s)); pass "
            f"--num_cameras {channels // 3} or leave it out (the env decides)"
        )


def make_steering(config: RunConfig, base_policy: Any) -> Steering:
    s = config.steering
    noise_param = make_noise_param(
        s.noise_mode,
        tuple(base_policy.noise_shape),
        s.action_magnitude,
        num_basis=s.num_basis,
        controlled_dims=s.controlled_dims or None,
    )
    return Steering(base_policy, noise_param, s.query_freq)


def make_agent(config: RunConfig, observation_spec: Mapping[str, Any], steering: Steering) -> Any:
    """A fresh learner of the configured algorithm for the env's agent observations."""
    algorithm = registry.get(config.agent.algorithm)
    kwargs: dict[str, Any] = {
        "action_magnitude": steering.action_magnitude,  # the steering's bound
        "execution": config.execution,
    }
    if algorithm.uses_base_policy:
        kwargs |= {
            "base_policy": steering.base_policy,
            "noise_param": steering.noise_param,
            "query_freq": steering.query_freq,
        }
    return algorithm.learner.create(
        config.loop.seed,
        observation_spec,
        steering.latent_dim,
        config.learner_config(),
        **kwargs,
    )


def _make_robot_env(config: RunConfig, base_policy: Any, keyboard: Any, robot: Any) -> Any:
    """The real robot (or its simulated stand-in) as one DSRL env with the operator keyboard."""
    from dsrl.envs.droid import (
        CAMERAS,
        DroidConfig,
        DroidEnv,
        SimulatedRobotEnv,
        make_robot_env,
    )

    prefix_fn = None
    if config.env.use_prefix_feature:
        prefix_fn = getattr(base_policy, "prefix_feature", None)
        if prefix_fn is None:
            raise ConfigError(
                f"env.use_prefix_feature=True but the base policy ({type(base_policy).__name__}) "
                "has no prefix_feature; serve Pi0 and pass --pi0_remote, or disable the feature"
            )
    kwargs = dict(config.env.kwargs)
    if config.env.robot == "sim":  # the simulated robot renders every camera: any id will do
        for name in CAMERAS:
            kwargs[f"{name}_camera_id"] = kwargs.get(f"{name}_camera_id") or f"sim_{name}"
    droid_cfg = DroidConfig(
        **kwargs,
        image_size=config.env.image_size,
        prefix_feature_dim=config.env.prefix_feature_dim if prefix_fn else 0,
    )
    if robot is None:
        if config.env.robot == "sim":
            robot = SimulatedRobotEnv(droid_cfg.camera_ids(), seed=config.loop.seed)
        else:
            robot = make_robot_env()
    return DroidEnv(droid_cfg, robot=robot, keyboard=keyboard, prefix_feature_fn=prefix_fn)


@dataclasses.dataclass
class Run:
    """Every component of a run; `train()` runs the loop, `close()` releases everything."""

    config: RunConfig
    run_dir: Path
    vec_env: Any
    steering: Steering
    agent: Any
    buffer: Any
    logger: Any
    checkpointer: Any
    transition_spec: TransitionSpec
    state: loop.LoopState | None
    resources: contextlib.ExitStack

    def train(self) -> loop.TrainResult:
        return loop.train(
            env=self.vec_env,
            steering=self.steering,
            agent=self.agent,
            buffer=self.buffer,
            config=self.config.loop,
            logger=self.logger,
            checkpointer=self.checkpointer,
            state=self.state,
            transition_spec=self.transition_spec,
        )

    def close(self) -> None:
        self.resources.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build_run(
    config: RunConfig,
    resume_dir: str | os.PathLike | None = None,
    *,
    keyboard: Any = None,
    robot: Any = None,
    log: Any = print,
) -> Run:
    """Create (or, with `resume_dir`, restore) every component of a run.

    keyboard / robot: the operator keyboard and robot of a real-robot run (env "droid"; default
    the terminal and the configured robot). A new run's directory is removed again if building
    fails; a resumed run's config.json is rewritten only after its checkpoint has restored.
    """
    validation.check_values(config)  # before any work, each failure naming its flag
    for line in validation.check_memory(config):
        log(f"[dsrl] note: {line}")
    if not resume_dir:
        check_logdir(config.log.logdir)
    if resume_dir:
        run_dir, created = Path(resume_dir), False
    else:
        from dsrl.utils.logging import make_run_dir

        run_dir = Path(make_run_dir(config.log.logdir, config.log.prefix, config.loop.seed))
        created = True
    resources = contextlib.ExitStack()
    try:
        # One writer per run directory, for the life of the run (released when it closes).
        lock = RunDirLock(run_dir).acquire()
    except RunDirLockedError:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    resources.callback(lock.release)
    if took_over := lock.took_over_from():
        log(f"[dsrl] {run_dir}: {took_over}; taking the run directory over")
    try:
        return _build(config, run_dir, not created, resources, keyboard, robot, log)
    except BaseException:
        resources.close()
        if created:  # nothing trained yet: leave no empty run directory behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _env_kwargs(config: RunConfig) -> dict[str, Any]:
    from dsrl.envs import STATE_ENVS

    if config.env.name in STATE_ENVS:  # no agent image to size
        return dict(config.env.kwargs)
    return {**config.env.kwargs, "image_size": config.env.image_size}


def agent_env_fn(config: RunConfig) -> Any:
    """A picklable zero-argument builder of one simulated env as the agent sees it."""
    from dsrl.envs.wrappers import make_agent_env

    return functools.partial(
        make_agent_env, config.env.name, add_states=config.env.add_states, **_env_kwargs(config)
    )


def agent_env_fns(config: RunConfig) -> list[Any]:
    """One builder per env worker: over a LIBERO suite's tasks when `env.kwargs.tasks` is set,
    else `num_envs` copies of `agent_env_fn`."""
    suite_fns = _suite_env_fns(config.env, _env_kwargs(config))
    return suite_fns or [agent_env_fn(config)] * config.env.num_envs


def make_vec_env(
    config: RunConfig,
    base_policy: Any,
    resources: contextlib.ExitStack,
    keyboard: Any = None,
    robot: Any = None,
) -> Any:
    """The run's vector env (closed by `resources`): `num_envs` workers of the configured env,
    or the robot (env "droid") as one inline env with the operator keyboard, whose DroidEnv is
    the vector env's `robot_env`. Without `env.add_states` the agent sees no state."""
    from dsrl.envs.smoothing import ChunkSmoothing
    from dsrl.envs.vector import VectorEnv

    smoothing = ChunkSmoothing(config.env.blend_steps, config.env.max_action_delta)
    robot_env = None
    if config.env.name == "droid":
        if keyboard is None:
            from dsrl.envs.keyboard import TerminalKeyboard

            keyboard = TerminalKeyboard()
        resources.callback(keyboard.close)  # the env closes it too; closing twice is harmless
        robot_env = _make_robot_env(config, base_policy, keyboard, robot)
        resources.callback(robot_env.close)  # restores the terminal
        agent_env = robot_env
        if not config.env.add_states:
            from dsrl.envs.wrappers import DropAgentState

            agent_env = DropAgentState(robot_env)
        vec_env = VectorEnv([lambda: agent_env], mode="inline", smoothing=smoothing)
    else:
        with _ray_errors_as_config_errors():
            vec_env = VectorEnv(
                agent_env_fns(config),
                mode=config.env.mode,
                smoothing=smoothing,
                start_timeout_s=config.env.start_timeout_s,
                reset_timeout_s=config.env.reset_timeout_s,
                step_timeout_s=config.env.step_timeout_s,
                max_worker_failures=config.env.max_worker_failures,
                ray_address=config.env.ray_address,
                ray_num_cpus_per_worker=config.env.ray_num_cpus,
            )
    resources.callback(vec_env.close)
    check_num_cameras(config, vec_env.spec.observation_spec)
    vec_env.robot_env = robot_env
    return vec_env


def _suite_env_fns(env: EnvSection, kwargs: dict[str, Any]) -> list[Any] | None:
    """One env constructor per worker over a LIBERO suite's tasks when `env.kwargs.tasks` is set
    (dsrl.envs.libero_suite), else None."""
    from dsrl.envs import libero_suite

    try:
        workers = libero_suite.worker_env_kwargs(env.name, kwargs, env.num_envs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if workers is None:
        return None
    return [
        functools.partial(libero_suite.LiberoSuiteEnv, add_states=env.add_states, **w)
        for w in workers
    ]


def _build(config, run_dir, resuming, resources, keyboard, robot, log) -> Run:
    from dsrl.data.replay_buffer import ReplayBuffer
    from dsrl.utils.checkpoints import RunCheckpointer
    from dsrl.utils.logging import RunLogger

    # Closed last (an ExitStack unwinds in reverse): the base policy may be a server connection.
    base_policy = make_base_policy(config)
    if callable(getattr(base_policy, "close", None)):
        resources.callback(base_policy.close)
    steering = make_steering(config, base_policy)
    from dsrl.envs import libero_suite

    for line in libero_suite.describe(config.env.name, config.env.kwargs, config.env.num_envs):
        log(f"[dsrl] {line}")  # the tasks behind the task_<id> metrics
    vec_env = make_vec_env(config, base_policy, resources, keyboard, robot)
    robot_env = vec_env.robot_env
    agent = make_agent(config, vec_env.spec.observation_spec, steering)
    spec = agent.transition_spec()
    if spec.num_aliases and not hasattr(base_policy, "sample_actions_multi"):
        log(
            f"[dsrl] note: {spec.num_aliases} stored aliases per query on a base policy without "
            "prefix reuse (e.g. a policy server) cost that many extra full passes per query; "
            "lower --num_aliases if queries are too slow (fewer distillation targets)"
        )
    if config.replay.store_action_chunks:
        spec = dataclasses.replace(spec, action_chunks=True)
    # The base policy's observation keys the learner asks for have the learner's shapes.
    observation_spec = {**vec_env.spec.observation_spec, **agent.policy_observation_spec()}
    example = loop.example_transition(observation_spec, steering, spec)
    validation.check_memory(config, example)  # the replay buffer and a batch, from the spec
    buffer = ReplayBuffer(example, capacity=config.replay_capacity, seed=config.loop.seed)
    checkpointer = RunCheckpointer(run_dir, max_to_keep=config.log.checkpoints_to_keep)
    resources.callback(checkpointer.close)
    state = None
    if resuming:
        restored = loop.restore(checkpointer, agent, example)
        if restored is None:
            log(f"[dsrl] {run_dir} has no checkpoint yet: starting it from scratch")
        else:
            agent, state, buffer = restored
            if robot_env is not None:
                robot_env.episodes = state.num_online_trajs
            log(
                f"[dsrl] resumed {run_dir} at gradient step {state.grad_steps}, "
                f"{state.env_steps} env steps, buffer {len(buffer)}, "
                f"{state.num_online_trajs} trajectories"
            )
    write_config_file(run_dir, config)
    logger = RunLogger(
        run_dir,
        config.to_tree(),
        project=config.log.wandb_project,
        wandb_mode=config.log.wandb_mode,
    )
    resources.callback(logger.close)
    from dsrl.training.plots import PlotOnEvaluation

    logger = PlotOnEvaluation(logger, run_dir, log=log)  # success_vs_env_steps.png per eval
    log(f"[dsrl] run dir: {run_dir}")
    return Run(
        config=config,
        run_dir=run_dir,
        vec_env=vec_env,
        steering=steering,
        agent=agent,
        buffer=buffer,
        logger=logger,
        checkpointer=checkpointer,
        transition_spec=spec,
        state=state,
        resources=resources,
    )
