"""Steering: how the agent's latent becomes the base policy's noise and then an action chunk.

Names (see docs/architecture.md): the agent emits a `latent` (size `latent_dim`); the noise
parameterisation maps it to the base policy's `noise` (H, noise_dim); the base policy turns the
noise into an action chunk, of which the env executes the first `query_freq` actions.

Every noise mode is a fixed linear map  noise[b, h, d] = sum_j M[h, j] * coeffs[b, j, d]  where
the latent (B, latent_dim) is reshaped to coeffs (B, k, m) and m = controlled_dims noise dims:
  repeat  k = 1, M = ones (H, 1): one noise_dim vector copied over the horizon. The reference
          DSRL-Pi0 mapping (latent_dim 32 for Pi0).
  full    k = H, M = I: the whole (H, noise_dim) noise (1600-d for Pi0-LIBERO, as in the paper).
  basis   k small (default 3), M = a smooth temporal basis (DCT-II cosines) over the horizon with
          each row scaled to unit norm, so i.i.d. N(0, 1) coefficients give exactly unit-variance
          noise at every horizon step, like the base policy's own prior. k = 1 equals `repeat`.
Noise dims beyond `controlled_dims` (e.g. Pi0's padding dims, 7..31 for LIBERO) are held at 0,
the prior mean; by default the agent controls all noise dims, as the reference does.

Warm-up latents come from the agent's own latent space (N(0, 1) per dim, clipped to
+-action_magnitude), i.e. the same family the trained actor produces; the reference samples them
unclipped. The base-policy baseline uses `sample_iid_noise` (i.i.d. N(0, 1) over the full noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.base_policies.base import BasePolicy

MODES = ("repeat", "full", "basis")

AgentObservation = dict[str, np.ndarray]
# (agent observations with leading N) -> (latents (N, latent_dim) or None, noise (N, H, D)).
NoiseSource = Callable[[AgentObservation], tuple[np.ndarray | None, np.ndarray]]


def dct_basis(horizon: int, num_basis: int) -> np.ndarray:
    """(horizon, num_basis) DCT-II cosines, rows scaled to unit norm. Column 0 is constant."""
    if not 1 <= num_basis <= horizon:
        raise ValueError(f"basis needs 1 <= num_basis <= horizon, got {num_basis} and {horizon}.")
    h = np.arange(horizon)[:, None] + 0.5
    j = np.arange(num_basis)[None, :]
    basis = np.cos(np.pi * h * j / horizon)
    # Unit row norm => Var(noise[h]) = sum_j basis[h, j]^2 = 1 under N(0, 1) coefficients.
    return basis / np.linalg.norm(basis, axis=1, keepdims=True)


# eq=False: holds an array; identity comparison is the meaningful one (and keeps it hashable, so
# a learner may hold it as a static field of a jitted function).
@dataclasses.dataclass(frozen=True, eq=False)
class NoiseParam:
    """Latent (B, latent_dim) -> base-policy noise (B, H, noise_dim).

    Build with `make_noise_param`. `matrix` is M (H, k); the latent is laid out as (k, m): the
    coefficients of basis function j for each controlled noise dim are contiguous.
    """

    mode: str
    noise_shape: tuple[int, int]
    action_magnitude: float
    controlled_dims: int
    matrix: np.ndarray  # float32 (H, k)

    @property
    def num_coeffs(self) -> int:
        return self.matrix.shape[1]

    @property
    def latent_dim(self) -> int:
        return self.num_coeffs * self.controlled_dims

    def to_noise(self, latents: Any) -> Any:
        """(B, latent_dim) -> (B, H, noise_dim).

        A numpy (or list) input gives a float32 numpy array; a jax array or a tracer inside
        `jit` gives a jax array, so a learner can call this inside its jitted update."""
        xp = jnp if isinstance(latents, jax.Array) else np
        latents = xp.asarray(latents, dtype=np.float32)
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(
                f"NoiseParam({self.mode!r}).to_noise expects latents (B, {self.latent_dim}), got "
                f"{latents.shape}; the learner's latent_dim must be NoiseParam.latent_dim."
            )
        coeffs = latents.reshape(latents.shape[0], self.num_coeffs, self.controlled_dims)
        noise = xp.einsum("hk,bkm->bhm", self.matrix, coeffs).astype(np.float32)
        pad = self.noise_shape[1] - self.controlled_dims
        return xp.pad(noise, ((0, 0), (0, 0), (0, pad))) if pad else noise

    def sample_warmup(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Warm-up latents: N(0, 1) clipped to +-action_magnitude, float32 (B, latent_dim)."""
        latents = rng.standard_normal((batch, self.latent_dim))
        return np.clip(latents, -self.action_magnitude, self.action_magnitude).astype(np.float32)

    def sample_iid_noise(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """The base policy's own prior: i.i.d. N(0, 1) noise, float32 (B, H, noise_dim)."""
        return rng.standard_normal((batch, *self.noise_shape)).astype(np.float32)


def check_action_magnitude(action_magnitude: Any) -> None:
    """The latent bound's one rule (the steering owns the bound; the run config and the learner
    receive it): a finite number > 0."""
    ok = isinstance(action_magnitude, int | float) and not isinstance(action_magnitude, bool)
    if not (ok and 0 < action_magnitude < float("inf")):
        raise ValueError(f"action_magnitude must be a finite number > 0, got {action_magnitude!r}")


def make_noise_param(
    mode: str,
    noise_shape: tuple[int, int],
    action_magnitude: float,
    *,
    num_basis: int = 3,
    controlled_dims: int | None = None,
) -> NoiseParam:
    """Build a NoiseParam.

    mode: "repeat" | "full" | "basis"; noise_shape: the base policy's (H, noise_dim);
    action_magnitude: the bound on the agent's latent (the tanh-Gaussian's); num_basis: k for
    "basis"; controlled_dims: how many leading noise dims the agent sets (default all; the rest
    stay 0).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown noise mode {mode!r}; choose one of {MODES}.")
    if len(noise_shape) != 2 or min(noise_shape) < 1:
        raise ValueError(f"noise_shape must be (horizon, noise_dim), got {noise_shape}.")
    check_action_magnitude(action_magnitude)
    horizon, noise_dim = (int(n) for n in noise_shape)
    controlled = noise_dim if controlled_dims is None else int(controlled_dims)
    if not 1 <= controlled <= noise_dim:
        raise ValueError(f"controlled_dims must be in [1, {noise_dim}], got {controlled_dims}.")
    if mode == "repeat":
        matrix = np.ones((horizon, 1))
    elif mode == "full":
        matrix = np.eye(horizon)
    else:
        matrix = dct_basis(horizon, num_basis)
    return NoiseParam(
        mode=mode,
        noise_shape=(horizon, noise_dim),
        action_magnitude=float(action_magnitude),
        controlled_dims=controlled,
        matrix=matrix.astype(np.float32),
    )


@dataclasses.dataclass(frozen=True)
class Steering:
    """The frozen half of DSRL: how a latent becomes an executed action chunk."""

    base_policy: BasePolicy
    noise_param: NoiseParam
    query_freq: int

    def __post_init__(self):
        horizon = int(self.base_policy.noise_shape[0])
        if not 1 <= self.query_freq <= horizon:
            raise ValueError(
                f"query_freq={self.query_freq} must be in [1, {horizon}] (the base policy's action "
                f"horizon, noise_shape={tuple(self.base_policy.noise_shape)}); set --query_freq "
                "to at most the chunk length."
            )

    @property
    def latent_dim(self) -> int:
        return self.noise_param.latent_dim

    @property
    def action_magnitude(self) -> float:
        """The bound on the agent's latent: the learner's tanh-Gaussian is scaled to it."""
        return self.noise_param.action_magnitude

    # Noise sources -----------------------------------------------------------------------------
    def agent_source(self, act: Callable[[AgentObservation], Any]) -> NoiseSource:
        """Noise from an agent: `act(obs) -> (N, latent_dim)` latents in [-am, am]."""

        def source(obs: AgentObservation) -> tuple[np.ndarray, np.ndarray]:
            latents = np.asarray(act(obs), dtype=np.float32)
            return latents, self.noise_param.to_noise(latents)

        return source

    def warmup_source(self, rng: np.random.Generator) -> NoiseSource:
        """Random latents from the training family, already clipped to ±action_magnitude."""

        def source(obs: AgentObservation) -> tuple[np.ndarray, np.ndarray]:
            latents = self.noise_param.sample_warmup(rng, _batch_size(obs))
            return latents, self.noise_param.to_noise(latents)

        return source

    def iid_source(self, rng: np.random.Generator) -> NoiseSource:
        """The untouched base policy: i.i.d. N(0, I) noise over the whole (H, D) noise shape."""

        def source(obs: AgentObservation) -> tuple[None, np.ndarray]:
            return None, self.noise_param.sample_iid_noise(rng, _batch_size(obs))

        return source


def _batch_size(obs: AgentObservation) -> int:
    return int(np.shape(obs["state"])[0])
