"""What the loop stores and checkpoints: one zero transition of the replay buffer's layout
(`example_transition`), the checkpoint's pytree (`checkpoint_template`) and `restore`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.agents import spec as transition_keys
from dsrl.agents.spec import TransitionSpec
from dsrl.steering import Steering
from dsrl.training.loop_config import LoopConfig, LoopState
from dsrl.training.rollout import AGENT_KEYS


def example_transition(
    observation_spec: dict[str, tuple[tuple[int, ...], Any]],
    steering: Steering,
    transition_spec: TransitionSpec = TransitionSpec(),
) -> dict[str, Any]:
    """One zero transition with the layout `run_episodes` stores (for `ReplayBuffer(...)`).

    observation_spec: {key: (shape, dtype)} of the env's agent observation ("pixels", "state")
    and of every base-policy key in `transition_spec.policy_observation_keys`; the stored
    observations hold exactly the agent keys plus those. The "latents" have the steering's
    `latent_dim`; with `transition_spec.action_chunks`, the executed "action_chunks"
    (query_freq, robot action dim) and the "noise" (H, D) are the steering's shapes too, and so
    are the `transition_spec.num_aliases` aliases ("alias_latents", "alias_chunks")."""
    # "pixels" only where the env has them (a state-based env's agent reads "state" alone).
    agent_keys = [k for k in AGENT_KEYS if k in observation_spec or k == "state"]
    keys = (*agent_keys, *transition_spec.policy_observation_keys)
    missing = [k for k in keys if k not in observation_spec]
    if missing:
        raise ValueError(
            f"example_transition: observation_spec lacks {missing} (it has "
            f"{sorted(observation_spec)}); pass the env's observation spec merged with the base "
            "policy's observation keys the learner asks to store."
        )
    obs = {k: np.zeros(observation_spec[k][0], dtype=observation_spec[k][1]) for k in keys}
    transition = {
        transition_keys.OBSERVATIONS: obs,
        transition_keys.LATENTS: np.zeros((steering.latent_dim,), np.float32),
        transition_keys.REWARDS: np.float32(0),
        transition_keys.MASKS: np.float32(0),
        transition_keys.DISCOUNTS: np.float32(0),
        transition_keys.NEXT_OBSERVATIONS: {k: v.copy() for k, v in obs.items()},
    }
    if transition_spec.action_chunks:
        chunk_shape = (steering.query_freq, int(steering.base_policy.action_dim))
        transition[transition_keys.ACTION_CHUNKS] = np.zeros(chunk_shape, np.float32)
        transition[transition_keys.NOISE] = np.zeros(
            tuple(steering.noise_param.noise_shape), np.float32
        )
    transition |= example_aliases(steering, transition_spec.num_aliases)
    return transition


def example_aliases(steering: Steering, num_aliases: int) -> dict[str, np.ndarray]:
    """The zero alias fields of one transition (none for K = 0): K latents and K executed
    chunks, stored as float16 (see docs/dsrl_na.md for the bytes per transition)."""
    if not num_aliases:
        return {}
    dtype = np.dtype(transition_keys.ALIAS_DTYPE)
    chunk_shape = (steering.query_freq, int(steering.base_policy.action_dim))
    return {
        transition_keys.ALIAS_LATENTS: np.zeros((num_aliases, steering.latent_dim), dtype),
        transition_keys.ALIAS_CHUNKS: np.zeros((num_aliases, *chunk_shape), dtype),
    }


def check_buffer_capacity(capacity: int, config: LoopConfig) -> None:
    if capacity <= config.start_online_updates:
        raise ValueError(
            f"replay buffer capacity {capacity} <= start_online_updates "
            f"{config.start_online_updates}: updates would never start; raise the capacity "
            "(--config.replay.capacity) or lower start_online_updates."
        )


def canonical_agent(agent: Any) -> Any:
    """Python-number leaves (e.g. a fresh optimizer state's `step` = 0) as 0-d jax arrays.

    After one update those leaves ARE jax arrays, so a fresh agent and a trained one would have
    different pytree leaf types: a checkpoint template built from a fresh agent would not match
    the disk, and the jitted update would trace twice. Canonicalising both avoids that."""

    def fix(leaf: Any) -> Any:
        if isinstance(leaf, bool):
            return leaf
        if isinstance(leaf, int):
            return jnp.asarray(leaf, dtype=jnp.int32)
        if isinstance(leaf, float):
            return jnp.asarray(leaf, dtype=jnp.float32)
        return leaf

    return jax.tree_util.tree_map(fix, agent)


def checkpoint_template(agent: Any) -> dict[str, Any]:
    """The pytree layout `train` checkpoints, for `RunCheckpointer.restore`."""
    return {"agent": canonical_agent(agent), "counters": LoopState().to_tree()}


def restore(
    checkpointer: Any, agent_template: Any, example_transition: dict[str, Any] | None = None
) -> tuple[Any, LoopState, Any] | None:
    """(agent, loop state, buffer) from the latest checkpoint of a run, or None if it has none.

    With `example_transition`, the saved buffer must have its layout (a resume whose config
    changed the observation or latent shapes fails here, naming the difference)."""
    restored = checkpointer.restore(
        checkpoint_template(agent_template), example_transition=example_transition
    )
    if restored is None:
        return None
    tree, buffer = restored
    return tree["agent"], LoopState.from_tree(tree["counters"]), buffer
