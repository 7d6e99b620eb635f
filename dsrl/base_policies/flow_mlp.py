"""A small flow-matching policy: the embedded demo's frozen base policy, and the tests' stand-in
for Pi0.

It follows Pi0's flow convention exactly, so that steering it means what steering Pi0 means:
  x_t = t * noise + (1 - t) * actions,   the network predicts u = noise - actions,
  sampling integrates dx/dt = v(x_t, t, state) with Euler from t = 1 (x_1 = the noise) to t = 0
  in `num_steps` steps of dt = -1 / num_steps, and returns x_0[..., :action_dim].
The noise has shape (horizon, noise_dim); noise_dim >= action_dim, the extra dims are padding that
the network reads but whose output is dropped (as with Pi0's 32-d padded action space).

The velocity field is an MLP on [flattened x_t, sinusoidal embedding of t, base-policy state].
`FlowMLPPolicy.load_demo()` loads the checkpoint shipped in `dsrl/assets/flow_mlp_demo/`
(trained by `scripts/pretrain_flow_mlp.py` on the demo task).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

DEMO_ASSET_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "flow_mlp_demo"
LIBERO_ASSET_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "flow_mlp_libero"
_CONFIG_FILE = "config.json"
_PARAMS_FILE = "params.npz"
# Optional: sha256 of params.npz, checked at load when present (shipped assets carry one).
_HASH_FILE = "params.sha256"

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class FlowMLPConfig:
    horizon: int = 8
    action_dim: int = 2
    # >= action_dim; the extra dims are padding, like Pi0's 32-d noise for 7-d LIBERO actions.
    noise_dim: int = 2
    state_dim: int = 2
    # Observation key holding the (B, state_dim) conditioning vector.
    state_key: str = "policy_state"
    hidden_dims: tuple[int, ...] = (128, 128, 128)
    time_embed_dim: int = 32
    num_steps: int = 10
    # The state is multiplied by this before the network reads it (e.g. 10 for poses in metres,
    # so that centimetre differences are not lost against unit-scale activations).
    state_scale: float = 1.0
    # True: one noise vector for the whole chunk (row 0 of the noise, repeated over the horizon),
    # in training and sampling. The policy's noise then lives in the noise_dim-d space that
    # 'repeat' steering moves in, so a latent picks a behaviour for the whole chunk instead of
    # being an off-distribution (perfectly correlated) noise. Rows 1.. of a noise are ignored.
    shared_noise: bool = False

    def __post_init__(self):
        if self.noise_dim < self.action_dim:
            raise ValueError(
                f"FlowMLPConfig.noise_dim={self.noise_dim} < action_dim={self.action_dim}: the "
                "noise must cover every action dim (pad it, as Pi0 does, not truncate)."
            )
        if self.num_steps < 1 or self.horizon < 1:
            raise ValueError("FlowMLPConfig.num_steps and horizon must be >= 1.")

    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.horizon, self.noise_dim)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def effective_noise(self, noise: jax.Array) -> jax.Array:
        """The (B, horizon, noise_dim) noise the flow starts from: row 0 repeated when
        `shared_noise`, else the noise itself."""
        if not self.shared_noise:
            return noise
        return jnp.broadcast_to(noise[:, :1], noise.shape)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FlowMLPConfig:
        data = dict(data)
        data["hidden_dims"] = tuple(data["hidden_dims"])
        return cls(**data)


def time_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding of flow time t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    # Periods from 4e-3 to 4 (as in Pi0's posemb_sincos) so both coarse and fine t are resolved.
    fraction = jnp.linspace(0.0, 1.0, half)
    period = 4e-3 * (4.0 / 4e-3) ** fraction
    angle = t[:, None] / period[None, :] * 2.0 * math.pi
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class VelocityField(nn.Module):
    """v(x_t, t, state): (B, H, D), (B,), (B, S) -> (B, H, D)."""

    config: FlowMLPConfig

    @nn.compact
    def __call__(self, x_t: jax.Array, t: jax.Array, state: jax.Array) -> jax.Array:
        c = self.config
        batch = x_t.shape[0]
        h = jnp.concatenate(
            [
                x_t.reshape(batch, -1),
                time_embedding(t, c.time_embed_dim),
                state * c.state_scale,
            ],
            axis=-1,
        )
        for width in c.hidden_dims:
            h = nn.swish(nn.Dense(width)(h))
        out = nn.Dense(c.horizon * c.noise_dim, kernel_init=nn.initializers.zeros)(h)
        return out.reshape(batch, c.horizon, c.noise_dim)


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def write_params_hash(directory: str | pathlib.Path) -> str:
    """Writes params.sha256 next to params.npz (checked by FlowMLPPolicy.load); returns it."""
    directory = pathlib.Path(directory)
    digest = _sha256(directory / _PARAMS_FILE)
    (directory / _HASH_FILE).write_text(f"{digest}  {_PARAMS_FILE}\n")
    return digest


def init_params(config: FlowMLPConfig, seed: int) -> Params:
    batch = 1
    return VelocityField(config).init(
        jax.random.PRNGKey(seed),
        jnp.zeros((batch, *config.noise_shape)),
        jnp.zeros((batch,)),
        jnp.zeros((batch, config.state_dim)),
    )["params"]


def sample_actions_jax(
    config: FlowMLPConfig, params: Params, state: jax.Array, noise: jax.Array
) -> jax.Array:
    """Pure JAX Euler sampler (jit/vmap/grad friendly).

    state: (B, state_dim); noise: (B, horizon, noise_dim) = x at t = 1.
    Returns (B, horizon, action_dim) float32 = x at t = 0 with the padding dims dropped.
    """
    model = VelocityField(config)
    dt = -1.0 / config.num_steps
    batch = noise.shape[0]
    state = state.astype(jnp.float32)

    def euler_step(i, x):
        # t computed from the step index (not accumulated) so the last step lands exactly on 0.
        t = jnp.full((batch,), 1.0 - i / config.num_steps, jnp.float32)
        return x + dt * model.apply({"params": params}, x, t, state)

    x1 = config.effective_noise(noise.astype(jnp.float32))
    x0 = jax.lax.fori_loop(0, config.num_steps, euler_step, x1)
    return x0[..., : config.action_dim]


def flow_matching_loss(
    config: FlowMLPConfig,
    params: Params,
    state: jax.Array,
    actions: jax.Array,
    rng: jax.Array,
) -> jax.Array:
    """Pi0's flow-matching loss on demonstration chunks.

    state: (B, state_dim); actions: (B, horizon, action_dim). Time is drawn from Beta(1.5, 1)
    rescaled to [0.001, 1] as in Pi0 (more weight near the noise end).
    """
    noise_rng, time_rng = jax.random.split(rng)
    pad = config.noise_dim - config.action_dim
    actions = jnp.pad(actions, ((0, 0), (0, 0), (0, pad)))
    noise = config.effective_noise(jax.random.normal(noise_rng, actions.shape))
    # Beta(1.5, 1) has CDF x^1.5: inverse-CDF sampling avoids compiling a gamma sampler.
    beta = jax.random.uniform(time_rng, (actions.shape[0],)) ** (1.0 / 1.5)
    t = beta * 0.999 + 0.001
    x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
    target = noise - actions
    pred = VelocityField(config).apply({"params": params}, x_t, t, state)
    return jnp.mean(jnp.square(pred - target))


def train_flow_matching(
    config: FlowMLPConfig,
    states: np.ndarray,
    chunks: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log_every: int = 1000,
    log: Callable[[str], None] | None = None,
) -> tuple[Params, list[float]]:
    """Behaviour cloning with `flow_matching_loss` (both pretraining scripts use it).

    AdamW (weight decay 1e-4) with a warm-up (min(500, steps // 10) steps) and cosine decay to
    5% of `lr`; minibatches of `batch_size` (state, chunk) pairs drawn with replacement; every
    random draw is seeded by `seed`. states: (N, state_dim); chunks: (N, horizon, action_dim).
    Returns the parameters and the loss every `log_every` steps and at the last step (each also
    passed to `log` as a line, when given).
    """
    import optax  # training only: loading and sampling a policy does not need it

    params = init_params(config, seed)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(500, steps // 10), steps, lr * 0.05)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, states, chunks, rng):
        loss, grads = jax.value_and_grad(
            lambda p: flow_matching_loss(config, p, states, chunks, rng)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    data_rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    losses = []
    for step in range(steps):
        idx = data_rng.integers(0, len(states), batch_size)
        key, sub = jax.random.split(key)
        params, opt_state, loss = update(params, opt_state, states[idx], chunks[idx], sub)
        if step % log_every == 0 or step == steps - 1:
            losses.append(float(loss))
            if log is not None:
                log(f"step {step:6d} loss {float(loss):.4f}")
    return params, losses


class FlowMLPPolicy:
    """Implements `dsrl.base_policies.base.BasePolicy` for the flow MLP.

    Attributes: `config`, `params` (a pytree of jnp arrays), `noise_shape`, `action_dim`.
    """

    def __init__(self, config: FlowMLPConfig, params: Params):
        self.config = config
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self.noise_shape = config.noise_shape
        self.action_dim = config.action_dim
        self._sample = jax.jit(functools.partial(sample_actions_jax, config))

    # BasePolicy -------------------------------------------------------------------------------

    def sample_actions(self, observation: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        """observation[state_key]: (B, state_dim); noise: (B, horizon, noise_dim).
        Returns np.float32 (B, horizon, action_dim)."""
        state = self._state_from(observation)
        noise = np.asarray(noise, np.float32)
        if noise.ndim != 3 or noise.shape[1:] != self.noise_shape:
            raise ValueError(
                f"FlowMLPPolicy.sample_actions: noise has shape {noise.shape}, expected "
                f"(B, {self.noise_shape[0]}, {self.noise_shape[1]}); map agent actions through a "
                "NoiseParam (dsrl.steering) first."
            )
        if noise.shape[0] != state.shape[0]:
            raise ValueError(
                f"FlowMLPPolicy.sample_actions: batch mismatch, {state.shape[0]} observations vs "
                f"{noise.shape[0]} noises."
            )
        return np.asarray(self._sample(self.params, state, noise), np.float32)

    def sample_actions_jax(
        self, params: Params, observation: Mapping[str, Any], noise: jax.Array
    ) -> jax.Array:
        """Pure function of (params, observation, noise) for use inside another jitted function
        (DSRL-NA): `observation[state_key]` (B, state_dim), noise (B, H, D) -> (B, H, action_dim)."""
        return sample_actions_jax(self.config, params, observation[self.config.state_key], noise)

    # Persistence ------------------------------------------------------------------------------

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes config.json and params.npz (a few hundred kB) into `directory`."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        flat = traverse_util.flatten_dict(jax.device_get(self.params), sep="/")
        np.savez_compressed(
            directory / _PARAMS_FILE, **{k: np.asarray(v, np.float32) for k, v in flat.items()}
        )
        (directory / _CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> FlowMLPPolicy:
        directory = pathlib.Path(directory)
        config_path, params_path = directory / _CONFIG_FILE, directory / _PARAMS_FILE
        if not config_path.is_file() or not params_path.is_file():
            raise FileNotFoundError(
                f"No flow policy in {directory}: expected {_CONFIG_FILE} and {_PARAMS_FILE} "
                "(write one with FlowMLPPolicy.save or scripts/pretrain_flow_mlp.py)."
            )
        config = FlowMLPConfig.from_json(json.loads(config_path.read_text()))
        hash_path = directory / _HASH_FILE
        if hash_path.is_file():
            expected_hash = hash_path.read_text().split()[0]
            actual_hash = _sha256(params_path)
            if actual_hash != expected_hash:
                raise ValueError(
                    f"{params_path} has sha256 {actual_hash}, but {hash_path} says "
                    f"{expected_hash}: the checkpoint is damaged or was replaced without its hash."
                )
        with np.load(params_path) as data:
            flat = {k: np.asarray(data[k]) for k in data.files}
        params = traverse_util.unflatten_dict(flat, sep="/")
        abstract = jax.eval_shape(functools.partial(init_params, config), 0)
        expected = jax.tree_util.tree_map(lambda x: tuple(x.shape), abstract)
        got = jax.tree_util.tree_map(np.shape, params)
        if expected != got:
            raise ValueError(
                f"{params_path} does not match {config_path}: parameter shapes {got} vs the "
                f"config's {expected}. Re-save both together."
            )
        return cls(config, params)

    @classmethod
    def load_libero(cls) -> FlowMLPPolicy:
        """The shipped base policy for the LIBERO CPU proof (`dsrl.envs.libero_scripted`)."""
        return cls.load(LIBERO_ASSET_DIR)

    @classmethod
    def load_demo(cls) -> FlowMLPPolicy:
        """The shipped base policy for `dsrl.envs.demo.DemoEnv`."""
        return cls.load(DEMO_ASSET_DIR)

    # ------------------------------------------------------------------------------------------

    def _state_from(self, observation: Mapping[str, Any]) -> np.ndarray:
        key = self.config.state_key
        if key not in observation:
            raise KeyError(
                f"FlowMLPPolicy needs observation[{key!r}] (B, {self.config.state_dim}); got keys "
                f"{sorted(observation)}. Pass the env's base-policy observation, batched."
            )
        state = np.asarray(observation[key], np.float32)
        if state.ndim != 2 or state.shape[1] != self.config.state_dim:
            raise ValueError(
                f"FlowMLPPolicy: observation[{key!r}] has shape {state.shape}, expected "
                f"(B, {self.config.state_dim}) (batched: add a leading axis for one observation)."
            )
        return state
