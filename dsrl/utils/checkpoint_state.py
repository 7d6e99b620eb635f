"""The checkpoint state pytree: its leaves split into arrays (orbax) and a JSON leaf table, the
check of a saved leaf table against a restore template, and the rebuilding of restored leaves.
Also the checkpoint errors, shared by dsrl.utils.checkpoint_files and dsrl.utils.checkpoints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT_VERSION = 1


class CheckpointDamagedError(RuntimeError):
    """A checkpoint step cannot be restored: a file is missing, truncated or changed, or it holds
    non-finite values."""


class CheckpointMismatchError(ValueError):
    """A checkpoint step is intact but was written by a different config or code version."""


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint step of a run failed to restore; the message lists each step's reason."""


class NonFiniteStateError(ValueError):
    """The state to save holds NaN or inf; saving it would replace good checkpoints with bad."""


def is_prng_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def leaf_record(path: str, leaf: Any) -> tuple[dict[str, Any], Any]:
    """(meta record, array to save or None) for one leaf of the state pytree."""
    if is_prng_key(leaf):
        # New-style typed keys: orbax stores their uint32 key data; the impl name lets restore
        # re-wrap them. Raw uint32 keys (jax.random.PRNGKey) are ordinary arrays.
        data = jax.random.key_data(leaf)
        record = {"kind": "prng_key", "impl": str(jax.random.key_impl(leaf))}
        return record | {"shape": list(data.shape), "dtype": str(data.dtype)}, data
    if isinstance(leaf, jax.Array):
        record = {"kind": "jax", "shape": list(leaf.shape), "dtype": str(leaf.dtype)}
        # Weak types (e.g. TrainState.step after `0 + 1` in a jitted update) are part of a jitted
        # function's cache key: restoring them strong would recompile the update on resume.
        return record | {"weak_type": bool(jax.typeof(leaf).weak_type)}, leaf
    if isinstance(leaf, np.ndarray | np.generic):
        array = np.asarray(leaf)
        return {"kind": "numpy", "shape": list(array.shape), "dtype": str(array.dtype)}, array
    if isinstance(leaf, np.random.Generator):
        return {"kind": "np_generator", "value": leaf.bit_generator.state}, None
    if leaf is None or isinstance(leaf, bool | int | float | str):
        return {"kind": "python", "type": type(leaf).__name__, "value": leaf}, None
    raise TypeError(
        f"Checkpoint state leaf {path} has type {type(leaf).__name__}, which cannot be saved. "
        "Use jax/numpy arrays, Python scalars or strings, dicts of those, numpy Generators, or "
        "flax.struct pytrees (mark non-array fields pytree_node=False)."
    )


def split_state(state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    arrays, records = {}, []
    for index, (key_path, leaf) in enumerate(flat):
        path = jax.tree_util.keystr(key_path)
        record, array = leaf_record(path, leaf)
        records.append({"path": path} | record)
        if array is not None:
            arrays[f"leaf_{index:05d}"] = array
    return arrays, {"format_version": FORMAT_VERSION, "leaves": records}


def describe(record: dict[str, Any]) -> str:
    if record["kind"] == "python":
        return f"Python {record['type']}"
    if record["kind"] == "np_generator":
        return "numpy Generator"
    if record["kind"] == "prng_key":
        return f"PRNG key ({record['impl']}) data {record['dtype']}{tuple(record['shape'])}"
    return f"{record['kind']} array {record['dtype']}{tuple(record['shape'])}"


_SCALAR_CATEGORY = {"bool": "bool", "int": "int", "float": "float"}


def _scalar_category(record: dict[str, Any]) -> str | None:
    """'int' / 'float' / 'bool' for Python scalars and 0-d numeric arrays, else None."""
    if record["kind"] == "python":
        return _SCALAR_CATEGORY.get(record["type"])
    if record["kind"] in ("jax", "numpy") and not record["shape"]:
        kind = np.dtype(record["dtype"]).kind
        return {"b": "bool", "i": "int", "u": "int", "f": "float"}.get(kind)
    return None


def _compatible(saved: dict[str, Any], expected: dict[str, Any]) -> bool:
    if describe(saved) == describe(expected):
        return True
    if saved["kind"] in ("jax", "numpy") and expected["kind"] in ("jax", "numpy"):
        # jax vs numpy container: the template decides, the values are the same.
        return (saved["dtype"], saved["shape"]) == (expected["dtype"], expected["shape"])
    # A Python scalar on one side and a 0-d array on the other: flax's TrainState.step is the
    # Python int 0 in a fresh template and an int32 array once a jitted update has run.
    category = _scalar_category(saved)
    return category is not None and category == _scalar_category(expected)


def check_template(saved: list[dict], expected: list[dict], where: Path) -> None:
    """Raises a ValueError naming every leaf where the template and the checkpoint disagree."""
    saved_by_path = {r["path"]: r for r in saved}
    expected_by_path = {r["path"]: r for r in expected}
    problems = []
    if missing := [p for p in expected_by_path if p not in saved_by_path]:
        problems.append(f"in the template but not on disk: {missing}")
    if extra := [p for p in saved_by_path if p not in expected_by_path]:
        problems.append(f"on disk but not in the template: {extra}")
    for path in expected_by_path.keys() & saved_by_path.keys():
        saved_record, expected_record = saved_by_path[path], expected_by_path[path]
        if not _compatible(saved_record, expected_record):
            problems.append(
                f"{path} is {describe(saved_record)} on disk but "
                f"{describe(expected_record)} in the template"
            )
    if not problems and [r["path"] for r in saved] != [r["path"] for r in expected]:
        problems.append("the leaves are in a different order (a different pytree structure)")
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint in {where} does not match the restore template: "
            + "; ".join(sorted(problems))
            + ". This run directory was written by a different config or code version; restore "
            "with the same config, or start a fresh run directory."
        )


