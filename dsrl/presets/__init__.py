"""Per-environment presets: `get_config()` returns an ml_collections ConfigDict laid out like
`dsrl.training.config.RunConfig` (sections env, base_policy, steering, agent, execution, loop,
replay, log). They live in the library, not under examples/, so that `build_run` and both
launchers read them with a normal import, installed or from a checkout."""

from __future__ import annotations

import importlib

import ml_collections

# Launcher env names -> preset module; "aloha_cube" is the reference's name for Aloha.
PRESETS = {
    "demo": "demo",
    "libero": "libero",
    "libero_cpu": "libero_cpu",
    "libero_pi0_cpu": "libero_pi0_cpu",  # the same proof, steering the shipped small Pi0
    "libero_pi0_cpu_band": "libero_pi0_cpu_band",  # ... the small Pi0 whose base is in the band
    "libero_spatial": "libero_spatial",  # all 10 tasks of the suite in one run
    "aloha": "aloha",
    "aloha_cube": "aloha",
    "real": "real",
    "franka_droid": "real",  # the reference's run_real.sh name
    # State-based DSRL at the authors' Gym / Robomimic settings (dsrl.presets.state_dsrl).
    "gym_hopper": "gym_hopper",
    "gym_walker2d": "gym_walker2d",
    "gym_halfcheetah": "gym_halfcheetah",
    "robomimic_lift": "robomimic_lift",
    "robomimic_can": "robomimic_can",
    "robomimic_square": "robomimic_square",
    # Can on a CPU with the shipped DDIM DiffusionMLP (dsrl/assets/diffusion_can).
    "robomimic_can_cpu": "robomimic_can_cpu",
    # Hopper on a CPU with the shipped DDIM DiffusionMLP (dsrl/assets/diffusion_hopper).
    "gym_hopper_cpu": "gym_hopper_cpu",
}


def get_preset(name: str) -> ml_collections.ConfigDict:
    """The preset called `name` (a key of PRESETS)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return importlib.import_module(f"{__name__}.{PRESETS[name]}").get_config()
