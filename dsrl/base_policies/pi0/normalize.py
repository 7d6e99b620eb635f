"""Normalisation statistics in openpi's `norm_stats.json` format, and (un)normalisation.

A checkpoint ships `assets/<asset_id>/norm_stats.json`:
`{"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...]|null, "q99": [...]|null},
"actions": {...}}}`. Pi0 uses z-score normalisation, Pi0.5 quantile normalisation.

The stats may be shorter than the data (openpi computes them on the robot's 7/8/14 dims and pads
the data to 32 later) or already 32 long (older checkpoints padded first). Both work here, with
exactly openpi's rules: normalising slices the stats to the data width; unnormalising pads the
stats (mean 0 / std 1) or, for quantiles, leaves the extra dims untouched.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

NORM_STATS_FILE = "norm_stats.json"
# openpi adds this to the denominator of both normalisations.
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics of one quantity (float64 (d,) arrays, as openpi loads them)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    @classmethod
    def from_json(cls, d: dict) -> NormStats:
        def arr(key):
            value = d.get(key)
            return None if value is None else np.asarray(value, dtype=np.float64)

        if d.get("mean") is None or d.get("std") is None:
            raise ValueError(f"norm stats need 'mean' and 'std', got keys {sorted(d)}.")
        return cls(mean=arr("mean"), std=arr("std"), q01=arr("q01"), q99=arr("q99"))

    def to_json(self) -> dict:
        def lst(a):
            return None if a is None else np.asarray(a, dtype=np.float64).tolist()

        return {
            "mean": lst(self.mean),
            "std": lst(self.std),
            "q01": lst(self.q01),
            "q99": lst(self.q99),
        }


def load_norm_stats(path: str | pathlib.Path) -> dict[str, NormStats]:
    """Reads a `norm_stats.json` file, or the one inside a directory."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / NORM_STATS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"Norm stats file not found at {path}. A released openpi checkpoint keeps it at "
            f"<checkpoint>/assets/<asset_id>/{NORM_STATS_FILE} (e.g. asset_id "
            "'physical-intelligence/libero' for pi0_libero)."
        )
    data = json.loads(path.read_text())
    if "norm_stats" not in data:
        raise ValueError(f"{path} is not an openpi norm stats file: no top-level 'norm_stats' key.")
    return {key: NormStats.from_json(value) for key, value in data["norm_stats"].items()}


def save_norm_stats(
    directory: str | pathlib.Path, norm_stats: dict[str, NormStats]
) -> pathlib.Path:
    """Writes `<directory>/norm_stats.json` in openpi's format; returns the file path."""
    path = pathlib.Path(directory) / NORM_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"norm_stats": {key: stats.to_json() for key, stats in norm_stats.items()}}
    path.write_text(json.dumps(payload, indent=2))
    return path


def list_asset_ids(checkpoint_dir: str | pathlib.Path) -> list[str]:
    """Asset ids (e.g. 'physical-intelligence/libero') that have a norm_stats.json in a checkpoint."""
    assets = pathlib.Path(checkpoint_dir) / "assets"
    if not assets.is_dir():
        return []
    return sorted(str(p.parent.relative_to(assets)) for p in assets.rglob(NORM_STATS_FILE))


def load_checkpoint_norm_stats(
    checkpoint_dir: str | pathlib.Path, asset_id: str | None = None
) -> dict[str, NormStats]:
    """Norm stats of a checkpoint. Without `asset_id` the checkpoint must hold exactly one set."""
    ids = list_asset_ids(checkpoint_dir)
    if asset_id is None:
        if len(ids) != 1:
            raise ValueError(
                f"{checkpoint_dir} holds norm stats for asset ids {ids}; pass asset_id= to choose "
                "one."
                if ids
                else f"{checkpoint_dir}/assets/ holds no {NORM_STATS_FILE}; pass "
                "norm_stats explicitly or put the file at <checkpoint>/assets/<asset_id>/."
            )
        asset_id = ids[0]
    return load_norm_stats(pathlib.Path(checkpoint_dir) / "assets" / asset_id)


def _check_quantiles(stats: NormStats) -> tuple[np.ndarray, np.ndarray]:
    if stats.q01 is None or stats.q99 is None:
        raise ValueError(
            "Quantile normalisation (Pi0.5) needs q01 and q99 in the norm stats, but they are null."
        )
    return stats.q01, stats.q99


def normalize(x: np.ndarray, stats: NormStats, use_quantiles: bool = False) -> np.ndarray:
    """(..., d) -> (..., d) float64. Stats longer than d are sliced to d (openpi's Normalize)."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    if stats.mean.shape[-1] < d:
        raise ValueError(
            f"Norm stats have {stats.mean.shape[-1]} dims but the data has {d}; the stats must "
            "cover every data dim (normalise before padding to the model's 32 dims)."
        )
    if use_quantiles:
        q01, q99 = (q[..., :d] for q in _check_quantiles(stats))
        return (x - q01) / (q99 - q01 + _EPS) * 2.0 - 1.0
    return (x - stats.mean[..., :d]) / (stats.std[..., :d] + _EPS)


def _pad(a: np.ndarray, d: int, value: float) -> np.ndarray:
    if a.shape[-1] >= d:
        return a[..., :d]
    return np.concatenate([a, np.full(d - a.shape[-1], value, dtype=a.dtype)])


def unnormalize(x: np.ndarray, stats: NormStats, use_quantiles: bool = False) -> np.ndarray:
    """Inverse of `normalize` on (..., d) float64. Dims beyond the stats: z-score pads mean 0 /
    std 1; quantile leaves them unchanged (both exactly as openpi's Unnormalize)."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    if use_quantiles:
        q01, q99 = _check_quantiles(stats)
        k = min(q01.shape[-1], d)
        head = (x[..., :k] + 1.0) / 2.0 * (q99[..., :k] - q01[..., :k] + _EPS) + q01[..., :k]
        return np.concatenate([head, x[..., k:]], axis=-1)
    return x * (_pad(stats.std, d, 1.0) + _EPS) + _pad(stats.mean, d, 0.0)
