"""Expert-only fine-tuning on a cached prefix: encode every example's prefix once, then train.

With `trainable="expert"` nothing that the prefix (SigLIP, the prompt, PaliGemma's Gemma) reads
is trained, and the dataset's images and prompts are fixed, so each example's prefix KV cache is
the same at every step. `encode_dataset` computes it once, in order, with the frozen weights;
the train step then runs only the action expert against it (`loss.predict_velocity` takes a
`PrefixCache` in place of an Observation). The loss and gradients are those of the uncached
step exactly; only the work differs. Not for image augmentation or image dropout (they change
the prefix per step), nor for full or LoRA training (the prefix's weights move).

Memory: L * P * Kv * head_dim * 2 values an example, in the compute dtype (the float32 `mini`
LIBERO size: 21.5 kB, so 9k frames take ~190 MB); `nbytes` is the total.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.training import data as data_lib

Params = dict[str, Any]


class CachedPrefixDataset:
    """Every example's prefix cache and normalised actions, held in host memory.

    k, v: (L, N, P, Kv, H); mask: bool (N, P); state: float32 (N, action_dim) (normalised,
    padded: Pi0's state token reads it); actions: float32 (N, horizon, action_dim)."""

    def __init__(self, k, v, mask, state, actions, source: Any = "dataset"):
        self.k, self.v, self.mask = k, v, mask
        self.state, self.actions, self.source = state, actions, source

    def __len__(self) -> int:
        return len(self.state)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.k, self.v, self.mask, self.state, self.actions))

    def take(self, index: np.ndarray) -> tuple[pi0_model.PrefixCache, np.ndarray]:
        cache = pi0_model.PrefixCache(
            k=self.k[:, index], v=self.v[:, index], mask=self.mask[index], state=self.state[index]
        )
        return cache, self.actions[index]

    def batches(
        self, batch_size: int, seed: int = 0, start: int = 0
    ) -> Iterator[tuple[pi0_model.PrefixCache, np.ndarray]]:
        """The same examples, batch for batch, as the dataset's own `batches(batch_size, seed,
        start)` (`data.batch_indices`), so caching changes no run's data order."""
        for index in data_lib.batch_indices(len(self), batch_size, seed, start, self.source):
            yield self.take(index)


@functools.partial(jax.jit, static_argnames=("config", "encoded"))
def encode_batch(params, obs, *, config, encoded):
    """One batch's prefix cache (jitted `model.encode_prefix`)."""
    return pi0_model.encode_prefix(config, params, obs, encoded)


def encode_dataset(
    dataset,
    config: Pi0Config,
    params: Params,
    to_inputs: Callable[[dict], tuple[pi0_model.Observation, np.ndarray]],
    encoded: tuple[str, ...],
    batch_size: int = 256,
    progress: bool = True,
) -> CachedPrefixDataset:
    """Encodes `dataset` (`take(index)` / `len`, as `data.NpzDataset`) in order.

    `to_inputs`: a raw batch -> (Observation, actions), the fine-tuning's own conversion (delta
    actions, norm stats, tokenizer), so the cache holds exactly what the step would encode.
    `params`: the full tree with the frozen prefix weights (LoRA leaves are not allowed: LoRA
    training moves the prefix)."""
    n = len(dataset)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("k", "v", "mask", "state", "act")}
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="encode prefixes", total=-(-n // batch_size))
    for start in starts:
        obs, actions = to_inputs(dataset.take(np.arange(start, min(start + batch_size, n))))
        cache = encode_batch(params, obs, config=config, encoded=encoded)
        parts["k"].append(np.asarray(cache.k))
        parts["v"].append(np.asarray(cache.v))
        parts["mask"].append(np.asarray(cache.mask))
        parts["state"].append(np.asarray(cache.state, np.float32))
        parts["act"].append(np.asarray(actions, np.float32))
    return CachedPrefixDataset(
        k=np.concatenate(parts["k"], axis=1),
        v=np.concatenate(parts["v"], axis=1),
        mask=np.concatenate(parts["mask"]),
        state=np.concatenate(parts["state"]),
        actions=np.concatenate(parts["act"]),
        source=getattr(dataset, "path", "dataset"),
    )


def shard_batch(cache: pi0_model.PrefixCache, actions: np.ndarray, mesh) -> tuple:
    """`train_state.shard_batch` for a cached batch: keys and values hold the batch on axis 1."""
    if mesh is None:
        return cache, actions
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from dsrl.agents.execution import BATCH_AXIS
    from dsrl.base_policies.pi0.training import train_state as ts

    kv = NamedSharding(mesh, P(None, BATCH_AXIS))
    k, v = jax.device_put(cache.k, kv), jax.device_put(cache.v, kv)
    (mask, state), actions = ts.shard_batch(((cache.mask, cache.state), actions), mesh)
    return cache.replace(k=k, v=v, mask=mask, state=state), actions
