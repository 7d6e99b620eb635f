"""Build and run DSRL on a real DROID Franka (or its simulated stand-in) with the shared loop.

`run(config)` wires: the base policy (usually `RemotePolicy` to `scripts/serve_policy.py`), the
noise parameterisation, a `DroidEnv` with the operator keyboard inside an inline `VectorEnv`,
the learner, replay buffer, logger and checkpointer, then calls `dsrl.training.loop.train`
(the same loop as simulation). `launch_train_real.py` is the command line around it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def _sim_launcher():
    """The simulation launcher module: its agent / base-policy builders are reused, not copied."""
    name = "dsrl_launch_train_sim"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent / "launch_train_sim.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_base_policy(config) -> Any:
    bp = config.base_policy
    if bp.get("remote"):
        from dsrl.base_policies.remote import RemotePolicy, parse_address
        from dsrl.serving import API_KEY_ENV

        host, port = parse_address(bp.remote)
        return RemotePolicy(host, port, api_key=os.environ.get(API_KEY_ENV))
    return _sim_launcher().make_base_policy(config)


def make_env(config, *, keyboard, robot=None, base_policy=None):
    from dsrl.envs.droid import DroidConfig, DroidEnv, SimulatedRobotEnv, make_robot_env

    kwargs = dict(config.env_kwargs.to_dict())
    prefix_fn = None
    if config.use_prefix_feature:
        prefix_fn = getattr(base_policy, "prefix_feature", None)
        if prefix_fn is None:
            raise ValueError(
                f"use_prefix_feature=True but the base policy ({type(base_policy).__name__}) has "
                "no prefix_feature; serve Pi0 and pass --pi0_remote, or disable the feature"
            )
    droid_cfg = DroidConfig(
        **kwargs,
        agent_image_size=int(config.resize_image),
        prefix_feature_dim=int(config.prefix_feature_dim) if prefix_fn else 0,
    )
    if robot is None:
        if config.robot == "sim":
            robot = SimulatedRobotEnv(droid_cfg.camera_ids(), seed=int(config.seed))
        elif config.robot == "droid":
            robot = make_robot_env()
        else:
            raise ValueError(f"robot must be 'droid' or 'sim', got {config.robot!r}")
    return DroidEnv(droid_cfg, robot=robot, keyboard=keyboard, prefix_feature_fn=prefix_fn)


def run(
    config,
    *,
    resume_dir: str | os.PathLike | None = None,
    keyboard=None,
    robot=None,
    progress: bool = True,
):
    """Train (or resume) on the robot. `keyboard` defaults to the terminal, `robot` to DROID's
    RobotEnv (or the simulated one when config.robot == "sim"). Returns the loop's TrainResult."""
    from dsrl.data.replay_buffer import ReplayBuffer
    from dsrl.envs.keyboard import TerminalKeyboard
    from dsrl.envs.vector import VectorEnv
    from dsrl.training import loop
    from dsrl.utils.checkpoints import RunCheckpointer
    from dsrl.utils.logging import RunLogger

    launcher = _sim_launcher()
    run_dir = launcher.open_run_dir(config, resume_dir)
    print(f"[dsrl] run dir: {run_dir}", flush=True)

    base_policy = make_base_policy(config)
    noise_param, steering = launcher.make_steering(config, base_policy)
    keyboard = keyboard if keyboard is not None else TerminalKeyboard()
    logger = None
    env = None
    try:
        env = make_env(config, keyboard=keyboard, robot=robot, base_policy=base_policy)
        vec_env = VectorEnv([lambda: env], mode="inline")
        spec = vec_env.spec
        agent = launcher.make_agent(config, spec.observation_spec, noise_param.action_dim)
        capacity = int(config.replay_buffer_capacity)
        if capacity <= 0:
            capacity = max(int(config.max_steps) // int(config.multi_grad_step), 1)
            capacity = max(capacity, int(config.start_online_updates) + 1)
        example = loop.example_transition(spec.observation_spec, noise_param.action_dim)
        buffer = ReplayBuffer(example, capacity=capacity, seed=int(config.seed))
        checkpointer = RunCheckpointer(run_dir)
        state = None
        if resume_dir:
            restored = loop.restore(checkpointer, agent)
            if restored is not None:
                agent, state, buffer = restored
                env.episodes = state.num_online_trajs
                print(
                    f"[dsrl] resumed at gradient step {state.grad_steps}, "
                    f"{state.num_online_trajs} trajectories, buffer {len(buffer)}",
                    flush=True,
                )
        logger = RunLogger(
            run_dir,
            launcher._jsonable(config),
            project=config.wandb_project,
            wandb_mode=config.wandb_mode,
        )
        loop_cfg = dataclasses.replace(loop.LoopConfig.from_config(config), progress=progress)
        return loop.train(
            env=vec_env,
            steering=steering,
            agent=agent,
            buffer=buffer,
            config=loop_cfg,
            logger=logger,
            checkpointer=checkpointer,
            state=state,
        )
    finally:
        if logger is not None:
            logger.close()
        if env is not None:
            env.close()  # restores the terminal
        else:
            keyboard.close()
        close = getattr(base_policy, "close", None)
        if close is not None:
            close()
