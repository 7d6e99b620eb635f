"""What the state-based envs (Gym MuJoCo, Robomimic low-dim) share: DPPO's min-max
normalization files and the observation dict they return."""

from __future__ import annotations

import os

import numpy as np

# Base-policy copy of the state: the agent reads "state"; a base policy may not read the agent's
# key (DSRL-NA refuses the clash), so it gets its own ("policy_state", FlowMLPConfig's default).
POLICY_STATE = "policy_state"
NORMALIZATION_KEYS = ("obs_min", "obs_max", "action_min", "action_max")


class MinMaxNormalization:
    """DPPO's normalization.npz (obs_min, obs_max, action_min, action_max): observations mapped
    to [-1, 1], actions from [-1, 1] back to the env's range. None path: the identity."""

    def __init__(self, path: str | None, obs_dim: int, action_dim: int, where: str):
        self.path = path
        if path is None:
            return
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{where}: normalization file {path!r} not found; pass an .npz with "
                f"{NORMALIZATION_KEYS} (DPPO's normalization.npz format) or leave it out"
            )
        with np.load(path) as data:
            missing = [k for k in NORMALIZATION_KEYS if k not in data.files]
            if missing:
                raise ValueError(f"{where}: {path} lacks {missing}; it needs {NORMALIZATION_KEYS}")
            arrays = {k: np.asarray(data[k], np.float64).reshape(-1) for k in NORMALIZATION_KEYS}
        sizes = {"obs_min": obs_dim, "obs_max": obs_dim}
        sizes |= {"action_min": action_dim, "action_max": action_dim}
        bad = {k: arrays[k].shape[0] for k in NORMALIZATION_KEYS if arrays[k].shape[0] != sizes[k]}
        if bad:
            raise ValueError(
                f"{where}: {path} has sizes {bad}, expected obs {obs_dim} and action {action_dim}"
            )
        self.obs_min, self.obs_max = arrays["obs_min"], arrays["obs_max"]
        self.action_min, self.action_max = arrays["action_min"], arrays["action_max"]

    def observation(self, obs: np.ndarray) -> np.ndarray:
        if self.path is None:
            return obs
        return 2.0 * ((obs - self.obs_min) / (self.obs_max - self.obs_min + 1e-6) - 0.5)

    def action(self, action: np.ndarray) -> np.ndarray:
        if self.path is None:
            return action
        return (action + 1.0) / 2.0 * (self.action_max - self.action_min) + self.action_min


def state_observation(state: np.ndarray) -> dict[str, np.ndarray]:
    """The agent's "state" and the base policy's copy of it, float32."""
    state = np.asarray(state, np.float32)
    return {"state": state, POLICY_STATE: state.copy()}
