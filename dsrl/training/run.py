"""Run assembly: one typed `RunConfig` and `build_run`, what both launchers call.

A run's config is one frozen `RunConfig` with a section per layer of the data flow:

    env          which env, its kwargs, how many, in which processes, the agent's image size
    base_policy  the frozen policy (local checkpoint or a policy server)
    steering     latent -> noise (noise mode, action_magnitude) and query_freq
    agent        the algorithm and overrides of its learner's default config
    execution    how a block of K gradient steps runs on the backend (`ExecutionConfig`)
    loop         the training loop (`dsrl.training.loop.LoopConfig`)
    replay       replay-buffer capacity and optional extra stored fields
    log          run directory, W&B project and mode

It is built from a preset (`dsrl.presets`, ml_collections files in this layout) updated with
command-line values: the reference's flag names (`FLAGS`, a plain table of RunConfig paths) and
`--config.<path>=<value>`. Values given as text are parsed with the type of the field they set.
Older flat keys (`--config.num_envs`, `agent.update_mode`, a config.json written before
`CONFIG_VERSION` 2) map onto today's paths through `LEGACY_KEYS`.

`build_run` creates (or, with `resume_dir`, restores) every component. It writes the run's
`config.json` only once everything is built and a resume has restored, and a launch that fails
before training removes the run directory it created.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsrl import presets
from dsrl.agents.config import ALIASES as LEARNER_ALIASES
from dsrl.agents.execution import ExecutionConfig
from dsrl.agents.spec import TransitionSpec
from dsrl.steering import MODES as NOISE_MODES
from dsrl.steering import Steering, make_noise_param
from dsrl.training import loop
from dsrl.training.loop import LoopConfig

CONFIG_VERSION = 2  # 2: the sectioned layout below; 1 (no "version" key): flat keys
CONFIG_FILE = "config.json"
ALGORITHMS = ("pixel_sac", "dsrl_na")
WANDB_MODES = ("offline", "online", "disabled")
ENV_MODES = ("subprocess", "inline", "ray")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the value and the fix."""


def _need(ok: bool, path: str, rule: str, value: Any) -> None:
    if not ok:
        flag = _FLAG_OF.get(path)
        fix = f"--{flag}" if flag else f"--config.{path}"
        raise ConfigError(f"{path} must be {rule}, got {value!r} (set it with {fix})")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


# --------------------------------------------------------------------------------------------
# The config


@dataclasses.dataclass(frozen=True)
class EnvSection:
    name: str = "demo"  # demo | libero | aloha | droid (the real robot)
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # env constructor
    mode: str = "subprocess"  # env workers: "subprocess", "inline" (in this process) or "ray"
    num_envs: int = 1
    ray_address: str = ""  # mode "ray": "" a local Ray in this process; "auto" | host:port
    ray_num_cpus: float = 1.0  # mode "ray": CPUs each env worker asks of the cluster
    image_size: int = 64  # the agent's image size (the reference's --resize_image)
    robot: str = "droid"  # droid only: "droid" (hardware) or "sim" (a simulated RobotEnv)
    use_prefix_feature: bool = False  # droid only: append Pi0's prefix feature to the state
    prefix_feature_dim: int = 2048
    # Smooth chunk boundaries (dsrl.envs.smoothing), the same in sim and on the real robot:
    blend_steps: int = 0  # first steps of a new chunk cross-faded from the previous plan
    max_action_delta: float = 0.0  # cap on the per-step, per-dimension action change; 0: none
    # False: the agent sees the image only (the reference's --add_states 0; the base policy
    # still reads the robot state, see dsrl.envs.wrappers.DropAgentState).
    add_states: bool = True
    # The reference's --num_cameras: RGB cameras stacked on the agent's pixel channels; checked
    # against the env when the run is built. 0: whatever the env gives.
    num_cameras: int = 0
    # Env worker deadlines (seconds) and how many failures in a row of one worker stop the run
    # (dsrl.envs.vector.VectorEnv): a stalled or dead worker is restarted, its episode dropped.
    start_timeout_s: float = 600.0
    reset_timeout_s: float = 300.0
    step_timeout_s: float = 300.0
    max_worker_failures: int = 3

    def __post_init__(self):
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        for name in ("start_timeout_s", "reset_timeout_s", "step_timeout_s"):
            value = getattr(self, name)
            _need(value > 0 and math.isfinite(value), f"env.{name}", "> 0 seconds", value)
        _need(
            self.max_worker_failures >= 1,
            "env.max_worker_failures",
            ">= 1",
            self.max_worker_failures,
        )
        _need(self.blend_steps >= 0, "env.blend_steps", ">= 0 (0: no blending)", self.blend_steps)
        delta = self.max_action_delta
        ok = isinstance(delta, int | float) and math.isfinite(delta) and delta >= 0
        _need(ok, "env.max_action_delta", "a finite number >= 0 (0: no cap)", delta)
        _need(self.mode in ENV_MODES, "env.mode", f"one of {ENV_MODES}", self.mode)
        for name in ("num_envs", "image_size", "prefix_feature_dim"):
            value = getattr(self, name)
            _need(_positive_int(value), f"env.{name}", "> 0 (a positive integer)", value)
        _need(self.robot in ("droid", "sim"), "env.robot", "'droid' or 'sim'", self.robot)
        _need(self.num_cameras >= 0, "env.num_cameras", ">= 0 (0: any)", self.num_cameras)
        if {"tasks", "task_sampling"} & set(self.kwargs):  # LIBERO suite tasks, checked now
            _suite_env_fns(self, dict(self.kwargs))
        _need(self.ray_num_cpus >= 0, "env.ray_num_cpus", ">= 0", self.ray_num_cpus)
        if self.ray_address:
            _need(
                self.ray_address == "auto" or _is_host_port(self.ray_address),
                "env.ray_address",
                "'auto', host:port (the head node of `ray start --head`), or '' for a local Ray",
                self.ray_address,
            )