def non_finite_leaves(state: Any) -> list[str]:
    """Paths of the float leaves of `state` holding NaN or inf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    device_checks, bad = [], []
    for key_path, leaf in flat:
        path = jax.tree_util.keystr(key_path)
        if isinstance(leaf, jax.Array):
            if not is_prng_key(leaf) and jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact):
                device_checks.append((path, jax.numpy.isfinite(leaf).all()))
        elif isinstance(leaf, np.ndarray | np.generic):
            if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
                bad.append(path)
        elif isinstance(leaf, float) and not math.isfinite(leaf):
            bad.append(path)
    # One transfer for all device-side reductions.
    finite = jax.device_get([check for _, check in device_checks])
    bad += [path for (path, _), ok in zip(device_checks, finite, strict=True) if not ok]
    return bad


def restore_target(record: dict[str, Any], template_leaf: Any) -> Any:
    """The orbax restore target for one saved array leaf."""
    shape, dtype = tuple(record["shape"]), np.dtype(record["dtype"])
    as_numpy = record["kind"] == "numpy" or isinstance(template_leaf, np.ndarray | np.generic)
    if as_numpy and record["kind"] != "prng_key":
        return np.zeros(shape, dtype)
    if isinstance(template_leaf, jax.Array) and not is_prng_key(template_leaf):
        sharding = template_leaf.sharding
    elif is_prng_key(template_leaf):
        sharding = jax.random.key_data(template_leaf).sharding
    else:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def rebuild_leaf(record: dict[str, Any], template_leaf: Any, array: Any) -> Any:
    """The restored leaf: the template's container type, except that a Python-scalar template
    leaf takes the saved form (see `_compatible`)."""
    kind = record["kind"]
    if kind == "np_generator":
        bit_generator = getattr(np.random, record["value"]["bit_generator"])()
        bit_generator.state = record["value"]
        return np.random.Generator(bit_generator)
    if kind == "python":
        value = record["value"]
        if isinstance(template_leaf, jax.Array):
            return jax.numpy.asarray(value, dtype=template_leaf.dtype)
        if isinstance(template_leaf, np.ndarray | np.generic):
            value = np.asarray(value, dtype=template_leaf.dtype)
            return value if isinstance(template_leaf, np.ndarray) else value[()]
        return value
    if kind == "prng_key":
        return jax.random.wrap_key_data(array, impl=record["impl"])
    if isinstance(template_leaf, np.generic):
        return np.asarray(array)[()]
    if isinstance(template_leaf, np.ndarray):
        return np.asarray(array)
    if record.get("weak_type") and not jax.typeof(array).weak_type:
        array = _as_weak_type(array)
    return array


def _as_weak_type(array: jax.Array) -> jax.Array:
    """The same value as a weakly typed array (what jit produced before the save).

    Only 0-d arrays (Python-scalar counters such as TrainState.step) are rebuilt this way; a
    weakly typed non-scalar keeps its strong type, costing at most one recompile on resume."""
    if array.ndim == 0:
        weak = jax.numpy.asarray(array.item())  # a Python scalar gives the weak default dtype
        if weak.dtype == array.dtype:
            return jax.device_put(weak, array.sharding)
    return array


def check_restored_array(record: dict[str, Any], array: Any, where: Path) -> None:
    """Raises CheckpointDamagedError when a restored array's shape or dtype differs from its leaf
    record (the files of an unverified step may hold anything)."""
    if array is None or record["kind"] not in ("jax", "numpy", "prng_key"):
        return
    shape, dtype = tuple(np.shape(array)), np.dtype(array.dtype)
    if shape != tuple(record["shape"]) or dtype != np.dtype(record["dtype"]):
        raise CheckpointDamagedError(
            f"{where}: leaf {record['path']} restored as {dtype}{shape}, but "
            f"{record['dtype']}{tuple(record['shape'])} was saved"
        )
