"""Launch DSRL training in simulation (the embedded demo, LIBERO or Aloha).

    python examples/launch_train_sim.py --env demo
    python examples/launch_train_sim.py --env libero --seed 0 --max_steps 500000 ...
    python examples/launch_train_sim.py --env libero --config.agent.num_qs=2 --config.num_envs=4
    python examples/launch_train_sim.py --resume runs/dsrl_pi0_libero_20250101_120000_s0

The preset `examples/configs/<env>.py` gives every value; the reference's flag names
(`--batch_size --max_steps --multi_grad_step --query_freq --action_magnitude --resize_image
--hidden_dims --num_qs --target_entropy ...`) override it, and `--config.<key>=<value>` overrides
any preset key (learner keys live under `--config.agent.<key>`). The final config is written to
`<run_dir>/config.json`; `--resume <run_dir>` reloads it and continues from the latest
checkpoint (counters, replay buffer, agent and RNG streams), applying only flags given again.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import ml_collections  # noqa: E402

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(_ROOT))

# Before the heavy imports: the entry point may re-execute itself once (dsrl.utils.hugepages).
if __name__ == "__main__":
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()

_CONFIGS = Path(__file__).resolve().parent / "configs" / "__init__.py"
_spec = importlib.util.spec_from_file_location("dsrl_presets", _CONFIGS)
presets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(presets)

ALGORITHMS = ("pixel_sac", "dsrl_na")
NOISE_MODES = ("repeat", "full", "basis")
WANDB_MODES = ("offline", "online", "disabled")


# --------------------------------------------------------------------------------------------
# Flags


def _int(text: str) -> int:
    """An integer that may be written like the reference's `1e6`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _discount(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"discount must be in (0, 1], got {text!r}")
    return value


def _target_entropy(text: str) -> str | float:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"target_entropy must be 'auto' or a number, got {text!r}"
        ) from None


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return text


# flag -> (config key path, argparse kwargs). Every flag defaults to None = "keep the preset".
FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "seed": ("seed", {"type": _int}),
    "batch_size": ("batch_size", {"type": _positive_int}),
    "max_steps": ("max_steps", {"type": _int, "help": "gradient-step budget (1e6 is accepted)"}),
    "max_env_steps": ("max_env_steps", {"type": _int}),
    "multi_grad_step": ("multi_grad_step", {"type": _positive_int, "help": "UTD ratio"}),
    "update_block": ("update_block", {"type": _positive_int}),
    "start_online_updates": ("start_online_updates", {"type": _int}),
    "resize_image": ("resize_image", {"type": _positive_int}),
    "action_magnitude": ("action_magnitude", {"type": _positive_float}),
    "query_freq": ("query_freq", {"type": _positive_int}),
    "eval_interval": ("eval_interval", {"type": _positive_int}),
    "eval_episodes": ("eval_episodes", {"type": _int}),
    "log_interval": ("log_interval", {"type": _positive_int}),
    "checkpoint_interval": ("checkpoint_interval", {"type": _int}),
    "discount": ("discount", {"type": _discount}),
    "noise_mode": ("noise_mode", {"choices": NOISE_MODES}),
    "num_envs": ("num_envs", {"type": _positive_int}),
    "algorithm": ("algorithm", {"choices": ALGORITHMS}),
    "prefix": ("prefix", {}),
    "wandb_project": ("wandb_project", {}),
    "wandb_mode": ("wandb_mode", {"choices": WANDB_MODES}),
    "logdir": ("logdir", {}),
    "pi0_checkpoint": ("base_policy.checkpoint", {}),
    "pi0_variant": ("base_policy.variant", {}),
    "pi0_remote": ("base_policy.remote", {"type": _address, "help": "host:port of a server"}),
    # Learner flags (reference names).
    "hidden_dims": (
        "agent.hidden_dims",
        {"type": _positive_int, "nargs": "+", "help": "one value N means (N, N, N)"},
    ),
    "num_qs": ("agent.num_qs", {"type": _positive_int}),
    "target_entropy": ("agent.target_entropy", {"type": _target_entropy}),
    "actor_lr": ("agent.actor_lr", {"type": _positive_float}),
    "critic_lr": ("agent.critic_lr", {"type": _positive_float}),
    "temp_lr": ("agent.temp_lr", {"type": _positive_float}),
    "tau": ("agent.tau", {"type": _positive_float}),
    "critic_reduction": ("agent.critic_reduction", {"choices": ("mean", "min")}),
    "encoder_type": ("agent.encoder", {}),
}
# Accepted for compatibility with the reference's scripts; they change nothing here.
IGNORED_FLAGS = {"launch_group_id": "", "suffix": "", "add_states": "1"}
# Keys under which --config.<key>=... may ADD keys the preset does not list (validated later by
# the learner / env / noise parameterisation that receives them).
OPEN_SECTIONS = ("agent", "env_kwargs", "noise_kwargs", "base_policy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any preset key: --config.<key>=<value> (e.g. --config.agent.num_qs=2).",
    )
    parser.add_argument("--env", choices=sorted(presets.PRESETS), default=None)
    parser.add_argument("--resume", default=None, help="a run directory to continue")
    for name, (_, kwargs) in FLAGS.items():
        parser.add_argument(f"--{name}", default=None, **kwargs)
    for name in IGNORED_FLAGS:
        parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no_progress", action="store_true", help="hide the tqdm bar")
    return parser


