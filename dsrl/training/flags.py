"""Names: the reference's flags and older flat keys, as RunConfig paths.

Plain tables (`FLAGS`, `REAL_FLAGS`: flag name -> RunConfig path; `LEGACY_KEYS`: config-version-1
key -> today's path) and the functions that read them: `canonical_path`, `canonical_tree`
(a config tree with every key at today's path) and `flag_of` (the option that sets a path).
`ConfigError` lives here because its messages name that option; every config module raises it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dsrl.training.loop import LoopConfig


class ConfigError(ValueError):
    """A config value that cannot work; the message names the value and the fix."""


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
    "hidden_dims": "agent.hidden_dims",  # one value: see dsrl.agents.config.ONE_VALUE_LAYERS
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
    "dropout_rate": "agent.dropout_rate",
    "aug_next": "agent.aug_next",
    "softmax_temperature": "agent.softmax_temperature",
    "use_spatial_softmax": "agent.encoder_pooling",  # 1: "spatial_softmax", 0: "flatten"
    "use_bottleneck": "agent.use_bottleneck",  # checked, not stored: see _flag_value
    "encoder_norm": "agent.encoder_norm",  # accepted, does nothing: see IGNORED_FLAGS
    "num_cameras": "env.num_cameras",
    "add_states": "env.add_states",
}
# The reference's names of learner options that carry a clearer name here (as flags, and as
# `agent.<name>` keys of configs and `--config.agent.<name>`).
LEARNER_ALIASES = {"latent_dim": "bottleneck_dim"}  # the encoder's bottleneck width
FLAGS |= {alias: f"agent.{name}" for alias, name in LEARNER_ALIASES.items()}
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
# Flat keys of config version 1 (config.json, presets, `--config.<key>`) -> today's paths.
LEGACY_KEYS = {
    **{k: v for k, v in {**FLAGS, **REAL_FLAGS}.items() if not v.startswith("env.kwargs.")},
    **{f.name: f"loop.{f.name}" for f in dataclasses.fields(LoopConfig)},
    "env": "env.name",
    "env_mode": "env.mode",
    "prefix_feature_dim": "env.prefix_feature_dim",
    "replay_buffer_capacity": "replay.capacity",
    "store_action_chunks": "replay.store_action_chunks",
    # The agent's image size is `image_size` everywhere (the LIBERO/Aloha envs said resize_image).
    "env_kwargs.resize_image": "env.image_size",
    "env.kwargs.resize_image": "env.image_size",
    # How K gradient steps run is no learner option any more.
    "agent.update_mode": "execution.mode",
    "agent.scan_length": "execution.scan_length",
}
# Version-1 sections whose keys moved as a whole.
LEGACY_SECTIONS = {"env_kwargs": "env.kwargs", "noise_kwargs": "steering"}
_FLAG_OF = {path: flag for flag, path in {**FLAGS, **REAL_FLAGS}.items()}
_FLAG_OF["agent.encoder_pooling"] = "config.agent.encoder_pooling"


def flag_of(path: str) -> str:
    """The command-line option that sets the RunConfig `path` (`--num_envs`, else
    `--config.<path>`), for error messages that name the fix."""
    return f"--{_FLAG_OF.get(path, f'config.{path}')}"


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


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """tree[a][b][c] = value for path "a.b.c", making the sections on the way."""
    *parents, leaf = path.split(".")
    node = tree
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parents[: i + 1])!r} is not a section")
    node[leaf] = value


def canonical_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """`tree` with every key at today's path (see LEGACY_KEYS); drops the version key."""
    out: dict[str, Any] = {}
    for key, value in _flatten({k: v for k, v in tree.items() if k != "version"}).items():
        set_path(out, canonical_path(key), value)
    return out
