"""Run checkpoints: agent pytree, counters, numpy RNG state and replay buffer in one orbax step.

Layout (one orbax `CheckpointManager` step per save):

    run_dir/checkpoints/<step>/
        state/          orbax StandardSave of every array leaf of `state` (agent params, optax
                        states, PRNG key data, numpy arrays)
        state_meta/     orbax JsonSave: leaf paths, kinds, shapes, dtypes; Python scalars (step
                        counters) and numpy bit-generator states, whose 128-bit ints JSON keeps
        replay_buffer/  the ReplayBuffer's files (written by a custom orbax handler)

Atomicity comes from orbax: every item, the replay buffer included, is written into
`<step>.orbax-checkpoint-tmp-*` and the directory is renamed to `<step>` only after all items
have been written. A crash mid-save therefore leaves no `<step>` directory; the previous one stays
the latest, and old checkpoints are removed (`max_to_keep`) only after a new one is finalised.
Leftover temporary directories are deleted when the next `RunCheckpointer` opens the run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dsrl.data.replay_buffer import ReplayBuffer

_FORMAT_VERSION = 1
_ARRAYS, _META, _BUFFER = "state", "state_meta", "replay_buffer"


# ---------------------------------------------------------------------------------------------
# The replay buffer as an orbax item, so it is written inside the step's temporary directory and
# finalised (renamed) together with the agent.


class ReplayBufferHandler(ocp.CheckpointHandler):
    """Saves/restores a ReplayBuffer synchronously into an orbax item directory."""

    def save(self, directory: epath.Path, args: ReplayBufferSave) -> None:
        args.buffer.write_to(Path(directory))

    def restore(self, directory: epath.Path, args: ReplayBufferRestore | None = None) -> Any:
        example = None if args is None else args.example_transition
        return ReplayBuffer.load(Path(directory), example_transition=example)


@ocp.args.register_with_handler(ReplayBufferHandler, for_save=True)
@dataclasses.dataclass
class ReplayBufferSave(ocp.args.CheckpointArgs):
    buffer: ReplayBuffer


@ocp.args.register_with_handler(ReplayBufferHandler, for_restore=True)
@dataclasses.dataclass
class ReplayBufferRestore(ocp.args.CheckpointArgs):
    example_transition: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# Splitting an arbitrary state pytree into arrays (orbax) and JSON-able leaves.


def _is_prng_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_record(path: str, leaf: Any) -> tuple[dict[str, Any], Any]:
    """(meta record, array to save or None) for one leaf of the state pytree."""
    if _is_prng_key(leaf):
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


def _split_state(state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    arrays, records = {}, []
    for index, (key_path, leaf) in enumerate(flat):
        path = jax.tree_util.keystr(key_path)
        record, array = _leaf_record(path, leaf)
        records.append({"path": path} | record)
        if array is not None:
            arrays[f"leaf_{index:05d}"] = array
    return arrays, {"format_version": _FORMAT_VERSION, "leaves": records}


def _describe(record: dict[str, Any]) -> str:
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
    if _describe(saved) == _describe(expected):
        return True
    if saved["kind"] in ("jax", "numpy") and expected["kind"] in ("jax", "numpy"):
        # jax vs numpy container: the template decides, the values are the same.
        return (saved["dtype"], saved["shape"]) == (expected["dtype"], expected["shape"])
    # A Python scalar on one side and a 0-d array on the other: flax's TrainState.step is the
    # Python int 0 in a fresh template and an int32 array once a jitted update has run.
    category = _scalar_category(saved)
    return category is not None and category == _scalar_category(expected)


def _check_template(saved: list[dict], expected: list[dict], where: Path) -> None:
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
                f"{path} is {_describe(saved_record)} on disk but "
                f"{_describe(expected_record)} in the template"
            )
    if not problems and [r["path"] for r in saved] != [r["path"] for r in expected]:
        problems.append("the leaves are in a different order (a different pytree structure)")
    if problems:
        raise ValueError(
            f"The checkpoint in {where} does not match the restore template: "
            + "; ".join(sorted(problems))
            + ". This run directory was written by a different config or code version; restore "
            "with the same config, or start a fresh run directory."
        )


# ---------------------------------------------------------------------------------------------


class RunCheckpointer:
    """Saves and restores a run's full training state under `run_dir/checkpoints/<step>/`.

    `state` is any pytree: typically {"agent": learner (flax.struct PyTreeNode with params, optax
    states and a PRNG key), "step": int, "env_steps": int, "rng": np.random.Generator or its
    `bit_generator.state`}. Saving is synchronous: when `save` returns, the step is on disk.
    """

    def __init__(self, run_dir: str | os.PathLike, max_to_keep: int = 2):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
        self.directory = Path(run_dir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            # A crash leaves `<step>.orbax-checkpoint-tmp-*`; a restarted run removes it.
            cleanup_tmp_directories=True,
            # The replay buffer is mutated right after save returns, so the save must be complete.
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, buffer: ReplayBuffer | None = None) -> None:
        """Writes `state` (and the replay buffer, if given) as checkpoint `step`, atomically.

        Saving a step that already exists (a final save right after an interval save at the same
        step) replaces it; while it is rewritten, the previous step is the fallback."""
        if step in self._manager.all_steps():
            self._manager.delete(step)
        arrays, meta = _split_state(state)
        meta["has_replay_buffer"] = buffer is not None
        items: dict[str, ocp.args.CheckpointArgs] = {}
        if buffer is not None:
            # A synchronous item: orbax writes it into the step's temporary directory, and the
            # step is finalised only after it returns.
            items[_BUFFER] = ReplayBufferSave(buffer)
        if arrays:  # orbax rejects an empty pytree; a state of Python scalars has none
            items[_ARRAYS] = ocp.args.StandardSave(arrays)
        items[_META] = ocp.args.JsonSave(meta)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(
        self,
        template_state: Any,
        step: int | None = None,
        example_transition: dict[str, Any] | None = None,
    ) -> tuple[Any, ReplayBuffer | None] | None:
        """Restores (state, buffer) from `step` (default: the latest), or None if none exists.

        `template_state` has the structure, shapes and dtypes of the saved state (e.g. a freshly
        created learner with the same config); values are taken from disk. Restored arrays have
        the template's types: jax arrays (on the template's sharding), numpy arrays, typed PRNG
        keys, numpy Generators. `buffer` is None when the checkpoint was saved without one.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                return None
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}.")
        where = self.directory / str(step)
        meta = self._manager.restore(
            step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
        )[_META]
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"Checkpoint {where} has format {meta.get('format_version')}; this code reads "
                f"format {_FORMAT_VERSION}."
            )
        flat, treedef = jax.tree_util.tree_flatten_with_path(template_state)
        _, template_meta = _split_state(template_state)
        _check_template(meta["leaves"], template_meta["leaves"], where)
        template_leaves = [leaf for _, leaf in flat]

        # Restore targets come from what is on disk (shapes/dtypes checked against the template
        # above); jax leaves take the template's sharding when it has one.
        targets = {}
        for index, (record, leaf) in enumerate(zip(meta["leaves"], template_leaves, strict=True)):
            if record["kind"] in ("jax", "numpy", "prng_key"):
                targets[f"leaf_{index:05d}"] = _restore_target(record, leaf)
        items: dict[str, Any] = {}
        if targets:
            items[_ARRAYS] = ocp.args.StandardRestore(targets)
        if meta["has_replay_buffer"]:
            items[_BUFFER] = ReplayBufferRestore(example_transition)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items)) if items else {}
        arrays = restored[_ARRAYS] if targets else {}

        leaves = []
        for index, (record, leaf) in enumerate(zip(meta["leaves"], template_leaves, strict=True)):
            leaves.append(_rebuild_leaf(record, leaf, arrays.get(f"leaf_{index:05d}")))
        state = jax.tree_util.tree_unflatten(treedef, leaves)
        buffer = restored.get(_BUFFER) if meta["has_replay_buffer"] else None
        return state, buffer

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> RunCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _restore_target(record: dict[str, Any], template_leaf: Any) -> Any:
    """The orbax restore target for one saved array leaf."""
    shape, dtype = tuple(record["shape"]), np.dtype(record["dtype"])
    as_numpy = record["kind"] == "numpy" or isinstance(template_leaf, np.ndarray | np.generic)
    if as_numpy and record["kind"] != "prng_key":
        return np.zeros(shape, dtype)
    if isinstance(template_leaf, jax.Array) and not _is_prng_key(template_leaf):
        sharding = template_leaf.sharding
    elif _is_prng_key(template_leaf):
        sharding = jax.random.key_data(template_leaf).sharding
    else:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _rebuild_leaf(record: dict[str, Any], template_leaf: Any, array: Any) -> Any:
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