@dataclasses.dataclass(frozen=True)
class BasePolicySection:
    kind: str = "flow_mlp"  # flow_mlp (the demo's) | pi0
    # flow_mlp: "" the shipped demo policy, "libero" the shipped LIBERO CPU policy, or a directory
    checkpoint: str = ""
    variant: str = "full"
    dtype: str = "bfloat16"
    robot: str = ""  # Pi0's robot transforms: libero | aloha | droid
    remote: str = ""  # host:port of a policy server instead of a local model
    num_steps: int = 0  # flow-integration steps; 0: the policy's default
    tokenizer_path: str = ""
    # Pi0's chunk length (e.g. 50, the reference's LIBERO/Aloha horizon, on the `tiny` variant);
    # 0: the variant's own (full/dummy 50, tiny 10). A local Pi0 only.
    action_horizon: int = 0
    ray: bool = False  # run the model in a Ray actor (the cluster of env.ray_address)
    ray_num_gpus: float = 0.0  # ray only: GPUs the actor asks for (1: place it on a GPU node)

    def __post_init__(self):
        _need(self.kind in ("flow_mlp", "pi0"), "base_policy.kind", "flow_mlp or pi0", self.kind)
        _need(self.num_steps >= 0, "base_policy.num_steps", ">= 0", self.num_steps)
        _need(self.action_horizon >= 0, "base_policy.action_horizon", ">= 0", self.action_horizon)
        if self.action_horizon and (self.kind != "pi0" or self.remote):
            raise ConfigError(
                f"base_policy.action_horizon={self.action_horizon} sets the chunk length of a "
                "local Pi0 only; "
                + (
                    "a policy server's chunk length is the served model's (set it there)"
                    if self.remote
                    else f"the {self.kind} base policy's horizon is fixed by its checkpoint"
                )
                + ": remove --config.base_policy.action_horizon"
            )
        _need(self.ray_num_gpus >= 0, "base_policy.ray_num_gpus", ">= 0", self.ray_num_gpus)
        _need(
            not (self.ray and self.remote),
            "base_policy.ray",
            "False with base_policy.remote (a policy server already runs the model elsewhere)",
            self.ray,
        )
        if self.remote:
            from dsrl.base_policies.remote import parse_address

            try:
                parse_address(self.remote)
            except ValueError as e:
                raise ConfigError(f"--pi0_remote: {e}") from None


@dataclasses.dataclass(frozen=True)
class SteeringSection:
    noise_mode: str = "repeat"  # see dsrl.steering
    action_magnitude: float = 1.0  # bound on the agent's latent
    query_freq: int = 20  # env steps executed per base-policy query
    num_basis: int = 3  # noise_mode "basis" only
    controlled_dims: int = 0  # leading noise dims the agent sets; 0: all

    def __post_init__(self):
        _need(
            self.noise_mode in NOISE_MODES, "steering.noise_mode", str(NOISE_MODES), self.noise_mode
        )
        magnitude = self.action_magnitude
        finite = isinstance(magnitude, int | float) and math.isfinite(magnitude)
        _need(finite and magnitude > 0, "steering.action_magnitude", "finite and > 0", magnitude)
        for name in ("query_freq", "num_basis"):
            value = getattr(self, name)
            _need(_positive_int(value), f"steering.{name}", "> 0 (a positive integer)", value)
        _need(self.controlled_dims >= 0, "steering.controlled_dims", ">= 0", self.controlled_dims)


