"""DPPO's DDPM noise schedule, its deterministic DDIM sampler (eta = 0) and its training loss.

Facts from DPPO `model/diffusion/diffusion.py` and `sampling.py` (irom-lab/dppo 7b10df6):
  * betas: the cosine schedule of Nichol & Dhariwal with s = 0.008, computed in float64 over
    `np.linspace(0, T + 1, T + 1)` (sic: DPPO's grid), clipped to [0, 0.999], then float32;
    alphas_cumprod = cumprod(1 - betas) in float32.
  * DDIM "uniform" (HF "leading") timesteps: t_k = k * (T // ddim_steps), k = 0..ddim_steps-1,
    visited from the largest down; alpha_prev of the smallest is 1.
  * One step with predicted eps at timestep t (alpha = alphas_cumprod[t]):
        x0 = (x - sqrt(1 - alpha) eps) / sqrt(alpha)
        if denoised_clip_value: x0 = clip(x0, +-v); eps = (x - sqrt(alpha) x0) / sqrt(1 - alpha)
        if eps_clip_value:      eps = clip(eps, +-v)
        x = sqrt(alpha_prev) x0 + sqrt(1 - alpha_prev) eps        (eta = 0: no fresh noise)
    and after the last step x = clip(x, +-final_action_clip_value) when that is set.
  * Training: t ~ U{0..T-1}, x_t = sqrt(ac_t) x0 + sqrt(1 - ac_t) eps, loss = mean (eps_theta - eps)^2.
The network sees the integer DDPM timestep t, not the DDIM step index.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.base_policies.diffusion.network import DiffusionMLP, NetworkConfig


def cosine_beta_schedule(denoising_steps: int, s: float = 0.008) -> np.ndarray:
    """float32 (T,) betas, computed as DPPO computes them."""
    steps = denoising_steps + 1
    x = np.linspace(0, steps, steps)
    alphas_cumprod = np.cos(((x / steps) + s) / (1 + s) * np.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return np.clip(betas, 0, 0.999).astype(np.float32)


def alphas_cumprod(denoising_steps: int) -> np.ndarray:
    """float32 (T,) cumulative products of 1 - beta, accumulated in float32 like torch.cumprod."""
    return np.cumprod(np.float32(1.0) - cosine_beta_schedule(denoising_steps), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class DDIMTables:
    """Per-step constants in the order the sampler visits them (largest timestep first)."""

    timesteps: np.ndarray  # (K,) int32 DDPM timesteps
    alphas: np.ndarray  # (K,) float32 alphas_cumprod[t]
    alphas_prev: np.ndarray  # (K,) float32 alphas_cumprod of the next visited step (1 at the end)
    sqrt_one_minus_alphas: np.ndarray  # (K,) float32


def ddim_tables(denoising_steps: int, ddim_steps: int) -> DDIMTables:
    if not 1 <= ddim_steps <= denoising_steps:
        raise ValueError(
            f"ddim_steps={ddim_steps} must be in [1, denoising_steps={denoising_steps}]."
        )
    ac = alphas_cumprod(denoising_steps)
    step_ratio = denoising_steps // ddim_steps
    t = np.arange(ddim_steps) * step_ratio
    alphas = ac[t].astype(np.float32)
    alphas_prev = np.concatenate([np.ones(1, np.float32), ac[t[:-1]]]).astype(np.float32)
    sqrt_one_minus = ((np.float32(1.0) - alphas) ** np.float32(0.5)).astype(np.float32)
    return DDIMTables(
        timesteps=t[::-1].astype(np.int32).copy(),
        alphas=alphas[::-1].copy(),
        alphas_prev=alphas_prev[::-1].copy(),
        sqrt_one_minus_alphas=sqrt_one_minus[::-1].copy(),
    )


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """DPPO's `DiffusionModel` sampling arguments (DDIM with eta = 0, epsilon prediction)."""

    denoising_steps: int = 100
    ddim_steps: int | None = None
    denoised_clip_value: float | None = 1.0
    final_action_clip_value: float | None = None
    eps_clip_value: float | None = None

    def __post_init__(self):
        if self.ddim_steps is None:
            raise ValueError(
                "Set ddim_steps (the DSRL release uses 5 for Gym, 8 for Lift/Can/Square, 100 for "
                "Transport): DSRL steers the deterministic DDIM sampler."
            )
        ddim_tables(self.denoising_steps, self.ddim_steps)  # validates the pair


def ddim_sample(
    network_config: NetworkConfig,
    sampler: SamplerConfig,
    params,
    state: jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """Deterministic DDIM from x_T = `noise` (B, horizon, action_dim) given `state` (B, cond_dim).

    Pure JAX (jit/vmap friendly); returns float32 (B, horizon, action_dim) in the policy's
    normalized action space."""
    tables = ddim_tables(sampler.denoising_steps, sampler.ddim_steps)
    model = DiffusionMLP(network_config)
    batch = noise.shape[0]
    state = state.astype(jnp.float32)

    def step(x, consts):
        t, alpha, alpha_prev, sqrt_one_minus = consts
        eps = model.apply({"params": params}, x, jnp.full((batch,), t, jnp.int32), state)
        sqrt_alpha = jnp.sqrt(alpha)
        x0 = (x - sqrt_one_minus * eps) / sqrt_alpha
        if sampler.denoised_clip_value is not None:
            x0 = jnp.clip(x0, -sampler.denoised_clip_value, sampler.denoised_clip_value)
            # DPPO re-derives eps from the clipped x0 (HF's DDIM does not).
            eps = (x - sqrt_alpha * x0) / sqrt_one_minus
        if sampler.eps_clip_value is not None:
            eps = jnp.clip(eps, -sampler.eps_clip_value, sampler.eps_clip_value)
        x = jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1.0 - alpha_prev) * eps
        return x, None

    consts = (
        jnp.asarray(tables.timesteps),
        jnp.asarray(tables.alphas),
        jnp.asarray(tables.alphas_prev),
        jnp.asarray(tables.sqrt_one_minus_alphas),
    )
    x, _ = jax.lax.scan(step, noise.astype(jnp.float32), consts)
    if sampler.final_action_clip_value is not None:
        x = jnp.clip(x, -sampler.final_action_clip_value, sampler.final_action_clip_value)
    return x


def ddpm_loss(
    network_config: NetworkConfig,
    denoising_steps: int,
    params,
    state: jax.Array,
    actions: jax.Array,
    rng: jax.Array,
) -> jax.Array:
    """DPPO's epsilon-prediction loss on (normalized) action chunks (B, horizon, action_dim)."""
    t_rng, noise_rng = jax.random.split(rng)
    ac = jnp.asarray(alphas_cumprod(denoising_steps))
    t = jax.random.randint(t_rng, (actions.shape[0],), 0, denoising_steps)
    noise = jax.random.normal(noise_rng, actions.shape, jnp.float32)
    x_t = jnp.sqrt(ac[t])[:, None, None] * actions + jnp.sqrt(1.0 - ac[t])[:, None, None] * noise
    pred = DiffusionMLP(network_config).apply({"params": params}, x_t, t, state)
    return jnp.mean(jnp.square(pred - noise))
