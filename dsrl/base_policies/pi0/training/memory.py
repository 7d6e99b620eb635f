"""What a fine-tuning run needs in memory, from shapes alone (no weights, nothing allocated).

Per trainable choice: parameter bytes (trained leaves float32, frozen ones in the compute dtype,
bfloat16 for the released sizes, as openpi casts frozen parameters), AdamW's two moments (float32, trained leaves only), the EMA copy, and
the activations the backward pass keeps (the residuals JAX saves between the forward and the
backward pass of the loss, from `jax.ad_checkpoint`'s residual listing, for the given batch;
without `Pi0Config.remat` every layer's activations are kept, with it only each layer's input;
an upper bound on what XLA keeps live, before its buffer reuse).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import ad_checkpoint

from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.training import lora, optim
from dsrl.base_policies.pi0.training import loss as loss_lib


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _abstract_batch(config: Pi0Config, batch: int):
    h, w = config.image_resolution
    sds = jax.ShapeDtypeStruct
    obs = pi0_model.Observation(
        images={k: sds((batch, h, w, 3), jnp.float32) for k in config.image_keys},
        image_masks={k: sds((batch,), jnp.bool_) for k in config.image_keys},
        state=sds((batch, config.action_dim), jnp.float32),
        tokenized_prompt=sds((batch, config.max_token_len), jnp.int32),
        tokenized_prompt_mask=sds((batch, config.max_token_len), jnp.bool_),
    )
    actions = sds((batch, config.action_horizon, config.action_dim), jnp.float32)
    return obs, actions


def training_bytes(
    config: Pi0Config, train: optim.TrainConfig, batch: int, encoded: tuple[str, ...] | None = None
) -> dict[str, int]:
    """Bytes of parameters, optimizer state, EMA and saved activations for one configuration."""
    shapes = pi0_model.param_shapes(config)
    if train.trainable == "lora":
        llm = shapes["PaliGemma"]["llm"]
        extra = lora.lora_shapes(llm, train.lora)
        flat = {
            ("PaliGemma", "llm", *p): jax.ShapeDtypeStruct(s, jnp.float32) for p, s in extra.items()
        }
        from dsrl.base_policies.pi0.checkpoint import flatten, unflatten

        shapes = unflatten({**flatten(shapes), **flat})
    trained, frozen = optim.split_params(shapes, train.trainable)
    frozen = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, config.dtype), frozen)
    opt_state = jax.eval_shape(optim.make_optimizer(train).init, trained)
    obs, actions = _abstract_batch(config, batch)

    def loss(trained_params, frozen_params, obs, actions, noise, time):
        # Only the trained leaves are differentiated: nothing else needs residuals.
        frozen_params, obs, actions, noise, time = jax.lax.stop_gradient(
            (frozen_params, obs, actions, noise, time)
        )
        params = lora.merge(optim.combine(trained_params, frozen_params), train.lora)
        return jnp.mean(
            loss_lib.flow_matching_loss(config, params, obs, actions, noise, time, encoded)
        )

    noise = actions
    time = jax.ShapeDtypeStruct((batch,), jnp.float32)
    residuals = ad_checkpoint.saved_residuals(loss, trained, frozen, obs, actions, noise, time)
    # Residuals that are the inputs themselves (weights, the batch) are already counted.
    act = sum(
        math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
        for aval, why in residuals
        if "from the argument" not in why
    )
    return {
        "trained_params": _bytes(trained),
        "frozen_params": _bytes(frozen),
        "optimizer": _bytes(opt_state),
        "ema": _bytes(trained) if train.ema_decay is not None else 0,
        "activations": int(act),
    }


def dry_run_table(config: Pi0Config, batch: int, encoded=None) -> list[dict]:
    """`training_bytes` for full, expert-only and LoRA training (EMA on for full and expert, off
    for LoRA, as openpi's configs), with and without layer rematerialisation (`--remat`):
    "activations" / "total" as `config.remat` says, "activations_remat" / "total_remat" with it on."""
    rows = []
    remat = dataclasses.replace(config, remat=True)
    for trainable in optim.TRAINABLE:
        train = optim.TrainConfig(
            trainable=trainable, ema_decay=None if trainable == "lora" else 0.99
        )
        row = training_bytes(config, train, batch, encoded)
        total = sum(row.values())
        with_remat = training_bytes(remat, train, batch, encoded)["activations"]
        rows.append(
            {
                "trainable": trainable,
                **row,
                "total": total,
                "activations_remat": with_remat,
                "total_remat": total - row["activations"] + with_remat,
            }
        )
    return rows