def _lookup(config: ml_collections.ConfigDict, path: str) -> tuple[Any, str]:
    *parents, leaf = path.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise KeyError(f"config has no section {'.'.join(parents[: i + 1])!r}")
        node = node[part]
    return node, leaf


def _parse_like(text: str, current: Any, key: str) -> Any:
    """Parse `text` with the type of the value it replaces."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--config.{key}: expected true/false, got {text!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            return _int(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"--config.{key}: {e}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--config.{key}: expected a number, got {text!r}") from None
    if isinstance(current, tuple | list):
        items = text.strip("()[]").split(",")
        try:
            return tuple(ast.literal_eval(i.strip()) for i in items if i.strip())
        except (ValueError, SyntaxError):
            raise ValueError(
                f"--config.{key}: expected a comma-separated list, got {text!r}"
            ) from None
    if isinstance(current, str):
        return text
    try:  # a new key or a None value: a Python literal if it is one, else a string
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_key(config: ml_collections.ConfigDict, path: str, value: Any, *, parse: bool) -> None:
    """config[path] = value; with `parse`, `value` is command-line text parsed by type."""
    try:
        node, leaf = _lookup(config, path)
    except KeyError as e:
        raise ValueError(f"--config.{path}: {e.args[0]}") from None
    if leaf not in node:
        section = path.split(".")[0]
        if not (path.count(".") >= 1 and section in OPEN_SECTIONS):
            raise ValueError(
                f"unknown config key {path!r}; known top-level keys: {sorted(config.keys())}"
            )
        current = None
    else:
        current = node[leaf]
    new = _parse_like(value, current, path) if parse else value
    try:
        node[leaf] = new
    except TypeError:
        # ConfigDict keeps a field's first type; the flags were already type-checked, so a
        # deliberate change (target_entropy "auto" -> 0.0) replaces the field.
        del node[leaf]
        node[leaf] = new


def _config_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """['--config.a.b=1', '--config.c', '2'] -> [('a.b', '1'), ('c', '2')]."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise ValueError(f"unrecognised argument {arg!r} (see --help)")
        body = arg[len("--config.") :]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(extra):
            key, value = body, extra[i + 1]
            i += 1
        else:
            raise ValueError(f"{arg} needs a value: --config.{body}=<value>")
        out.append((key, value))
        i += 1
    return out


