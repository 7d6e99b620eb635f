"""Checks on what a client sent (values, keys, shapes, dtypes, noise) and on what the policy
returned, each failing with a `RequestError` that names the problem and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dsrl.serving.protocol import RequestError


def finite_check(name: str, value: Any) -> None:
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
        if not np.all(np.isfinite(value)):
            raise RequestError("bad_value", f"{name} contains NaN or inf; send finite values")
    elif isinstance(value, float | np.floating) and not np.isfinite(value):
        raise RequestError("bad_value", f"{name} is NaN or inf; send a finite value")


def check_tree(obs: Mapping[str, Any], prefix: str = "obs") -> None:
    """Keys must be str, float leaves finite, nesting bounded."""
    for key, value in obs.items():
        if not isinstance(key, str):
            raise RequestError(
                "bad_request", f"{prefix} has a non-string key {key!r}; use str keys"
            )
        name = f"{prefix}[{key!r}]"
        if isinstance(value, Mapping):
            if name.count("[") > 8:
                raise RequestError("bad_request", f"{name}: observation nested too deeply")
            check_tree(value, name)
        else:
            finite_check(name, value)


def check_output(reply: Mapping[str, Any], batch: int | None) -> None:
    """NaN/inf actions or features are an error, never a successful reply."""
    for key in ("actions", "prefix_feature"):
        value = reply.get(key)
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            continue
        finite = np.isfinite(value)
        if finite.all():
            continue
        where = ""
        if batch is not None:
            bad = np.flatnonzero(~finite.reshape(batch, -1).all(axis=1))
            where = f" (batch elements {bad[:10].tolist()})"
        raise RequestError(
            "non_finite_output",
            f"the policy returned NaN/inf {key}{where} for finite inputs: some input is out of "
            "range (e.g. a state of 3e38 overflows the policy's normalisation); check the "
            "observation's values and units",
        )


def check_noise(noise: Any, noise_shape: tuple[int, int], batch: int | None) -> np.ndarray:
    """A request's noise as float32 (N, H, D); `batch` None for one observation."""
    horizon, dim = noise_shape
    if not isinstance(noise, np.ndarray):
        raise RequestError(
            "bad_dtype", f"noise must be a numpy float array, got {type(noise).__name__}"
        )
    if noise.dtype.kind != "f":
        raise RequestError(
            "bad_dtype", f"noise has dtype {noise.dtype}; send float32 (float64 is accepted)"
        )
    if batch is None:
        ok = noise.shape in ((horizon, dim), (1, horizon, dim))
        want = f"({horizon}, {dim}) or (1, {horizon}, {dim})"
    else:
        ok = noise.shape == (batch, horizon, dim)
        want = f"({batch}, {horizon}, {dim}) (batch, *noise_shape)"
    if not ok:
        raise RequestError(
            "bad_shape", f"noise has shape {noise.shape}, expected {want} for this policy"
        )
    finite_check("noise", noise)
    with np.errstate(over="ignore"):  # float64 beyond float32's range: refused just below
        noise = noise.reshape(-1, horizon, dim).astype(np.float32)
    if not np.all(np.isfinite(noise)):
        raise RequestError("bad_value", "noise overflows float32; send values within float32")
    return noise
