"""A RunConfig from text: a preset or a run's config.json, then flags, then `--config` overrides.

`load_config` is what both launchers and `--resume` call. Values given as text are parsed with the
type of the field they set (`parse_text`); older flat keys (`--config.num_envs`,
`agent.update_mode`, a config.json written before `CONFIG_VERSION` 2) map onto today's paths
through `dsrl.training.flags.LEGACY_KEYS`. `write_config_file` saves a run's config.json.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsrl import presets
from dsrl.agents import registry
from dsrl.training import validation
from dsrl.training.config import (
    CONFIG_VERSION,
    AgentSection,
    RunConfig,
    unknown_learner_options,
)
from dsrl.training.flags import (
    FLAGS,
    IGNORED_FLAGS,
    LIST_FLAGS,
    REAL_FLAGS,
    ConfigError,
    canonical_path,
    canonical_tree,
    set_path,
)

CONFIG_FILE = "config.json"


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
        try:
            learner_hints = typing.get_type_hints(registry.get(algorithm).config)
        except ValueError as e:  # an unknown algorithm
            raise ConfigError(str(e)) from None
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


def apply(tree: dict[str, Any], key: str, value: Any, *, where: str) -> None:
    """tree[key] = value, `key` in today's or a legacy spelling; text is parsed by type."""
    path = canonical_path(key)
    if isinstance(value, str):
        value = parse_text(value, _field_hint(tree, path), where)
    else:
        _field_hint(tree, path)  # still an error for an unknown key
    set_path(tree, path, value)


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
        return canonical_tree(tree)
    except ConfigError as e:
        raise ConfigError(f"{path} (config version {version}): {e}") from None


def _flag_value(name: str, value: Any) -> Any:
    """A reference flag's value as its RunConfig field takes it (None: nothing to set)."""
    if name in LIST_FLAGS and isinstance(value, list):
        widths = validation.parse_layer_widths(name, value)  # `--hidden_dims ""`: one clear line
        if len(widths) == 1:  # one number: the learner config says what it means
            return widths[0]  # (dsrl.agents.config.ONE_VALUE_LAYERS)
        return widths
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


def _drop_other_algorithm_options(tree: dict[str, Any], algorithm: str) -> None:
    """A preset written for one algorithm, run with `--algorithm` another: its agent options
    that only the preset's algorithm has (e.g. DSRL-NA's `utd` and noise-critic settings in the
    release presets) are dropped, so `--algorithm pixel_sac` runs SAC with the preset's shared
    settings. Options given with --config are still checked against the new algorithm."""
    agent = tree.get("agent", {})
    old = agent.get("algorithm")
    if old == algorithm or old not in registry.NAMES or algorithm not in registry.NAMES:
        return
    keep = set(typing.get_type_hints(registry.get(algorithm).config))
    only_old = set(typing.get_type_hints(registry.get(old).config)) - keep
    for name in sorted(only_old & set(agent)):
        del agent[name]


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
        validation.check_saved_config(tree, Path(resume) / CONFIG_FILE, RunConfig.from_tree)
        validation.check_resume_algorithm(tree, flags or {}, resume)
        saved_env = tree.get("env", {}).get("name")
        if preset is not None and presets.get_preset(preset).env.name != saved_env:
            raise ConfigError(f"--env {preset} does not match the resumed run's env {saved_env!r}")
    else:
        tree = canonical_tree(presets.get_preset(preset).to_dict())
        if (flags or {}).get("algorithm") is not None:
            _drop_other_algorithm_options(tree, str(flags["algorithm"]))
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


def write_config_file(run_dir: Path, config: RunConfig) -> None:
    """config.json, replaced atomically (a crash leaves the old one or the new one)."""
    path = Path(run_dir) / CONFIG_FILE
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(json.dumps(config.to_tree(), indent=2))
    os.replace(tmp, path)