@dataclasses.dataclass(frozen=True)
class AgentSection:
    """The algorithm and overrides of its learner's default config. In a config tree both sit
    in one "agent" mapping (`agent.algorithm`, `agent.num_qs`, ...)."""

    algorithm: str = "pixel_sac"
    learner: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # JSON gives lists: tuples, so a reloaded config equals the one that was saved.
        learner = {k: tuple(v) if isinstance(v, list) else v for k, v in self.learner.items()}
        object.__setattr__(self, "learner", learner)
        _need(self.algorithm in ALGORITHMS, "agent.algorithm", str(ALGORITHMS), self.algorithm)


@dataclasses.dataclass(frozen=True)
class ReplaySection:
    capacity: int = -1  # -1: max_steps // multi_grad_step (the reference), at least what
    # updates need to start
    store_action_chunks: bool = False  # also store executed chunks and noises (for analysis)


@dataclasses.dataclass(frozen=True)
class LogSection:
    prefix: str = "dsrl"
    wandb_project: str = "DSRL"
    wandb_mode: str = "offline"
    logdir: str = "runs"
    # Checkpoints kept (the newest verified one is never deleted; see dsrl.utils.checkpoints).
    checkpoints_to_keep: int = 2

    def __post_init__(self):
        _need(
            self.checkpoints_to_keep >= 1,
            "log.checkpoints_to_keep",
            ">= 1",
            self.checkpoints_to_keep,
        )
        _need(self.wandb_mode in WANDB_MODES, "log.wandb_mode", str(WANDB_MODES), self.wandb_mode)
        _need(
            bool(self.prefix) and "/" not in self.prefix,
            "log.prefix",
            "a non-empty name without '/'",
            self.prefix,
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    env: EnvSection = EnvSection()
    base_policy: BasePolicySection = BasePolicySection()
    steering: SteeringSection = SteeringSection()
    agent: AgentSection = AgentSection()
    execution: ExecutionConfig = ExecutionConfig()
    loop: LoopConfig = LoopConfig()
    replay: ReplaySection = ReplaySection()
    log: LogSection = LogSection()

    def __post_init__(self):
        self.learner_config()  # a bad learner option fails here, before anything starts
        loop.check_buffer_capacity(self.replay_capacity, self.loop)
        self._check_ray()

    def _check_ray(self) -> None:
        """Ray settings that only make sense together."""
        uses_ray = self.env.mode == "ray" or self.base_policy.ray
        if self.env.ray_address and not uses_ray:
            raise ConfigError(
                f"--ray_address {self.env.ray_address} is given but nothing runs on Ray: add "
                "--env_backend ray and/or --config.base_policy.ray=true, or drop --ray_address"
            )
        in_update = self.agent.learner.get("num_aliases", -1) == 0
        if self.base_policy.ray and self.agent.algorithm == "dsrl_na" and in_update:
            raise ConfigError(
                "base_policy.ray=true cannot serve --algorithm dsrl_na with --num_aliases 0, whose "
                "update runs the base policy inside its jitted step in this process; keep the "
                "stored aliases (--num_aliases -1 or K > 0) or drop base_policy.ray"
            )

    @property
    def replay_capacity(self) -> int:
        if self.replay.capacity > 0:
            return self.replay.capacity
        capacity = max(self.loop.max_steps // self.loop.multi_grad_step, 1)
        return max(capacity, self.loop.start_online_updates + 1)

    def learner_config(self) -> Any:
        """The learner's validated config: its defaults, the preset's and the command line's
        `agent` overrides, and the two values the learner shares with the run (the latent bound
        is the steering's action_magnitude; the discount is the loop's)."""
        _, config_cls = learner_classes(self.agent.algorithm)
        values = dict(self.agent.learner)
        fields = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise unknown_learner_options(self.agent.algorithm, unknown, fields)
        values["action_magnitude"] = float(self.steering.action_magnitude)
        if "discount" in fields:
            values["discount"] = float(self.loop.discount)
        return config_cls.from_config_dict(values)

    def to_tree(self) -> dict[str, Any]:
        """The JSON-able nested dict written to config.json (with the config version)."""
        tree = {"version": CONFIG_VERSION}
        for section in dataclasses.fields(self):
            values = dataclasses.asdict(getattr(self, section.name))
            if section.name == "agent":
                values = {"algorithm": values["algorithm"], **values["learner"]}
            tree[section.name] = _plain(values)
        return tree

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any]) -> RunConfig:
        """A RunConfig from a nested mapping in the layout of `to_tree` (missing keys keep their
        defaults; an unknown key is an error naming the valid ones)."""
        tree = _canonical(tree)
        sections = {}
        hints = typing.get_type_hints(cls)
        for name, values in tree.items():
            if name not in hints:
                raise ConfigError(f"unknown config key {name!r}; known sections: {sorted(hints)}")
            if not isinstance(values, Mapping):
                raise ConfigError(f"config key {name!r} must be a section (a mapping)")
            if name == "agent":
                values = dict(values)
                algorithm = values.pop("algorithm", AgentSection.algorithm)
                sections[name] = AgentSection(algorithm=algorithm, learner=values)
            else:
                sections[name] = _build_section(hints[name], values, name)
        try:
            return cls(**sections)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _build_section(section_cls: type, values: Mapping[str, Any], name: str) -> Any:
    hints = typing.get_type_hints(section_cls)
    known = {f.name for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {f'{name}.{unknown[0]}'!r}; {name} has {sorted(known)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    try:
        return section_cls(**kwargs)
    except ValueError as e:  # a section's own check (e.g. LoopConfig's) names the value
        raise ConfigError(str(e)) from None


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """A preset's or a config.json's value as the field's type (JSON lists -> tuples, ints ->
    floats); a value of another type is an error naming the field."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    simple = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if hint in simple and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{path} must be {simple[hint]}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Names: the reference's flags and older flat keys, as RunConfig paths

# The reference's flag names (both launchers).
FLAGS = {
    "seed": "loop.seed",
    "batch_size": "loop.batch_size",
    "max_steps": "loop.max_steps",
    "max_env_steps": "loop.max_env_steps",
    "multi_grad_step": "loop.multi_grad_step",
    "update_block": "loop.update_block",
    "start_online_updates": "loop.start_online_updates",
    "eval_interval": "loop.eval_interval",
    "eval_episodes": "loop.eval_episodes",
    "log_interval": "loop.log_interval",
    "checkpoint_interval": "loop.checkpoint_interval",
    "discount": "loop.discount",
    "resize_image": "env.image_size",
    "num_envs": "env.num_envs",
    "env_backend": "env.mode",
    "ray_address": "env.ray_address",
    "action_magnitude": "steering.action_magnitude",
    "query_freq": "steering.query_freq",
    "noise_mode": "steering.noise_mode",
    "algorithm": "agent.algorithm",
    "prefix": "log.prefix",
    "wandb_project": "log.wandb_project",
    "wandb_mode": "log.wandb_mode",
    "logdir": "log.logdir",
    "pi0_checkpoint": "base_policy.checkpoint",
    "pi0_variant": "base_policy.variant",
    "pi0_remote": "base_policy.remote",
    "hidden_dims": "agent.hidden_dims",  # one value N means (N, N, N): the learner's rule
    "num_qs": "agent.num_qs",
    "target_entropy": "agent.target_entropy",
    "actor_lr": "agent.actor_lr",
    "critic_lr": "agent.critic_lr",
    "temp_lr": "agent.temp_lr",
    "tau": "agent.tau",
    "critic_reduction": "agent.critic_reduction",
    "encoder_type": "agent.encoder",
    "use_step_penalty": "loop.use_step_penalty",
    "train_actor_steps": "agent.train_actor_steps",
    "num_aliases": "agent.num_aliases",  # DSRL-NA's stored aliases per transition
    "blend_steps": "env.blend_steps",
    "max_action_delta": "env.max_action_delta",
    # The reference's encoder flags (its learner's constructor arguments).
    "cnn_features": "agent.cnn_features",
    "cnn_strides": "agent.cnn_strides",
    "cnn_padding": "agent.cnn_padding",
    "latent_dim": "agent.bottleneck_dim",  # the reference's name of the bottleneck width
    "dropout_rate": "agent.dropout_rate",
    "aug_next": "agent.aug_next",
    "softmax_temperature": "agent.softmax_temperature",
    "use_spatial_softmax": "agent.encoder_pooling",  # 1: "spatial_softmax", 0: "flatten"
    "use_bottleneck": "agent.use_bottleneck",  # checked, not stored: see _flag_value
    "encoder_norm": "agent.encoder_norm",  # accepted, does nothing: see IGNORED_FLAGS
    "num_cameras": "env.num_cameras",
    "add_states": "env.add_states",
}
# Flags that take several values (`--cnn_features 32 32 32 32`, the reference's nargs='+').
LIST_FLAGS = ("hidden_dims", "cnn_features", "cnn_strides")
# The real-robot launcher's own flags (the reference's run_real.sh names).
REAL_FLAGS = {
    "left_camera_id": "env.kwargs.left_camera_id",
    "right_camera_id": "env.kwargs.right_camera_id",
    "wrist_camera_id": "env.kwargs.wrist_camera_id",
    "instruction": "env.kwargs.prompt",
    "max_episode_steps": "env.kwargs.max_episode_steps",
    "robot": "env.robot",
    "num_initial_traj_collect": "loop.start_online_trajs",
    "use_prefix_feature": "env.use_prefix_feature",
}
# Accepted for compatibility with the reference's scripts; they change nothing here, and a run
# given one says so once at start-up (`notices`).
IGNORED_FLAGS = {
    "launch_group_id": "the W&B group is the run directory's name here",
    "suffix": "the run directory is <logdir>/<prefix>_<time>_s<seed>",
    "encoder_norm": "the 'small' encoder has no normalisation layer (as in the reference, which "
    "also ignored it); 'resnet' always uses GroupNorm",
}
CHOICES = {
    "steering.noise_mode": NOISE_MODES,
    "agent.algorithm": ALGORITHMS,
    "log.wandb_mode": WANDB_MODES,
    "agent.critic_reduction": ("mean", "min"),
    "env.robot": ("droid", "sim"),
    "env.mode": ENV_MODES,
}
# Flat keys of config version 1 (config.json, presets, `--config.<key>`) -> today's paths.
LEGACY_KEYS = {
    **{k: v for k, v in {**FLAGS, **REAL_FLAGS}.items() if not v.startswith("env.kwargs.")},
    **{f.name: f"loop.{f.name}" for f in dataclasses.fields(LoopConfig)},
    "env": "env.name",
    "env_mode": "env.mode",
    "prefix_feature_dim": "env.prefix_feature_dim",
    "replay_buffer_capacity": "replay.capacity",
    "store_action_chunks": "replay.store_action_chunks",
    # How K gradient steps run is no learner option any more.
    "agent.update_mode": "execution.mode",
    "agent.scan_length": "execution.scan_length",
}
# Version-1 sections whose keys moved as a whole.
LEGACY_SECTIONS = {"env_kwargs": "env.kwargs", "noise_kwargs": "steering"}
_FLAG_OF = {path: flag for flag, path in {**FLAGS, **REAL_FLAGS}.items()}
_FLAG_OF["agent.encoder_pooling"] = "config.agent.encoder_pooling"


def _flag_value(name: str, value: Any) -> Any:
    """A reference flag's value as its RunConfig field takes it (None: nothing to set)."""
    if name in LIST_FLAGS and isinstance(value, list):
        if name == "hidden_dims" and len(value) == 1:
            return int(value[0])  # one value N means (N, N, N): the learner's rule
        return tuple(int(v) for v in value)
    if name == "use_spatial_softmax":
        on = parse_text(str(value), bool, f"--{name}")
        return "spatial_softmax" if on else "flatten"
    if name == "use_bottleneck":
        if not parse_text(str(value), bool, f"--{name}"):
            raise ConfigError(
                "--use_bottleneck 0 is not supported: the encoder's features always pass through "
                "the bottleneck (Dense -> LayerNorm -> tanh, as in the reference's default); "
                "change its width with --latent_dim, or drop the flag"
            )
        return None
    if name in IGNORED_FLAGS:
        return None
    return value


def canonical_path(key: str) -> str:
    """Today's RunConfig path of a (possibly flat, version-1) dotted key."""
    if key in LEGACY_KEYS:
        return LEGACY_KEYS[key]
    head, _, rest = key.partition(".")
    if head == "agent" and rest in LEARNER_ALIASES:  # the reference's name of a learner option
        return f"agent.{LEARNER_ALIASES[rest]}"
    if rest and head in LEGACY_SECTIONS:
        return f"{LEGACY_SECTIONS[head]}.{rest}"
    return key


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out |= _flatten(value, f"{prefix}{key}.")
        elif not isinstance(value, Mapping):  # an empty section keeps its defaults
            out[f"{prefix}{key}"] = value
    return out


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parents[: i + 1])!r} is not a section")
    node[leaf] = value