def validate(config: ml_collections.ConfigDict) -> None:
    """Cross-field checks that the flag types cannot express."""
    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {config.algorithm!r}")
    if config.noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {config.noise_mode!r}")
    if config.wandb_mode not in WANDB_MODES:
        raise ValueError(f"wandb_mode must be one of {WANDB_MODES}, got {config.wandb_mode!r}")
    for key in ("query_freq", "num_envs", "batch_size", "multi_grad_step", "resize_image"):
        if int(config[key]) <= 0:
            raise ValueError(f"{key} must be > 0, got {config[key]}")
    if not float(config.action_magnitude) > 0:
        raise ValueError(f"action_magnitude must be > 0, got {config.action_magnitude}")
    if config.env_mode not in ("subprocess", "inline"):
        raise ValueError(f"env_mode must be 'subprocess' or 'inline', got {config.env_mode!r}")


def parse_config(argv: list[str] | None = None) -> tuple[ml_collections.ConfigDict, Any]:
    """The run's config: preset (or a resumed run's config.json) + flags + --config overrides.

    Raises SystemExit (argparse) for malformed flags and ValueError for bad --config overrides.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = _config_overrides(extra)
    if args.resume:
        saved = Path(args.resume) / "config.json"
        if not saved.is_file():
            raise ValueError(
                f"--resume {args.resume}: no config.json there; pass the run directory that a "
                "previous launch printed (it holds config.json and checkpoints/)."
            )
        config = ml_collections.ConfigDict(json.loads(saved.read_text()))
        if args.env is not None and presets.PRESETS[args.env] != presets.PRESETS.get(config.env):
            raise ValueError(
                f"--env {args.env} does not match the resumed run's env {config.env!r}"
            )
    else:
        config = presets.get_preset(args.env or "demo")
    for name, (path, _) in FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if name == "hidden_dims":
            value = tuple(value) * 3 if len(value) == 1 else tuple(value)
        set_key(config, path, value, parse=False)
    for key, value in overrides:
        set_key(config, key, value, parse=True)
    validate(config)
    return config, args


# --------------------------------------------------------------------------------------------
# Building the run


def make_vector_env(config: ml_collections.ConfigDict):
    from dsrl.envs import make_env
    from dsrl.envs.vector import VectorEnv

    kwargs = dict(config.env_kwargs.to_dict())
    # The demo env calls its agent image size `image_size`; the robot envs `resize_image`.
    kwargs["image_size" if config.env == "demo" else "resize_image"] = int(config.resize_image)
    env_fn = functools.partial(make_env, config.env, **kwargs)
    return VectorEnv([env_fn] * int(config.num_envs), mode=config.env_mode)


def make_base_policy(config: ml_collections.ConfigDict):
    bp = config.base_policy
    if bp.get("remote"):
        from dsrl.base_policies.remote import RemotePolicy, parse_address

        host, port = parse_address(bp.remote)
        return RemotePolicy(host, port)
    if bp.kind == "flow_mlp":
        from dsrl.base_policies.flow_mlp import FlowMLPPolicy

        return FlowMLPPolicy.load(bp.checkpoint) if bp.checkpoint else FlowMLPPolicy.load_demo()
    if bp.kind == "pi0":
        from dsrl.base_policies.pi0 import Pi0Policy

        kwargs = {"robot": bp.robot, "variant": bp.variant, "dtype": bp.dtype}
        if bp.get("tokenizer_path"):
            kwargs["tokenizer_path"] = bp.tokenizer_path
        if bp.get("num_steps"):
            kwargs["num_steps"] = int(bp.num_steps)
        return Pi0Policy.from_checkpoint(bp.checkpoint, **kwargs)
    raise ValueError(f"unknown base_policy.kind {bp.kind!r}; use 'flow_mlp' or 'pi0'")


def agent_config(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict):
    """The learner's default config updated with the preset's `agent` section."""
    agent_cfg = ml_collections.ConfigDict(defaults.to_dict())
    overrides = dict(config.agent.to_dict())
    overrides["action_magnitude"] = float(config.action_magnitude)
    if "discount" in agent_cfg:
        overrides["discount"] = float(config.discount)
    unknown = sorted(set(overrides) - set(agent_cfg.keys()))
    if unknown:
        raise ValueError(
            f"unknown learner option(s) {unknown} in config.agent; the {config.algorithm} "
            f"learner accepts {sorted(agent_cfg.keys())}"
        )
    for key, value in overrides.items():
        if isinstance(agent_cfg[key], tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            agent_cfg[key] = value
        except TypeError:  # a typed field changing type on purpose (target_entropy "auto" -> 0.0)
            del agent_cfg[key]
            agent_cfg[key] = value
    return agent_cfg


def make_agent(config, observation_spec, action_dim, base_policy=None, noise_param=None):
    if config.algorithm == "pixel_sac":
        from dsrl.agents.pixel_sac.learner import PixelSACLearner

        cfg = agent_config(config, PixelSACLearner.default_config())
        return PixelSACLearner.create(int(config.seed), observation_spec, action_dim, cfg)
    try:
        na = importlib.import_module("dsrl.agents.noise_aliasing")
        learner_cls = na.NoiseAliasingLearner
    except (ImportError, AttributeError) as e:
        raise ValueError(
            "--algorithm dsrl_na needs dsrl.agents.noise_aliasing.NoiseAliasingLearner, which this "
            f"checkout does not provide ({e}); use --algorithm pixel_sac."
        ) from None
    cfg = agent_config(config, learner_cls.default_config())
    return learner_cls.create(
        int(config.seed),
        observation_spec,
        action_dim,
        cfg,
        base_policy=base_policy,
        noise_param=noise_param,
        query_freq=int(config.query_freq),
    )


@dataclasses.dataclass
class Run:
    config: ml_collections.ConfigDict
    run_dir: Path
    vec_env: Any
    steering: Any
    agent: Any
    buffer: Any
    logger: Any
    checkpointer: Any
    state: Any


def _jsonable(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def open_run_dir(config: ml_collections.ConfigDict, resume_dir: str | None = None) -> Path:
    """The run directory (`resume_dir`, or a new one under config.logdir) with the resolved
    config written into it as config.json (what --resume reloads)."""
    from dsrl.utils.logging import make_run_dir

    if resume_dir:
        run_dir = Path(resume_dir)
    else:
        run_dir = Path(make_run_dir(config.logdir, config.prefix, int(config.seed)))
    (run_dir / "config.json").write_text(json.dumps(_jsonable(config), indent=2))
    return run_dir


def make_steering(config: ml_collections.ConfigDict, base_policy: Any):
    """(noise parameterisation, Steering) for the configured noise mode and query frequency."""
    from dsrl.envs.steering import make_noise_param
    from dsrl.training.rollout import Steering

    noise_param = make_noise_param(
        config.noise_mode,
        tuple(base_policy.noise_shape),
        float(config.action_magnitude),
        **config.noise_kwargs.to_dict(),
    )
    return noise_param, Steering(base_policy, noise_param, int(config.query_freq))


def build_run(config: ml_collections.ConfigDict, resume_dir: str | None = None) -> Run:
    """Create (or reload) every component of a run."""
    from dsrl.data.replay_buffer import ReplayBuffer
    from dsrl.training import loop
    from dsrl.utils.checkpoints import RunCheckpointer
    from dsrl.utils.logging import RunLogger

    run_dir = open_run_dir(config, resume_dir)
    base_policy = make_base_policy(config)
    noise_param, steering = make_steering(config, base_policy)
    vec_env = make_vector_env(config)
    spec = vec_env.spec
    agent = make_agent(
        config, spec.observation_spec, noise_param.action_dim, base_policy, noise_param
    )
    chunks = bool(config.store_action_chunks) or config.algorithm == "dsrl_na"
    # DSRL-NA runs the base policy on stored observations: the buffer keeps its inputs too.
    buffer_spec = {**spec.observation_spec, **getattr(agent, "policy_observation_spec", {})}
    example = loop.example_transition(
        buffer_spec,
        noise_param.action_dim,
        query_freq=int(config.query_freq) if chunks else None,
        robot_action_dim=int(base_policy.action_dim) if chunks else None,
        noise_shape=tuple(base_policy.noise_shape) if chunks else None,
    )
    capacity = int(config.replay_buffer_capacity)
    if capacity <= 0:
        capacity = max(int(config.max_steps) // int(config.multi_grad_step), 1)
        capacity = max(capacity, int(config.start_online_updates) + 1)
    buffer = ReplayBuffer(example, capacity=capacity, seed=int(config.seed))
    checkpointer = RunCheckpointer(run_dir)
    state = None
    if resume_dir:
        restored = loop.restore(checkpointer, agent)
        if restored is None:
            print(f"[dsrl] {run_dir} has no checkpoint yet: starting it from scratch")
        else:
            agent, state, buffer = restored
            print(
                f"[dsrl] resumed {run_dir} at gradient step {state.grad_steps}, "
                f"{state.env_steps} env steps, buffer {len(buffer)}"
            )
    logger = RunLogger(
        run_dir,
        _jsonable(config),
        project=config.wandb_project,
        wandb_mode=config.wandb_mode,
    )
    return Run(config, run_dir, vec_env, steering, agent, buffer, logger, checkpointer, state)


def make_loop_config(config: ml_collections.ConfigDict, agent: Any, progress: bool = True):
    """The loop settings of a run; DSRL-NA also stores the executed chunks, the noise and the
    base policy's observation keys (its update runs the base policy on stored observations)."""
    from dsrl.training import loop

    return dataclasses.replace(
        loop.LoopConfig.from_config(config),
        progress=progress,
        store_action_chunks=bool(config.store_action_chunks) or config.algorithm == "dsrl_na",
        policy_observation_keys=tuple(getattr(agent, "policy_observation_spec", {})),
    )


