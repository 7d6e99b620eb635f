"""`DiffusionMLPPolicy`: DPPO's DiffusionMLP + deterministic DDIM as a DSRL base policy.

The steering noise is DDIM's initial x_T, shape (horizon_steps, action_dim) per observation (the
DSRL release's `controllable_noise`). Observations and actions are raw (env units) when the policy
carries a `Normalization`, and DPPO's normalized [-1, 1] spaces when it does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dsrl.base_policies.diffusion.ddim import SamplerConfig, ddim_sample
from dsrl.base_policies.diffusion.dppo import Normalization, load_dppo_params
from dsrl.base_policies.diffusion.network import NetworkConfig, param_shapes

_CONFIG_FILE = "config.json"
_PARAMS_FILE = "params.npz"
_NORMALIZATION_FILE = "normalization.npz"
_HASH_FILE = "params.sha256"


@dataclasses.dataclass(frozen=True)
class DiffusionPolicyConfig:
    network: NetworkConfig
    sampler: SamplerConfig
    # Observation key of the (B, cond_dim) state (or (B, cond_steps, obs_dim), flattened). The
    # state envs give the base policy its own copy under "policy_state" (DSRL-NA refuses a base
    # policy that reads the agent's "state").
    state_key: str = "policy_state"

    @property
    def state_dim(self) -> int:
        return self.network.cond_dim

    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.network.horizon_steps, self.network.action_dim)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DiffusionPolicyConfig:
        net = dict(data["network"])
        net["mlp_dims"] = tuple(net["mlp_dims"])
        if net.get("cond_mlp_dims") is not None:
            net["cond_mlp_dims"] = tuple(net["cond_mlp_dims"])
        return cls(
            network=NetworkConfig(**net),
            sampler=SamplerConfig(**data["sampler"]),
            state_key=data.get("state_key", "policy_state"),
        )


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiled(values: np.ndarray, size: int, what: str) -> np.ndarray:
    """Per-observation normalization bounds repeated over cond_steps stacked observations."""
    if values.size == size:
        return values
    if values.size and size % values.size == 0:
        return np.tile(values, size // values.size)
    raise ValueError(f"normalization {what} has {values.size} entries; the policy needs {size}.")


class DiffusionMLPPolicy:
    """Implements `dsrl.base_policies.base.BasePolicy` (and a pure-JAX sampler for DSRL-NA).

    Attributes: `config`, `params` (flax tree of jnp arrays), `normalization` (or None),
    `noise_shape` = (horizon_steps, action_dim), `action_dim`.
    """

    def __init__(
        self,
        config: DiffusionPolicyConfig,
        params,
        normalization: Normalization | None = None,
    ):
        self.config = config
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self.noise_shape = config.noise_shape
        self.action_dim = config.network.action_dim
        self.normalization = normalization
        if normalization is not None:
            net = config.network
            self._obs_bounds = (
                _tiled(normalization.obs_min, net.cond_dim, "obs_min"),
                _tiled(normalization.obs_max, net.cond_dim, "obs_max"),
            )
            if normalization.action_min.size != net.action_dim:
                raise ValueError(
                    f"normalization has {normalization.action_min.size} action dims, the network "
                    f"{net.action_dim}."
                )
        self._sample = jax.jit(self.sample_actions_jax)

    # Sampling ---------------------------------------------------------------------------------

    def sample_actions_jax(self, params, observation: Mapping[str, Any], noise: jax.Array):
        """Pure function of (params, observation, noise) for use inside jitted code (DSRL-NA):
        observation[state_key] (B, cond_dim) raw, noise (B, horizon, action_dim) -> float32
        (B, horizon, action_dim) raw actions."""
        state = jnp.asarray(observation[self.config.state_key], jnp.float32)
        state = state.reshape(state.shape[0], -1)
        if self.normalization is not None:
            low, high = self._obs_bounds
            state = 2 * ((state - low) / (high - low + 1e-6) - 0.5)
        actions = ddim_sample(self.config.network, self.config.sampler, params, state, noise)
        if self.normalization is not None:
            actions = self.normalization.unnormalize_action(actions)
        return actions.astype(jnp.float32)

    def sample_actions(self, observation: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        """BasePolicy: observation[state_key] (B, cond_dim) or (B, cond_steps, obs_dim); noise
        (B, horizon, action_dim). Returns np.float32 (B, horizon, action_dim)."""
        state = self._state_from(observation)
        noise = np.asarray(noise, np.float32)
        if noise.ndim != 3 or noise.shape[1:] != tuple(self.noise_shape):
            raise ValueError(
                f"DiffusionMLPPolicy.sample_actions: noise has shape {noise.shape}, expected "
                f"(B, {self.noise_shape[0]}, {self.noise_shape[1]}) (DDIM's initial x_T)."
            )
        if noise.shape[0] != state.shape[0]:
            raise ValueError(
                f"DiffusionMLPPolicy.sample_actions: batch mismatch, {state.shape[0]} observations "
                f"vs {noise.shape[0]} noises."
            )
        out = self._sample(self.params, {self.config.state_key: state}, noise)
        return np.asarray(out, np.float32)

    def _state_from(self, observation: Mapping[str, Any]) -> np.ndarray:
        key, cond_dim = self.config.state_key, self.config.state_dim
        if key not in observation:
            raise KeyError(
                f"DiffusionMLPPolicy needs observation[{key!r}] (B, {cond_dim}); got keys "
                f"{sorted(observation)}. Pass the env's low-dimensional state, batched."
            )
        state = np.asarray(observation[key], np.float32)
        if state.ndim < 2 or int(np.prod(state.shape[1:])) != cond_dim:
            raise ValueError(
                f"DiffusionMLPPolicy: observation[{key!r}] has shape {state.shape}, expected "
                f"(B, {cond_dim}) (batched: add a leading axis for one observation)."
            )
        return state.reshape(state.shape[0], cond_dim)

    # Construction and persistence -------------------------------------------------------------

    @classmethod
    def from_dppo_checkpoint(
        cls,
        checkpoint: str | pathlib.Path,
        config: DiffusionPolicyConfig,
        normalization: str | pathlib.Path | Normalization | None = None,
        weights: str | None = None,
    ) -> DiffusionMLPPolicy:
        """A policy from DPPO's `state_<epoch>.pt` ("ema" weights unless `weights`="model") and,
        optionally, its `normalization.npz` (without it the policy works in DPPO's normalized
        spaces, as DPPO's own env wrappers expect)."""
        params = load_dppo_params(checkpoint, config.network, weights)
        if normalization is not None and not isinstance(normalization, Normalization):
            normalization = Normalization.from_npz(normalization)
        return cls(config, params, normalization)

    def save(self, directory: str | pathlib.Path) -> None:
        """config.json, params.npz, params.sha256 and (if any) normalization.npz."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        flat = traverse_util.flatten_dict(jax.device_get(self.params), sep="/")
        np.savez(
            directory / _PARAMS_FILE, **{k: np.asarray(v, np.float32) for k, v in flat.items()}
        )
        (directory / _HASH_FILE).write_text(
            f"{_sha256(directory / _PARAMS_FILE)}  {_PARAMS_FILE}\n"
        )
        (directory / _CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")
        if self.normalization is not None:
            np.savez(directory / _NORMALIZATION_FILE, **self.normalization.as_arrays())

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> DiffusionMLPPolicy:
        """A policy written by `save` (the sha256 is checked when params.sha256 is present)."""
        directory = pathlib.Path(directory)
        config_path, params_path = directory / _CONFIG_FILE, directory / _PARAMS_FILE
        if not config_path.is_file() or not params_path.is_file():
            raise FileNotFoundError(
                f"No diffusion policy in {directory}: expected {_CONFIG_FILE} and {_PARAMS_FILE} "
                "(write one with DiffusionMLPPolicy.save; for a DPPO .pt use from_dppo_checkpoint)."
            )
        config = DiffusionPolicyConfig.from_json(json.loads(config_path.read_text()))
        hash_path = directory / _HASH_FILE
        if hash_path.is_file():
            expected_hash, actual_hash = hash_path.read_text().split()[0], _sha256(params_path)
            if actual_hash != expected_hash:
                raise ValueError(
                    f"{params_path} has sha256 {actual_hash}, but {hash_path} says "
                    f"{expected_hash}: the file is damaged or was replaced without its hash."
                )
        with np.load(params_path) as data:
            params = traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")
        expected = param_shapes(config.network)
        got = jax.tree_util.tree_map(np.shape, params)
        if got != expected:
            raise ValueError(
                f"{params_path} does not match {config_path}: parameter shapes differ. Re-save both "
                "together."
            )
        norm_path = directory / _NORMALIZATION_FILE
        normalization = Normalization.from_npz(norm_path) if norm_path.is_file() else None
        return cls(config, params, normalization)