def _canonical(tree: Mapping[str, Any]) -> dict[str, Any]:
    """`tree` with every key at today's path (see LEGACY_KEYS); drops the version key."""
    out: dict[str, Any] = {}
    for key, value in _flatten({k: v for k, v in tree.items() if k != "version"}).items():
        _set(out, canonical_path(key), value)
    return out


# --------------------------------------------------------------------------------------------
# Reading values given as text


def parse_text(text: str, hint: Any, where: str) -> Any:
    """Command-line text as a value of type `hint` (`where` names the flag in errors)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        for option in args:
            if option is not type(None) and option is not str:
                with contextlib.suppress(ValueError):
                    return parse_text(text, option, where)
        if str in args:
            return text
        raise ValueError(f"{where}: cannot read {text!r} as {hint}")
    if hint is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"{where}: expected true/false, got {text!r}")
    if hint is int:
        try:
            value = float(text)  # the reference writes 1e6
        except ValueError:
            value = math.nan
        if not value.is_integer():
            raise ValueError(f"{where}: expected an integer, got {text!r}")
        return int(value)
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if hint is str:
        return text
    if origin is tuple:
        item = args[0] if args else Any
        parts = [p.strip() for p in text.strip("()[]").split(",") if p.strip()]
        return tuple(parse_text(p, item, where) for p in parts)
    try:  # an open mapping's value: a Python literal if it is one, else a string
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _field_hint(tree: Mapping[str, Any], path: str) -> Any:
    """The type of the RunConfig field at `path` (Any inside open mappings)."""
    section, _, rest = path.partition(".")
    hints = typing.get_type_hints(RunConfig)
    if section not in hints or not rest:
        raise ConfigError(f"unknown config key {path!r}; known sections: {sorted(hints)}")
    if section == "agent":
        if rest == "algorithm":
            return str
        algorithm = tree.get("agent", {}).get("algorithm", AgentSection.algorithm)
        _, config_cls = learner_classes(algorithm)
        learner_hints = typing.get_type_hints(config_cls)
        if rest not in learner_hints:
            raise unknown_learner_options(algorithm, [rest], learner_hints)
        return learner_hints[rest]
    field, _, deeper = rest.partition(".")
    section_hints = typing.get_type_hints(hints[section])
    if field not in section_hints:
        raise ConfigError(f"unknown config key {path!r}; {section} has {sorted(section_hints)}")
    if deeper:
        if typing.get_origin(section_hints[field]) is not Mapping:
            raise ConfigError(f"unknown config key {path!r}: {section}.{field} is a value")
        return Any
    return section_hints[field]


def unknown_learner_options(algorithm: str, unknown: Sequence[str], accepted: Any) -> ConfigError:
    """The error for learner options the algorithm lacks, naming the algorithm that has them
    (e.g. --num_aliases with pixel_sac)."""
    hints = []
    for name in unknown:
        owners = [
            other
            for other in ALGORITHMS
            if other != algorithm and name in typing.get_type_hints(learner_classes(other)[1])
        ]
        if owners:
            flag = f"--{_FLAG_OF.get(f'agent.{name}', f'config.agent.{name}')}"
            hints.append(
                f"{flag} is an option of {' / '.join(owners)} only: pass --algorithm "
                f"{owners[0]} or drop it"
            )
    return ConfigError(
        f"unknown learner option(s) {sorted(unknown)} in agent; the {algorithm} learner accepts "
        f"{sorted(accepted)}" + "".join(f"; {h}" for h in hints)
    )


def apply(tree: dict[str, Any], key: str, value: Any, *, where: str) -> None:
    """tree[key] = value, `key` in today's or a legacy spelling; text is parsed by type."""
    path = canonical_path(key)
    if isinstance(value, str):
        value = parse_text(value, _field_hint(tree, path), where)
    else:
        _field_hint(tree, path)  # still an error for an unknown key
    _set(tree, path, value)