def demo_summary(result, run_dir: Path) -> str:
    """Base vs steered success table for the demo (and the success plot written next to it)."""
    from dsrl.training.plots import plot_success

    evals = result.evaluations
    first, last = evals[0], evals[-1]
    rows = [
        ("base policy, i.i.d. noise", first.get("evaluation_base_iid/success_rate")),
        ("base policy, warm-up noise family", first.get("evaluation_base_warmup/success_rate")),
        ("DSRL, deterministic (actor mode)", last.get("evaluation_mode/success_rate")),
        ("DSRL, sampled actions", last.get("evaluation/success_rate")),
    ]
    lines = [f"{'policy':<36} success", "-" * 44]
    lines += [f"{name:<36} {value:.2f}" for name, value in rows if value is not None]
    png = plot_success(run_dir, run_dir / "success_vs_env_steps.png")
    lines += [
        f"after {int(last['env_steps'])} env steps, {int(last['step'])} gradient steps, "
        f"{result.time['time/total_s']:.0f} s",
        f"plot: {png}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        config, args = parse_config(argv)
    except ValueError as e:
        parser.error(str(e))
    from dsrl.training import loop

    run = build_run(config, resume_dir=args.resume)
    print(f"[dsrl] run dir: {run.run_dir}")
    loop_cfg = make_loop_config(config, run.agent, progress=not args.no_progress)
    start = time.perf_counter()
    try:
        result = loop.train(
            env=run.vec_env,
            steering=run.steering,
            agent=run.agent,
            buffer=run.buffer,
            config=loop_cfg,
            logger=run.logger,
            checkpointer=run.checkpointer,
            state=run.state,
        )
    finally:
        run.logger.close()
        run.vec_env.close()
        run.checkpointer.close()
    print(f"[dsrl] done in {time.perf_counter() - start:.0f} s; metrics: {run.run_dir}")
    if config.env == "demo" and result.evaluations:
        print(demo_summary(result, run.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
