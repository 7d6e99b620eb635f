"""Env registry. Simulators are imported only when an env is built, never at package import.

    env = make_env("libero", suite="libero_spatial", task_id=0)
    env = make_env("aloha")
    env = make_env("demo")
    env = make_env("gym", task="hopper")
    env = make_env("robomimic", task="can")

`make_env` is picklable through functools.partial, which is how VectorEnv workers build envs:
    VectorEnv([functools.partial(make_env, "libero", seed=i) for i in range(2)])
"""

from __future__ import annotations

import importlib
from typing import Any

from dsrl.envs.base import Env, EnvSpec, Observation

# name -> (module, class); aliases share an entry.
_REGISTRY: dict[str, tuple[str, str]] = {
    "demo": ("dsrl.envs.demo", "DemoEnv"),
    "demo_pi0": ("dsrl.envs.demo_pi0", "DemoPi0Env"),  # LIBERO-shaped, for timing Pi0 loops
    "libero": ("dsrl.envs.libero", "LiberoEnv"),
    "libero_pick_place": ("dsrl.envs.libero_scripted", "LiberoPickPlaceEnv"),
    "aloha": ("dsrl.envs.aloha", "AlohaEnv"),
    "aloha_cube": ("dsrl.envs.aloha", "AlohaEnv"),
    # State-based (no pixels): Gym MuJoCo locomotion and Robomimic low-dim manipulation.
    "gym": ("dsrl.envs.gym_mujoco", "GymMujocoEnv"),
    "robomimic": ("dsrl.envs.robomimic", "RobomimicEnv"),
}

# Envs without agent pixels (their agent is MLP-only): the run builder passes them no image size.
STATE_ENVS = frozenset({"gym", "robomimic"})


def env_names() -> list[str]:
    return sorted(_REGISTRY)


def make_env(name: str, **kwargs: Any) -> Env:
    """Builds the env registered as `name` with the env class's keyword arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown env {name!r}; choose one of {env_names()}.")
    module_name, class_name = _REGISTRY[name]
    env_cls = getattr(importlib.import_module(module_name), class_name)
    return env_cls(**kwargs)


__all__ = ["STATE_ENVS", "Env", "EnvSpec", "Observation", "env_names", "make_env"]