def config_overrides(extra: Sequence[str]) -> list[tuple[str, str]]:
    """['--config.a.b=1', '--config.c', '2'] -> [('a.b', '1'), ('c', '2')]."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unrecognised argument {arg!r} (see --help)")
        body = arg[len("--config.") :]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(extra):
            key, value = body, extra[i + 1]
            i += 1
        else:
            raise ConfigError(f"{arg} needs a value: --config.{body}=<value>")
        out.append((key, value))
        i += 1
    return out


def read_config_file(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The config tree saved in a run directory, in today's layout."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"--resume {run_dir}: no {CONFIG_FILE} there; pass the run directory that a previous "
            "launch printed (it holds config.json and checkpoints/)."
        )
    try:
        tree = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{path} is not valid JSON ({e}); restore it from a copy, or start a new run"
        ) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} holds {type(tree).__name__}, not a config mapping")
    version = tree.get("version", 1)
    if version not in (1, CONFIG_VERSION):
        raise ConfigError(
            f"{path} has config version {version!r}; this dsrl reads versions 1 and "
            f"{CONFIG_VERSION}. Resume it with the dsrl version that wrote it."
        )
    try:
        return _canonical(tree)
    except ConfigError as e:
        raise ConfigError(f"{path} (config version {version}): {e}") from None


def load_config(
    preset: str | None = None,
    *,
    resume: str | os.PathLike | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> RunConfig:
    """The preset (or a resumed run's config.json), then flags (by reference name), then
    `--config` overrides (by path), validated. Raises ConfigError naming the bad value."""
    if resume:
        tree = read_config_file(resume)
        saved_env = tree.get("env", {}).get("name")
        if preset is not None and presets.get_preset(preset).env.name != saved_env:
            raise ConfigError(f"--env {preset} does not match the resumed run's env {saved_env!r}")
    else:
        tree = _canonical(presets.get_preset(preset).to_dict())
    # The algorithm first: it decides which learner options exist.
    ordered = sorted((flags or {}).items(), key=lambda kv: kv[0] != "algorithm")
    for name, value in ordered:
        if value is not None:
            value = _flag_value(name, value)
        if value is None:
            continue
        apply(tree, {**FLAGS, **REAL_FLAGS}[name], value, where=f"--{name}")
    for key, value in overrides:
        apply(tree, key, value, where=f"--config.{key}")
    return RunConfig.from_tree(tree)


# --------------------------------------------------------------------------------------------
# The command line (both launchers)


def make_parser(description: str, flags: Mapping[str, str]) -> argparse.ArgumentParser:
    """--resume, the given reference flags (`flags`: name -> RunConfig path), the reference's
    ignored flags and --no_progress; `--config.<path>=<value>` is read from the rest."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Any config value: --config.<path>=<value> (e.g. --config.agent.num_qs=2).",
    )
    parser.add_argument("--resume", default=None, help="a run directory to continue")
    for name, path in flags.items():
        kwargs: dict[str, Any] = {"default": None, "help": f"sets {path}"}
        if name == "hidden_dims":
            kwargs |= {"nargs": "+", "help": "one value N means (N, N, N)"}
        elif name in LIST_FLAGS:
            kwargs |= {"nargs": "+", "help": f"sets {path} (one value per layer)"}
        elif name in IGNORED_FLAGS:
            kwargs["help"] = (
                f"accepted for the reference's scripts; does nothing: {IGNORED_FLAGS[name]}"
            )
        elif name == "use_prefix_feature":
            kwargs |= {"action": "store_true"}
        elif path in CHOICES:
            kwargs["choices"] = CHOICES[path]
        parser.add_argument(f"--{name}", **kwargs)
    for name in IGNORED_FLAGS:
        if name not in flags:
            parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no_progress", action="store_true", help="hide the tqdm bar")
    from dsrl.training import eval_only

    eval_only.add_arguments(parser)  # --eval_only, --checkpoint_step, --eval_seeds, ...
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, preset: str | None
) -> tuple[RunConfig, argparse.Namespace]:
    """(RunConfig, parsed flags) of a command line. The preset is `--env` where the parser has
    it, else `preset`; a resumed run keeps its own (a different `--env` is an error)."""
    args, extra = parser.parse_known_args(argv)
    from dsrl.training import eval_only

    eval_only.check_arguments(args)  # `--eval_only RUN_DIR` reads RUN_DIR's config
    flags = {name: getattr(args, name) for name in {**FLAGS, **REAL_FLAGS} if hasattr(args, name)}
    config = load_config(
        getattr(args, "env", None) or (None if args.resume else preset),
        resume=args.resume,
        flags=flags,
        overrides=config_overrides(extra),
    )
    progress = dataclasses.replace(config.loop, progress=not args.no_progress)
    return dataclasses.replace(config, loop=progress), args


