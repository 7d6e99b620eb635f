"""Norm stats from data, written as openpi's `assets/<asset_id>/norm_stats.json`.

As openpi's `compute_norm_stats`: every key's values are flattened to (-1, dim) (an action chunk
contributes each of its steps), on the robot's own dims, before any padding to 32; mean and the
population std (sqrt(E[x^2] - mean^2)) in float64. The 1% / 99% quantiles are exact here
(`np.quantile` over every value); openpi approximates them with 5,000-bin histograms, which
agree to about (max - min) / 5000 per dim.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping

import numpy as np

from dsrl.base_policies.pi0 import normalize

KEYS = ("state", "actions")


def compute_norm_stats(
    batches: Iterable[Mapping[str, np.ndarray]], keys: tuple[str, ...] = KEYS
) -> dict[str, normalize.NormStats]:
    """Mean / std / q01 / q99 per key over all batches (dicts holding at least `keys`)."""
    values: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for i, batch in enumerate(batches):
        for key in keys:
            if key not in batch:
                raise KeyError(f"Batch {i} has no {key!r} (keys: {sorted(batch)}).")
            x = np.asarray(batch[key], np.float64)
            values[key].append(x.reshape(-1, x.shape[-1]))
    stats = {}
    for key, chunks in values.items():
        if not chunks:
            raise ValueError("compute_norm_stats got no batches.")
        x = np.concatenate(chunks, axis=0)
        if not np.all(np.isfinite(x)):
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"{key!r} holds a non-finite value (row {bad[0]}, dim {bad[1]}).")
        mean = x.mean(axis=0)
        std = np.sqrt(np.maximum(0.0, np.mean(np.square(x), axis=0) - np.square(mean)))
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        stats[key] = normalize.NormStats(mean=mean, std=std, q01=q01, q99=q99)
    return stats


def write_norm_stats(
    checkpoint_dir: str | pathlib.Path, asset_id: str, stats: Mapping[str, normalize.NormStats]
) -> pathlib.Path:
    """Writes `<checkpoint_dir>/assets/<asset_id>/norm_stats.json`; returns its path."""
    if not asset_id or asset_id.startswith("/") or ".." in asset_id.split("/"):
        raise ValueError(f"asset_id must be a relative name such as 'my_robot', got {asset_id!r}.")
    return normalize.save_norm_stats(
        pathlib.Path(checkpoint_dir) / "assets" / asset_id, dict(stats)
    )
