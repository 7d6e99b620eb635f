"""DPPO checkpoints and normalization files -> this package's parameters, without torch.

What DPPO saves (irom-lab/dppo 7b10df6, `agent/pretrain/train_agent.py`): `state_<epoch>.pt`, a
`torch.save` of {"epoch": int, "model": state_dict, "ema": state_dict}, where each state dict is
the `DiffusionModel`'s, whose only tensors are its network's: keys `network.<DiffusionMLP key>`.
DPPO's `DiffusionModel` loads "ema" when present, else "model" (RL-fine-tuned checkpoints), and
so does `load_dppo_params` unless told otherwise.

What DPPO's policies expect: observations normalized to [-1, 1] per dimension and actions
produced in [-1, 1], with `normalization.npz` holding obs_min, obs_max, action_min, action_max:
    obs_n = 2 ((obs - obs_min) / (obs_max - obs_min + 1e-6) - 0.5)
    action = (action_n + 1) / 2 (action_max - action_min) + action_min
(DPPO's env wrappers `mujoco_locomotion_lowdim.py` and `robomimic_lowdim.py` apply these.)
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from dsrl.base_policies.diffusion.network import NetworkConfig, param_shapes
from dsrl.base_policies.diffusion.torch_checkpoint import load_torch_checkpoint

NORMALIZATION_KEYS = ("obs_min", "obs_max", "action_min", "action_max")


@dataclasses.dataclass(frozen=True, eq=False)
class Normalization:
    """DPPO's min-max normalization (float32 arrays: obs (obs_dim,), action (action_dim,))."""

    obs_min: np.ndarray
    obs_max: np.ndarray
    action_min: np.ndarray
    action_max: np.ndarray

    def normalize_obs(self, obs):
        """Works on numpy and jax arrays (the last axis is the observation's)."""
        return 2 * ((obs - self.obs_min) / (self.obs_max - self.obs_min + 1e-6) - 0.5)

    def normalize_action(self, action):
        """Inverse of `unnormalize_action` (what DPPO's dataset processing does to actions)."""
        return 2 * ((action - self.action_min) / (self.action_max - self.action_min + 1e-6) - 0.5)

    def unnormalize_action(self, action):
        return (action + 1) / 2 * (self.action_max - self.action_min) + self.action_min

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k), np.float32) for k in NORMALIZATION_KEYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], source: str = "normalization") -> Normalization:
        missing = [k for k in NORMALIZATION_KEYS if k not in arrays]
        if missing:
            raise ValueError(
                f"{source} lacks {missing}; DPPO's normalization.npz holds {list(NORMALIZATION_KEYS)}."
            )
        values = {k: np.asarray(arrays[k], np.float32).reshape(-1) for k in NORMALIZATION_KEYS}
        for a, b in (("obs_min", "obs_max"), ("action_min", "action_max")):
            if values[a].shape != values[b].shape:
                raise ValueError(f"{source}: {a} {values[a].shape} vs {b} {values[b].shape}.")
        return cls(**values)

    @classmethod
    def from_npz(cls, path: str | pathlib.Path) -> Normalization:
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No normalization file at {path} (DPPO's normalization.npz).")
        with np.load(path) as data:
            return cls.from_arrays({k: data[k] for k in data.files}, str(path))

    @classmethod
    def from_data(cls, obs: np.ndarray, actions: np.ndarray) -> Normalization:
        """Per-dimension min and max over a dataset: obs (N, obs_dim), actions (..., action_dim)."""
        obs = np.asarray(obs, np.float32).reshape(-1, np.shape(obs)[-1])
        actions = np.asarray(actions, np.float32).reshape(-1, np.shape(actions)[-1])
        return cls(obs.min(0), obs.max(0), actions.min(0), actions.max(0))


def _to_flax_leaf(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    if name == "bias":
        return "bias", value
    if name == "weight":
        # 2-D: nn.Linear (out, in) -> Dense kernel (in, out); 1-D: LayerNorm scale.
        return ("kernel", value.T) if value.ndim == 2 else ("scale", value)
    raise ValueError(f"unexpected parameter name {name!r}")


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray], config: NetworkConfig, prefix: str = "network."
) -> dict:
    """Flax parameters for `DiffusionMLP(config)` from a DPPO state dict (numpy values).

    Keys under `prefix` map as `<prefix><module>.<path...>.<weight|bias>` ->
    params[module]["<path...>"][kernel|scale|bias]. Every expected parameter must be present with
    the expected shape and no extra key under `prefix` may remain; otherwise a ValueError lists
    what differs and which config fields decide it."""
    params: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    unexpected = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split(".")
        if len(parts) < 3:
            unexpected.append(key)
            continue
        module, leaf, name = parts[0], ".".join(parts[1:-1]), parts[-1]
        try:
            flax_name, flax_value = _to_flax_leaf(name, np.asarray(value, np.float32))
        except ValueError:
            unexpected.append(key)
            continue
        params.setdefault(module, {}).setdefault(leaf, {})[flax_name] = flax_value

    expected = param_shapes(config)
    problems = [f"unexpected: {k}" for k in unexpected]
    for module, leaves in expected.items():
        for leaf, names in leaves.items():
            for name, shape in names.items():
                got = params.get(module, {}).get(leaf, {}).get(name)
                if got is None:
                    problems.append(f"missing: {prefix}{module}.{leaf} ({name} {shape})")
                elif tuple(got.shape) != tuple(shape):
                    problems.append(
                        f"shape: {prefix}{module}.{leaf} {name} is {tuple(got.shape)}, "
                        f"the config gives {tuple(shape)}"
                    )
    for module, leaves in params.items():
        for leaf in leaves:
            if leaf not in expected.get(module, {}):
                problems.append(f"unexpected: {prefix}{module}.{leaf}")
    if not any(k.startswith(prefix) for k in state_dict):
        problems = [
            f"no key starts with {prefix!r}; keys start with {sorted({k.split('.')[0] for k in state_dict})}"
        ]
    if problems:
        shown = "\n  ".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else "")
        raise ValueError(
            f"The DPPO state dict does not match this DiffusionMLP config ({config}):\n  {shown}\n"
            "Take action_dim, horizon_steps, cond_dim (= obs_dim * cond_steps), time_dim, mlp_dims, "
            "cond_mlp_dims, use_layernorm and residual_style from the checkpoint's DPPO config."
        )
    return params