def notices(config: RunConfig, args: argparse.Namespace) -> list[str]:
    """One line per flag that was given but changes nothing in this run (printed once at
    start-up, so a reference script's flag never looks as if it had an effect it has not)."""
    out = []
    for name, why in IGNORED_FLAGS.items():
        if getattr(args, name, None) is not None:
            out.append(f"--{name} is accepted for the reference's scripts and does nothing: {why}")
    learner = dict(config.agent.learner)
    pooling = learner.get("encoder_pooling", "flatten")
    if getattr(args, "softmax_temperature", None) is not None and pooling != "spatial_softmax":
        out.append(
            f"--softmax_temperature does nothing with encoder_pooling={pooling!r} (the reference's "
            "'small' encoder ignored it too); pass --use_spatial_softmax 1 to use it"
        )
    if getattr(args, "eval_interval", None) is not None and config.loop.eval_episodes == 0:
        out.append(
            "--eval_interval does nothing: control evaluation is off (eval_episodes 0; on a real "
            "robot each evaluation episode costs robot time); pass --eval_episodes N to evaluate"
        )
    return out


def start(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    preset: str | None,
    log: Any = print,
    **kwargs: Any,
) -> tuple[Any, argparse.Namespace]:
    """Parse the command line and build the run; a bad value ends the process with one error
    line naming it (exit status 2, argparse's), before any work. Flags that do nothing in this
    run are named once (`notices`). With `--eval_only` nothing is trained: the evaluation runs
    here and its `dsrl.training.eval_only.EvalOnlyResult` is returned instead of a Run."""
    try:
        config, args = parse_args(parser, argv, preset)
        for line in notices(config, args):
            log(f"[dsrl] note: {line}")
        if args.eval_only:
            from dsrl.training import eval_only

            return eval_only.run(config, args, log=log, **kwargs), args
        return build_run(config, args.resume, log=log, **kwargs), args
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


