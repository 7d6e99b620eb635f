"""The run's config: one frozen `RunConfig` with a section per layer of the data flow.

    env          which env, its kwargs, how many, in which processes, the agent's image size
    base_policy  the frozen policy (local checkpoint or a policy server)
    steering     latent -> noise (noise mode, action_magnitude) and query_freq
    agent        the algorithm (`dsrl.agents.registry`) and overrides of its learner's config
    execution    how a block of K gradient steps runs on the backend (`ExecutionConfig`)
    loop         the training loop (`dsrl.training.loop.LoopConfig`)
    replay       replay-buffer capacity and optional extra stored fields
    log          run directory, W&B project and mode

Schema only: each section checks its own values when built (a bad value is a `ConfigError`
naming the flag that sets it), and `RunConfig.to_tree` / `from_tree` convert to and from the
nested dict of config.json. Reading text and files is `dsrl.training.config_io`; building the
run's components is `dsrl.training.build`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from dsrl.agents import registry
from dsrl.agents.execution import ExecutionConfig
from dsrl.envs import libero_suite
from dsrl.steering import MODES as NOISE_MODES
from dsrl.steering import check_action_magnitude
from dsrl.training import loop
from dsrl.training.flags import ConfigError, canonical_tree, flag_of
from dsrl.training.loop import LoopConfig

CONFIG_VERSION = 2  # 2: the sectioned layout below; 1 (no "version" key): flat keys
ALGORITHMS = registry.NAMES
WANDB_MODES = ("offline", "online", "disabled")
ENV_MODES = ("subprocess", "inline", "ray")


def _need(ok: bool, path: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{path} must be {rule}, got {value!r} (set it with {flag_of(path)})")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


@dataclasses.dataclass(frozen=True)
class EnvSection:
    name: str = "demo"  # demo | libero | aloha | droid (the real robot) | gym | robomimic
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
            try:
                libero_suite.worker_env_kwargs(self.name, dict(self.kwargs), self.num_envs)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        _need(self.ray_num_cpus >= 0, "env.ray_num_cpus", ">= 0", self.ray_num_cpus)
        if self.ray_address:
            _need(
                self.ray_address == "auto" or _is_host_port(self.ray_address),
                "env.ray_address",
                "'auto', host:port (the head node of `ray start --head`), or '' for a local Ray",
                self.ray_address,
            )


TINY_PI0_HORIZON = 10  # Pi0Config.tiny()'s action horizon (dsrl/base_policies/pi0/config.py)


@dataclasses.dataclass(frozen=True)
class BasePolicySection:
    kind: str = "flow_mlp"  # flow_mlp (the demo's) | pi0 | diffusion_mlp (docs/diffusion.md)
    # flow_mlp: "" the shipped demo policy, "libero" the shipped LIBERO CPU policy, or a directory
    # diffusion_mlp: a directory written by DiffusionMLPPolicy.save
    # pi0: an openpi checkpoint (directory, name or URL), "random", "libero_cpu" / "libero_cpu_band"
    #   the shipped small Pi0s (dsrl/assets/pi0_libero_cpu[_band]; variant, robot and tokenizer
    #   come with them), or a directory scripts/make_pi0_libero.py wrote (read the same way, its
    #   SHA256SUMS checked)
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
        kinds = ("flow_mlp", "pi0", "diffusion_mlp")
        _need(self.kind in kinds, "base_policy.kind", " or ".join(kinds), self.kind)
        if self.kind == "diffusion_mlp" and not self.remote:
            _need(bool(self.checkpoint), "base_policy.checkpoint", "a policy directory", "")
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
        try:
            check_action_magnitude(self.action_magnitude)
        except ValueError as e:
            flag = flag_of("steering.action_magnitude")
            raise ConfigError(f"steering.{e} (set it with {flag})") from None
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
        self._check_tiny_pi0()

    def _check_tiny_pi0(self) -> None:
        """`--pi0_variant tiny` on a reference flag line: name every fix at once (a random toy
        Pi0 has no gs:// checkpoint, and its own chunk is 10 steps, shorter than the reference's
        --query_freq 20 / 50)."""
        bp = self.base_policy
        if bp.kind != "pi0" or bp.remote or bp.variant != "tiny":
            return
        fixes = []
        if bp.checkpoint.startswith("gs://"):
            fixes.append(
                f"--pi0_checkpoint random (the checkpoint {bp.checkpoint} is a full Pi0; a tiny "
                "Pi0 is a random toy model)"
            )
        horizon = bp.action_horizon or TINY_PI0_HORIZON
        if self.steering.query_freq > horizon:
            fixes.append(
                f"--config.base_policy.action_horizon=50 (the tiny Pi0's chunk is {horizon} "
                f"steps, shorter than --query_freq {self.steering.query_freq})"
            )
        if fixes:
            raise ConfigError(
                "--pi0_variant tiny on this flag line needs "
                + " and ".join(fixes)
                + "; or add --smoke, which sets both"
            )

    def _check_ray(self) -> None:
        """Ray settings that only make sense together."""
        uses_ray = self.env.mode == "ray" or self.base_policy.ray
        if self.env.ray_address and not uses_ray:
            raise ConfigError(
                f"--ray_address {self.env.ray_address} is given but nothing runs on Ray: add "
                "--env_backend ray and/or --config.base_policy.ray=true, or drop --ray_address"
            )
        in_update = self.agent.learner.get("num_aliases", -1) == 0
        uses_base_policy = registry.get(self.agent.algorithm).uses_base_policy
        if self.base_policy.ray and uses_base_policy and in_update:
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
        `agent` overrides. The latent bound is the steering's (`dsrl.training.build.make_agent`
        hands it to the learner). The discount is the loop's alone: it reaches the learner per
        transition, as the batch's "discounts"."""
        config_cls = registry.get(self.agent.algorithm).config
        values = dict(self.agent.learner)
        fields = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise unknown_learner_options(self.agent.algorithm, unknown, fields)
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
        tree = canonical_tree(tree)
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


def unknown_learner_options(algorithm: str, unknown: Sequence[str], accepted: Any) -> ConfigError:
    """The error for learner options the algorithm lacks, naming the algorithm that has them
    (e.g. --num_aliases with pixel_sac)."""
    hints = []
    for name in unknown:
        owners = [
            other
            for other in ALGORITHMS
            if other != algorithm and name in typing.get_type_hints(registry.get(other).config)
        ]
        if owners:
            flag = flag_of(f"agent.{name}")
            hints.append(
                f"{flag} is an option of {' / '.join(owners)} only: pass --algorithm "
                f"{owners[0]} or drop it"
            )
    return ConfigError(
        f"unknown learner option(s) {sorted(unknown)} in agent; the {algorithm} learner accepts "
        f"{sorted(accepted)}" + "".join(f"; {h}" for h in hints)
    )
