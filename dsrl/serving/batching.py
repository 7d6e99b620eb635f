"""Batch shapes for the policy server: the padded sizes compiled at start-up, padding a batch up
to one of them, and adding or measuring the leading batch axis of an observation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsrl.serving.protocol import RequestError


def padded_sizes(max_batch: int, batch_sizes: Sequence[int] | None) -> tuple[int, ...]:
    """Explicit sizes, or 1, 2, 4, ... up to and including max_batch."""
    if batch_sizes is None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        sizes = {max_batch}
        size = 1
        while size < max_batch:
            sizes.add(size)
            size *= 2
        return tuple(sorted(sizes))
    sizes = sorted(set(batch_sizes))
    if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {list(batch_sizes)!r}")
    if sizes[0] != 1:
        sizes.insert(0, 1)  # single observations (openpi `infer`) are batch 1
    return tuple(sizes)


def pad_batch(tree: Mapping[str, Any], batch: int, target: int) -> dict[str, Any]:
    """Repeat the last element of every batched leaf until the batch is `target` long: the padded
    rows are valid observations, so the policy computes on sensible values."""
    out: dict[str, Any] = {}
    extra = target - batch
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = pad_batch(value, batch, target)
        elif isinstance(value, list):
            out[key] = value + [value[-1]] * extra
        elif isinstance(value, np.ndarray):
            out[key] = np.concatenate([value, np.repeat(value[-1:], extra, axis=0)])
        else:
            out[key] = value
    return out


def tile_batch(obs: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """One unbatched observation -> the same observation `batch` times (warm-up inputs)."""
    return pad_batch(add_batch_axis(obs), 1, batch)


def add_batch_axis(obs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, Mapping):
            out[key] = add_batch_axis(value)
        elif isinstance(value, str):
            out[key] = [value]
        else:
            out[key] = np.asarray(value)[None]
    return out


def batch_size_of(obs: Mapping[str, Any]) -> int:
    """The common leading size of every leaf of a batched observation (RequestError if none)."""
    sizes = set()
    for key, value in obs.items():
        if isinstance(value, np.ndarray) and value.ndim:
            sizes.add(value.shape[0])
        elif isinstance(value, list):
            sizes.add(len(value))
        elif isinstance(value, dict):
            sizes.add(batch_size_of(value))
        else:
            raise RequestError(
                "bad_shape",
                f"infer_batch: obs[{key!r}] has no leading batch axis; send arrays (B, ...) "
                "and lists of B strings",
            )
    if len(sizes) != 1:
        raise RequestError(
            "bad_shape", f"infer_batch: leaves disagree on the batch size ({sorted(sizes)})"
        )
    return sizes.pop()


def pad_to_compiled(
    obs: dict[str, Any], noise: np.ndarray, batch: int, sizes: Sequence[int]
) -> tuple[dict[str, Any], np.ndarray]:
    """Pad a batch to the next compiled size: a new batch size would recompile (seconds) while
    other requests wait."""
    padded = next(b for b in sizes if b >= batch)
    if padded == batch:
        return obs, noise
    obs = pad_batch(obs, batch, padded)
    noise = np.concatenate([noise, np.repeat(noise[-1:], padded - batch, axis=0)])
    return obs, noise
