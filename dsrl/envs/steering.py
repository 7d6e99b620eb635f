"""Noise parameterisations: how the agent's action becomes the base policy's initial noise.

Every mode is a fixed linear map  noise[b, h, d] = sum_j M[h, j] * coeffs[b, j, d]  where the
agent action a (B, A) is reshaped to coeffs (B, k, m) and m = controlled_dims noise dims:
  repeat  k = 1, M = ones (H, 1): one noise_dim vector copied over the horizon. The reference
          DSRL-Pi0 mapping (agent action dim 32 for Pi0).
  full    k = H, M = I: the whole (H, noise_dim) noise (1600-d for Pi0-LIBERO, as in the paper).
  basis   k small (default 3), M = a smooth temporal basis (DCT-II cosines) over the horizon with
          each row scaled to unit norm, so i.i.d. N(0, 1) coefficients give exactly unit-variance
          noise at every horizon step, like the base policy's own prior. k = 1 equals `repeat`.
Noise dims beyond `controlled_dims` (e.g. Pi0's padding dims, 7..31 for LIBERO) are held at 0,
the prior mean; by default the agent controls all noise dims, as the reference does.

Warm-up actions come from the agent's own action space (N(0, 1) per action dim, clipped to
+-action_magnitude), i.e. the same family the trained actor produces; the reference samples them
unclipped. The base-policy baseline uses `sample_iid_noise` (i.i.d. N(0, 1) over the full noise).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

MODES = ("repeat", "full", "basis")


def dct_basis(horizon: int, num_basis: int) -> np.ndarray:
    """(horizon, num_basis) DCT-II cosines, rows scaled to unit norm. Column 0 is constant."""
    if not 1 <= num_basis <= horizon:
        raise ValueError(f"basis needs 1 <= num_basis <= horizon, got {num_basis} and {horizon}.")
    h = np.arange(horizon)[:, None] + 0.5
    j = np.arange(num_basis)[None, :]
    basis = np.cos(np.pi * h * j / horizon)
    # Unit row norm => Var(noise[h]) = sum_j basis[h, j]^2 = 1 under N(0, 1) coefficients.
    return basis / np.linalg.norm(basis, axis=1, keepdims=True)


# eq=False: holds an array; identity comparison is the meaningful one.
@dataclasses.dataclass(frozen=True, eq=False)
class NoiseParam:
    """Agent action (B, action_dim) -> base-policy noise (B, H, noise_dim).

    Build with `make_noise_param`. `matrix` is M (H, k); the action is laid out as (k, m): the
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
    def action_dim(self) -> int:
        return self.num_coeffs * self.controlled_dims

    @property
    def latent_dim(self) -> int:
        return self.action_dim

    def to_noise(self, actions: np.ndarray) -> np.ndarray:
        """(B, action_dim) -> float32 (B, H, noise_dim); a jax array (or tracer) stays in jax."""
        import jax

        if isinstance(actions, jax.Array):
            return self.to_noise_jax(actions)
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(
                f"NoiseParam({self.mode!r}).to_noise expects agent actions (B, {self.action_dim}), "
                f"got {actions.shape}; the learner's action_dim must be NoiseParam.action_dim."
            )
        coeffs = actions.reshape(actions.shape[0], self.num_coeffs, self.controlled_dims)
        noise = np.einsum("hk,bkm->bhm", self.matrix, coeffs).astype(np.float32)
        pad = self.noise_shape[1] - self.controlled_dims
        if pad:
            noise = np.pad(noise, ((0, 0), (0, 0), (0, pad)))
        return noise

    def to_noise_jax(self, actions: Any) -> Any:
        """The same map in jax.numpy, for use inside a jitted update (DSRL-NA)."""
        import jax.numpy as jnp

        coeffs = actions.reshape(actions.shape[0], self.num_coeffs, self.controlled_dims)
        noise = jnp.einsum("hk,bkm->bhm", jnp.asarray(self.matrix), coeffs)
        pad = self.noise_shape[1] - self.controlled_dims
        return jnp.pad(noise, ((0, 0), (0, 0), (0, pad))) if pad else noise

    def sample_warmup(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Warm-up agent actions: N(0, 1) clipped to +-action_magnitude, float32 (B, action_dim)."""
        actions = rng.standard_normal((batch, self.action_dim))
        return np.clip(actions, -self.action_magnitude, self.action_magnitude).astype(np.float32)

    def sample_iid_noise(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """The base policy's own prior: i.i.d. N(0, 1) noise, float32 (B, H, noise_dim)."""
        return rng.standard_normal((batch, *self.noise_shape)).astype(np.float32)


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
    action_magnitude: the agent's action bound (the tanh-Gaussian's); num_basis: k for "basis";
    controlled_dims: how many leading noise dims the agent sets (default all; the rest stay 0).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown noise mode {mode!r}; choose one of {MODES}.")
    if len(noise_shape) != 2 or min(noise_shape) < 1:
        raise ValueError(f"noise_shape must be (horizon, noise_dim), got {noise_shape}.")
    if not action_magnitude > 0:
        raise ValueError(f"action_magnitude must be > 0, got {action_magnitude}.")
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
