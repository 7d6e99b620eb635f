"""Per-environment presets (`get_config()` returning an ml_collections ConfigDict)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

_HERE = Path(__file__).resolve().parent
# Launcher env names -> preset module; "aloha_cube" is the reference's name for Aloha.
PRESETS = {"demo": "demo", "libero": "libero", "aloha": "aloha", "aloha_cube": "aloha"}


def get_preset(env: str) -> ml_collections.ConfigDict:
    """The preset for `env` (loaded by file path, so this works without `examples` on sys.path)."""
    if env not in PRESETS:
        raise ValueError(f"unknown --env {env!r}; choose one of {sorted(PRESETS)}")
    path = _HERE / f"{PRESETS[env]}.py"
    spec = importlib.util.spec_from_file_location(f"dsrl_presets.{PRESETS[env]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
