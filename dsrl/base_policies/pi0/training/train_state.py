"""The fine-tuning state, one jitted train step, exact resume, and openpi-layout exports.

A step is openpi's: the key folded with the step number draws noise and time (see
`loss.compute_loss`), the loss is the mean of the (B, H) flow-matching loss, gradients of the
trained leaves only go through clipping + AdamW, and the EMA follows
ema = decay * ema + (1 - decay) * new.

Data parallel: with a `jax.sharding.Mesh` whose one axis is `execution.BATCH_AXIS` (the learner's
mesh), the state is replicated and each batch split along its first axis; XLA turns the gradient
mean into an all-reduce, so a step computes the same thing on any number of devices.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dsrl.agents.execution import BATCH_AXIS
from dsrl.base_policies.pi0 import checkpoint as ckpt_lib
from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.training import lora as lora_lib
from dsrl.base_policies.pi0.training import loss as loss_lib
from dsrl.base_policies.pi0.training import optim

Params = dict[str, Any]


class TrainState(struct.PyTreeNode):
    """step: int32 (); rng: the run's key (folded with step each step); trained / frozen: the
    two halves of the parameters (`optim.split_params`); opt_state: optax state of `trained`
    only; ema: EMA of `trained`, or None."""

    step: jax.Array
    rng: jax.Array
    trained: Params
    frozen: Params
    opt_state: Any
    ema: Params | None

    def params(self, use_ema: bool = True) -> Params:
        """The full parameter tree (the EMA weights where kept, as openpi exports them)."""
        trained = self.ema if (use_ema and self.ema is not None) else self.trained
        return optim.combine(trained, self.frozen)


def init_train_state(
    params: Params, config: optim.TrainConfig, seed: int = 0, frozen_dtype: str | None = None
) -> TrainState:
    """A fresh state from (loaded) params. For trainable="lora" without LoRA leaves, openpi's
    LoRA leaves are added first (seeded by `seed`). `frozen_dtype="bfloat16"` stores the frozen
    leaves in bfloat16, as openpi does (the trained ones keep their dtype)."""
    if config.trainable == "lora" and not lora_lib.has_lora(params):
        params = lora_lib.add_lora(params, config.lora, seed=seed)
    trained, frozen = optim.split_params(params, config.trainable)
    # Own copies: the train step donates the state's buffers, which must not be the caller's.
    trained = jax.tree.map(jnp.array, trained)
    frozen = jax.tree.map(lambda x: jnp.array(x, dtype=frozen_dtype), frozen)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(jax.random.key(seed)),
        trained=trained,
        frozen=frozen,
        opt_state=optim.make_optimizer(config).init(trained),
        ema=None if config.ema_decay is None else jax.tree.map(jnp.copy, trained),
    )


def _step(
    state: TrainState,
    obs: pi0_model.Observation,
    actions: jax.Array,
    *,
    model_config: Pi0Config,
    config: optim.TrainConfig,
    encoded: tuple[str, ...] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(trained):
        params = optim.combine(trained, state.frozen)
        params = lora_lib.merge(params, config.lora)
        loss = loss_lib.compute_loss(
            model_config, params, rng, obs, actions, encoded, augment=config.augment
        )
        return jnp.mean(loss)

    loss, grads = jax.value_and_grad(loss_fn)(state.trained)
    tx = optim.make_optimizer(config)
    updates, opt_state = tx.update(grads, state.opt_state, state.trained)
    trained = optax.apply_updates(state.trained, updates)
    ema = state.ema
    if config.ema_decay is not None:
        d = config.ema_decay
        ema = jax.tree.map(lambda old, new: d * old + (1 - d) * new, ema, trained)
    info = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(trained),
        "learning_rate": optim.lr_schedule(config)(state.step),
    }
    new = state.replace(step=state.step + 1, trained=trained, opt_state=opt_state, ema=ema)
    return new, info


@functools.partial(
    jax.jit, static_argnames=("model_config", "config", "encoded"), donate_argnums=(0,)
)
def train_step(state, obs, actions, *, model_config, config, encoded=None):
    """One jitted step (the input state's buffers are donated): (state, metrics). `encoded`:
    cameras through SigLIP (default all; see `loss.predict_velocity`)."""
    return _step(state, obs, actions, model_config=model_config, config=config, encoded=encoded)


# ----------------------------------------------------------------------------------------------
# Data parallel


def shard_state(state: TrainState, mesh: Mesh | None) -> TrainState:
    """Replicates the state over the mesh (no-op without one)."""
    return state if mesh is None else jax.device_put(state, NamedSharding(mesh, P()))


def shard_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Splits every leaf along its first (batch) axis over the mesh (no-op without one)."""
    if mesh is None:
        return tree
    n = mesh.shape[BATCH_AXIS]
    bad = [x.shape for x in jax.tree.leaves(tree) if x.shape[0] % n]
    if bad:
        raise ValueError(f"Batch size must be a multiple of the {n} devices; got shapes {bad[:3]}.")
    return jax.device_put(tree, NamedSharding(mesh, P(BATCH_AXIS)))


def make_mesh(num_devices: int = 0) -> Mesh | None:
    """The learner's one-axis mesh over `num_devices` local devices (0: all); None for one."""
    devices = jax.local_devices()[: num_devices or None]
    return None if len(devices) == 1 else Mesh(np.array(devices), (BATCH_AXIS,))


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_train_state(state: TrainState, directory: str | pathlib.Path) -> pathlib.Path:
    """Writes the whole state (params, optimizer, EMA, step, key) to `<directory>/train_state`
    with orbax, leaf by leaf in the state's flattening order."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(directory).resolve() / "train_state"
    leaves = jax.tree.leaves(state)
    item = {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(path, item, force=True)
    return path


def restore_train_state(directory: str | pathlib.Path, like: TrainState) -> TrainState:
    """Restores a state saved by `save_train_state` into the structure of `like` (a state made
    by `init_train_state` with the same model, params tree and TrainConfig)."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(directory).resolve() / "train_state"
    if not path.is_dir():
        raise FileNotFoundError(f"No train state at {path} (written by save_train_state).")
    leaves, treedef = jax.tree.flatten(like)
    with ocp.PyTreeCheckpointer() as ckptr:
        item = ckptr.restore(path)
    if len(item) != len(leaves):
        raise ValueError(
            f"{path} holds {len(item)} arrays but this TrainConfig/model needs {len(leaves)}: "
            "resume with the model config and TrainConfig of the saved run."
        )
    restored = []
    for i, ref in enumerate(leaves):
        x = np.asarray(item[f"{i:05d}"])
        if x.shape != ref.shape or x.dtype != ref.dtype:
            raise ValueError(
                f"{path}: array {i} is {x.dtype}{x.shape}, expected {ref.dtype}{ref.shape}; "
                "resume with the model config and TrainConfig of the saved run."
            )
        restored.append(jnp.asarray(x))
    return jax.tree.unflatten(treedef, restored)


def export_openpi(
    state: TrainState,
    directory: str | pathlib.Path,
    *,
    norm_stats: Any = None,
    asset_id: str | None = None,
    merge_lora: bool = False,
) -> pathlib.Path:
    """`<directory>/params` (the EMA params where kept, LoRA leaves kept unless `merge_lora`)
    and `<directory>/assets/<asset_id>/norm_stats.json`, openpi's checkpoint layout."""
    params = state.params()
    if merge_lora:
        params = lora_lib.merge(params)
    return ckpt_lib.save_openpi_checkpoint(
        params, directory, norm_stats=norm_stats, asset_id=asset_id
    )