# --------------------------------------------------------------------------------------------
# Building the run


def learner_classes(algorithm: str) -> tuple[type, type]:
    """(learner class, its config dataclass) of an algorithm."""
    if algorithm == "pixel_sac":
        from dsrl.agents.pixel_sac.config import PixelSACConfig
        from dsrl.agents.pixel_sac.learner import PixelSACLearner

        return PixelSACLearner, PixelSACConfig
    if algorithm == "dsrl_na":
        from dsrl.agents.noise_aliasing.config import NoiseAliasingConfig
        from dsrl.agents.noise_aliasing.learner import NoiseAliasingLearner

        return NoiseAliasingLearner, NoiseAliasingConfig
    raise ConfigError(f"agent.algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


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
    """The reference's --num_cameras against the channels of the env's agent pixels."""
    want = config.env.num_cameras
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
    learner_cls, _ = learner_classes(config.agent.algorithm)
    kwargs: dict[str, Any] = {"execution": config.execution}
    if config.agent.algorithm == "dsrl_na":  # runs the base policy inside its update
        kwargs |= {
            "base_policy": steering.base_policy,
            "noise_param": steering.noise_param,
            "query_freq": steering.query_freq,
        }
    return learner_cls.create(
        config.loop.seed,
        observation_spec,
        steering.latent_dim,
        config.learner_config(),
        **kwargs,
    )


def _make_robot_env(config: RunConfig, base_policy: Any, keyboard: Any, robot: Any) -> Any:
    """The real robot (or its simulated stand-in) as one DSRL env with the operator keyboard."""
    from dsrl.envs.droid import DroidConfig, DroidEnv, SimulatedRobotEnv, make_robot_env

    prefix_fn = None
    if config.env.use_prefix_feature:
        prefix_fn = getattr(base_policy, "prefix_feature", None)
        if prefix_fn is None:
            raise ConfigError(
                f"env.use_prefix_feature=True but the base policy ({type(base_policy).__name__}) "
                "has no prefix_feature; serve Pi0 and pass --pi0_remote, or disable the feature"
            )
    droid_cfg = DroidConfig(
        **config.env.kwargs,
        agent_image_size=config.env.image_size,
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
        return _build(config, run_dir, not created, resources, keyboard, robot, log)
    except BaseException:
        resources.close()
        if created:  # nothing trained yet: leave no empty run directory behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _env_kwargs(config: RunConfig) -> dict[str, Any]:
    kwargs = dict(config.env.kwargs)
    # The demo env calls its agent image size `image_size`; the robot envs `resize_image`.
    kwargs["image_size" if config.env.name == "demo" else "resize_image"] = config.env.image_size
    return kwargs


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


def write_config_file(run_dir: Path, config: RunConfig) -> None:
    """config.json, replaced atomically (a crash leaves the old one or the new one)."""
    path = Path(run_dir) / CONFIG_FILE
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(json.dumps(config.to_tree(), indent=2))
    os.replace(tmp, path)