def select_state_dict(checkpoint: Any, weights: str | None = None, source: str = "checkpoint"):
    """The state dict DPPO would load: checkpoint["ema"] if present, else checkpoint["model"];
    `weights` ("ema" / "model") forces one. A bare state dict is returned as is."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{source} holds a {type(checkpoint).__name__}, not a dict of state dicts."
        )
    has_nested = any(isinstance(v, Mapping) for v in checkpoint.values())
    if not has_nested:
        if weights is not None:
            raise ValueError(f"{source} is a bare state dict; it has no {weights!r} entry.")
        return checkpoint
    if weights is None:
        weights = "ema" if "ema" in checkpoint else "model"
    if weights not in checkpoint:
        raise ValueError(
            f"{source} has no {weights!r} entry (it has {sorted(checkpoint)}); DPPO saves 'model' "
            "and 'ema'."
        )
    return checkpoint[weights]


def load_dppo_params(
    path: str | pathlib.Path,
    config: NetworkConfig,
    weights: str | None = None,
    prefix: str = "network.",
) -> dict:
    """Flax params from a DPPO `state_<epoch>.pt` (read without torch)."""
    checkpoint = load_torch_checkpoint(path)
    state_dict = select_state_dict(checkpoint, weights, str(path))
    return params_from_state_dict(state_dict, config, prefix)
