"""DDPM behaviour cloning of a `DiffusionMLPPolicy` from (observation, action chunk) arrays.

The loss is DPPO's epsilon prediction (`ddim.ddpm_loss`); the optimizer is DPPO's pretraining
choice, AdamW with a cosine decay from `learning_rate` to `min_lr`, and the policy keeps an
exponential moving average of the weights, as DPPO's checkpoints' "ema" entry (which its loader
prefers). DPPO updates its EMA every few epochs; here it is updated every gradient step, so
`ema_decay` is per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.base_policies.diffusion.ddim import ddpm_loss
from dsrl.base_policies.diffusion.dppo import Normalization
from dsrl.base_policies.diffusion.network import init_network_params
from dsrl.base_policies.diffusion.policy import DiffusionMLPPolicy, DiffusionPolicyConfig


@dataclasses.dataclass(frozen=True)
class BCConfig:
    steps: int = 20_000
    batch_size: int = 128  # DPPO's Gym pretraining batch (Robomimic: 256)
    learning_rate: float = 1e-3  # DPPO: 1e-3 cosine-decayed to 1e-4, weight decay 1e-6
    min_lr: float = 1e-4
    weight_decay: float = 1e-6
    ema_decay: float = 0.999
    ema_start_step: int = 1000  # before it the EMA copies the weights (DPPO: epoch_start_ema)
    # Fit DPPO's min-max normalization to the data (the policy then maps raw obs to raw actions).
    # False: the arrays are already in DPPO's normalized [-1, 1] spaces.
    normalize: bool = True
    seed: int = 0
    log_every: int = 1000

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("BCConfig.steps and batch_size must be >= 1.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"BCConfig.ema_decay={self.ema_decay} must be in [0, 1).")


def _check_data(config: DiffusionPolicyConfig, obs: np.ndarray, chunks: np.ndarray):
    net = config.network
    obs = np.asarray(obs, np.float32)
    chunks = np.asarray(chunks, np.float32)
    if obs.ndim < 2 or int(np.prod(obs.shape[1:])) != net.cond_dim:
        raise ValueError(f"observations have shape {obs.shape}; expected (N, {net.cond_dim}).")
    if chunks.shape[1:] != (net.horizon_steps, net.action_dim):
        raise ValueError(
            f"action chunks have shape {chunks.shape}; expected (N, {net.horizon_steps}, "
            f"{net.action_dim}) (horizon_steps x action_dim)."
        )
    if len(obs) != len(chunks) or len(obs) == 0:
        raise ValueError(
            f"{len(obs)} observations vs {len(chunks)} action chunks (need N > 0 each)."
        )
    if not (np.isfinite(obs).all() and np.isfinite(chunks).all()):
        raise ValueError("observations or action chunks contain NaN or inf.")
    return obs.reshape(len(obs), net.cond_dim), chunks


def train_diffusion_policy(
    config: DiffusionPolicyConfig,
    observations: np.ndarray,
    action_chunks: np.ndarray,
    bc: BCConfig = BCConfig(),
    log: Callable[[str], None] | None = None,
) -> tuple[DiffusionMLPPolicy, list[float]]:
    """Clones (N, cond_dim) observations -> (N, horizon, action_dim) chunks into a policy.

    Returns the policy (EMA weights, with the fitted normalization when `bc.normalize`) and the
    training loss every `bc.log_every` steps and at the last step."""
    import optax  # training only

    obs, chunks = _check_data(config, observations, action_chunks)
    normalization = None
    if bc.normalize:
        normalization = Normalization.from_data(obs.reshape(-1, obs.shape[-1]), chunks)
        obs = np.asarray(normalization.normalize_obs(obs), np.float32)
        chunks = np.asarray(normalization.normalize_action(chunks), np.float32)

    net = config.network
    steps_t = config.sampler.denoising_steps
    params = init_network_params(net, bc.seed)
    schedule = optax.cosine_decay_schedule(bc.learning_rate, bc.steps, bc.min_lr / bc.learning_rate)
    optimizer = optax.adamw(schedule, weight_decay=bc.weight_decay)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, ema, opt_state, step, obs_b, chunks_b, rng):
        loss, grads = jax.value_and_grad(
            lambda p: ddpm_loss(net, steps_t, p, obs_b, chunks_b, rng)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = jax.tree_util.tree_map(jnp.add, params, updates)
        decay = jnp.where(step < bc.ema_start_step, 0.0, bc.ema_decay)
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        return params, ema, opt_state, loss

    rng = np.random.default_rng(bc.seed)
    key = jax.random.PRNGKey(bc.seed)
    ema = params
    losses = []
    for step in range(bc.steps):
        idx = rng.integers(0, len(obs), bc.batch_size)
        key, sub = jax.random.split(key)
        params, ema, opt_state, loss = update(
            params, ema, opt_state, step, obs[idx], chunks[idx], sub
        )
        if step % bc.log_every == 0 or step == bc.steps - 1:
            losses.append(float(loss))
            if log is not None:
                log(f"step {step:6d} loss {float(loss):.4f}")
    return DiffusionMLPPolicy(config, ema, normalization), losses
