"""Run checkpoints: agent pytree, counters, numpy RNG state and replay buffer in one orbax step.

Layout (one orbax `CheckpointManager` step per save):

    run_dir/checkpoints/<step>/
        state/          orbax StandardSave of every array leaf of `state` (agent params, optax
                        states, PRNG key data, numpy arrays)
        state_meta/     orbax JsonSave: leaf paths, kinds, shapes, dtypes; Python scalars (step
                        counters) and numpy bit-generator states, whose 128-bit ints JSON keeps
        replay_buffer/  the ReplayBuffer's files (written by a custom orbax handler)

        dsrl_checksums.json   size and sha256 of every file above, written last (atomically,
                        after orbax finalised the step); a step without it is unverified

Atomicity comes from orbax: every item, the replay buffer included, is written into
`<step>.orbax-checkpoint-tmp-*` and the directory is renamed to `<step>` only after all items
have been written. A crash mid-save therefore leaves no `<step>` directory; the previous one stays
the latest. Leftover temporary directories are deleted when the next `RunCheckpointer` opens the
run.

Damage does not lose a run. `restore()` checks the newest step's files against its checksum
manifest, restores it and checks that every float in it is finite; on any failure it logs which
step it skipped and why and tries the next older step. Steps written before checksums existed
(no manifest) are restored unverified, with a warning. Non-finite state is never saved (the save
raises `NonFiniteStateError` naming the leaf, before anything is written), and old steps are
deleted (`max_to_keep`) only after the new step's manifest is on disk, so the newest verified
step is never deleted. Re-saving an existing step moves the old one aside until the new one is
verified (`<step>.dsrl-replaced`, put back when the next `RunCheckpointer` opens the run if the
replacement never completed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dsrl.data.replay_buffer import LayoutMismatchError, ReplayBuffer

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_ARRAYS, _META, _BUFFER = "state", "state_meta", "replay_buffer"
_MANIFEST = "dsrl_checksums.json"
_MANIFEST_VERSION = 1
_REPLACED_SUFFIX = ".dsrl-replaced"


class CheckpointDamagedError(RuntimeError):
    """A checkpoint step cannot be restored: a file is missing, truncated or changed, or it holds
    non-finite values."""


class CheckpointMismatchError(ValueError):
    """A checkpoint step is intact but was written by a different config or code version."""


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint step of a run failed to restore; the message lists each step's reason."""


class NonFiniteStateError(ValueError):
    """The state to save holds NaN or inf; saving it would replace good checkpoints with bad."""


# ---------------------------------------------------------------------------------------------
# The replay buffer as an orbax item, so it is written inside the step's temporary directory and
# finalised (renamed) together with the agent.


class ReplayBufferHandler(ocp.CheckpointHandler):
    """Saves/restores a ReplayBuffer synchronously into an orbax item directory."""

    def save(self, directory: epath.Path, args: ReplayBufferSave) -> None:
        args.buffer.write_to(Path(directory))

    def restore(self, directory: epath.Path, args: ReplayBufferRestore | None = None) -> Any:
        example = None if args is None else args.example_transition
        try:
            return ReplayBuffer.load(Path(directory), example_transition=example)
        except LayoutMismatchError as err:
            raise CheckpointMismatchError(str(err)) from None


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
        raise CheckpointMismatchError(
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
    `bit_generator.state`}. Saving is synchronous: when `save` returns, the step is on disk and
    its checksum manifest written. `max_to_keep` steps are kept (the newest verified one always).
    """

    def __init__(self, run_dir: str | os.PathLike, max_to_keep: int = 2):
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}.")
        self.directory = Path(run_dir).absolute() / "checkpoints"
        self.max_to_keep = max_to_keep
        if self.directory.is_dir():
            self._recover_replaced_steps()
        options = ocp.CheckpointManagerOptions(
            # Garbage collection is ours (`_collect_garbage`): orbax would delete old steps as
            # soon as a new one is finalised, before its checksums are written.
            max_to_keep=None,
            create=True,
            # A crash leaves `<step>.orbax-checkpoint-tmp-*`; a restarted run removes it.
            cleanup_tmp_directories=True,
            # The replay buffer is mutated right after save returns, so the save must be complete.
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest checkpoint step on disk (intact or not: `restore` checks), or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Every step directory on disk, oldest first (read from disk at each call)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if _is_step_dir(p))

    def save(self, step: int, state: Any, buffer: ReplayBuffer | None = None) -> None:
        """Writes `state` (and the replay buffer, if given) as checkpoint `step`, atomically.

        Raises NonFiniteStateError, writing nothing, if a float leaf of `state` or a float field
        of the buffer holds NaN or inf. Saving a step that already exists (a final save right
        after an interval save at the same step) replaces it; the old one is moved aside and
        deleted only once the new one is verified."""
        _refuse_non_finite(step, state, buffer, self.latest_step(), self.directory)
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

        step_dir = self.directory / str(step)
        aside = self.directory / f"{step}{_REPLACED_SUFFIX}"
        replacing = step_dir.exists()
        if replacing:
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(step_dir, aside)
        self._manager.reload()
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
            self._manager.wait_until_finished()
            _write_manifest(step_dir)
        except BaseException:
            # The new step is not verified: it must not shadow the one it replaces.
            shutil.rmtree(step_dir, ignore_errors=True)
            if replacing:
                os.rename(aside, step_dir)
            self._manager.reload()
            raise
        if replacing:
            shutil.rmtree(aside)
        self._collect_garbage(step)

    def _collect_garbage(self, new_step: int) -> None:
        """Keeps the verified `new_step` and the `max_to_keep - 1` newest steps before it.

        Steps after `new_step` (left by a run that `restore` resumed from an older step because
        they were damaged) are not touched: they are someone's evidence, not ours to delete."""
        older = [s for s in self.all_steps() if s < new_step]
        excess = len(older) - (self.max_to_keep - 1)
        for old in older[: max(excess, 0)]:
            shutil.rmtree(self.directory / str(old))
        self._manager.reload()

    def _recover_replaced_steps(self) -> None:
        """Finishes a replacement that a crash interrupted (see `save`)."""
        for aside in self.directory.glob(f"*{_REPLACED_SUFFIX}"):
            step_dir = self.directory / aside.name[: -len(_REPLACED_SUFFIX)]
            if (step_dir / _MANIFEST).is_file():
                shutil.rmtree(aside)  # the replacement was verified; the old copy is redundant
            else:
                shutil.rmtree(step_dir, ignore_errors=True)
                os.rename(aside, step_dir)
                log.warning(
                    "Checkpoint step %s: a crash interrupted its replacement; the previous copy "
                    "was put back.",
                    step_dir.name,
                )

    def verify(self, step: int) -> bool:
        """Checks step `step`'s files against its checksum manifest.

        Returns True if verified, False if the step has no (readable) manifest (written before
        checksums existed); raises CheckpointDamagedError naming the first bad file."""
        return _verify_manifest(self.directory / str(step))

    def restore(
        self,
        template_state: Any,
        step: int | None = None,
        example_transition: dict[str, Any] | None = None,
    ) -> tuple[Any, ReplayBuffer | None] | None:
        """Restores (state, buffer) from `step`, by default the newest intact step; None if the
        run has no checkpoint.

        Without `step`, a damaged step (missing, truncated or changed files, unreadable metadata,
        non-finite values) is skipped with a warning naming it and the reason, and the next older
        one is tried; NoIntactCheckpointError lists every step's reason if none restores. With
        `step`, that step is restored or CheckpointDamagedError / CheckpointMismatchError raised.

        `template_state` has the structure, shapes and dtypes of the saved state (e.g. a freshly
        created learner with the same config); values are taken from disk. Restored arrays have
        the template's types: jax arrays (on the template's sharding), numpy arrays, typed PRNG
        keys, numpy Generators. `buffer` is None when the checkpoint was saved without one.
        """
        self._manager.reload()
        if step is not None:
            if step not in self.all_steps():
                raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}.")
            return self._restore_step(step, template_state, example_transition)
        steps = self.all_steps()
        if not steps:
            return None
        failures: list[tuple[int, Exception]] = []
        for candidate in reversed(steps):
            try:
                result = self._restore_step(candidate, template_state, example_transition)
            except Exception as err:  # noqa: BLE001 - any failure means: try the older step
                log.warning(
                    "Checkpoint step %d in %s cannot be restored and was skipped: %s",
                    candidate,
                    self.directory,
                    _one_line(err),
                )
                failures.append((candidate, err))
                continue
            if failures:
                log.warning(
                    "Resuming from checkpoint step %d, the newest intact one (skipped: %s). The "
                    "skipped steps were left on disk for inspection.",
                    candidate,
                    ", ".join(str(s) for s, _ in failures),
                )
            return result
        mismatches = [err for _, err in failures if isinstance(err, CheckpointMismatchError)]
        if mismatches:
            raise mismatches[0]  # every step refused the template: a config error, not damage
        reasons = "; ".join(f"step {s}: {_one_line(err)}" for s, err in failures)
        raise NoIntactCheckpointError(
            f"No checkpoint in {self.directory} can be restored ({reasons}). Nothing was deleted; "
            "restore the files from a backup, or start a fresh run directory."
        ) from failures[0][1]

    def _restore_step(
        self, step: int, template_state: Any, example_transition: dict[str, Any] | None
    ) -> tuple[Any, ReplayBuffer | None]:
        where = self.directory / str(step)
        if not _verify_manifest(where):
            log.warning(
                "Checkpoint step %d in %s has no checksum manifest (%s): it was written before "
                "checksums existed, or its save was interrupted; restoring it unverified.",
                step,
                self.directory,
                _MANIFEST,
            )
        meta = self._manager.restore(
            step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
        )[_META]
        if not isinstance(meta, dict) or "leaves" not in meta:
            raise CheckpointDamagedError(f"{where}/{_META} holds no leaf table: {meta!r:.200}")
        if meta.get("format_version") != _FORMAT_VERSION:
            raise CheckpointMismatchError(
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
        # Random bytes in an unverified step, or NaN saved before saves were checked, would
        # otherwise train into NaN silently.
        bad = _non_finite_leaves(state) + (buffer.non_finite_fields() if buffer else [])
        if bad:
            raise CheckpointDamagedError(f"{where} holds non-finite values in {', '.join(bad)}")
        return state, buffer

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> RunCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_step_dir(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}"


# ---------------------------------------------------------------------------------------------
# Checksums and finiteness


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_manifest(step_dir: Path) -> None:
    """Checks that the finalised step reads back and writes its checksum manifest, atomically."""
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != _MANIFEST)
    entries = {}
    for path in files:
        entries[path.relative_to(step_dir).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": _sha256(path),
        }
        # Reading back what the handlers wrote: JSON parses and .npy headers match file sizes
        # (np.load raises on a short file), so a step is never marked verified when it is not.
        if path.suffix == ".json" or path.name == "metadata":
            json.loads(path.read_text())
        elif path.suffix == ".npy":
            np.load(path, mmap_mode="r")
    manifest = {"format_version": _MANIFEST_VERSION, "algorithm": "sha256", "files": entries}
    tmp = step_dir / f"{_MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, step_dir / _MANIFEST)
    dir_fd = os.open(step_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


def _verify_manifest(step_dir: Path) -> bool:
    """True if every file in the manifest matches; False if there is no usable manifest."""
    manifest_path = step_dir / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["files"]
        if manifest.get("format_version") != _MANIFEST_VERSION or not isinstance(entries, dict):
            raise ValueError(f"unknown manifest format {manifest.get('format_version')!r}")
    except (ValueError, KeyError, TypeError) as err:
        log.warning("Checksum manifest %s is unreadable (%s).", manifest_path, _one_line(err))
        return False
    for name, entry in entries.items():
        path = step_dir / name
        if not path.is_file():
            raise CheckpointDamagedError(f"{path} is missing (listed in {_MANIFEST})")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointDamagedError(
                f"{path} has {size} bytes, {entry['size']} were written (truncated or overwritten)"
            )
        if _sha256(path) != entry["sha256"]:
            raise CheckpointDamagedError(f"{path} does not match its sha256 in {_MANIFEST}")
    return True


def _non_finite_leaves(state: Any) -> list[str]:
    """Paths of the float leaves of `state` holding NaN or inf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    device_checks, bad = [], []
    for key_path, leaf in flat:
        path = jax.tree_util.keystr(key_path)
        if isinstance(leaf, jax.Array):
            if not _is_prng_key(leaf) and jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact):
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


def _refuse_non_finite(
    step: int, state: Any, buffer: ReplayBuffer | None, latest: int | None, directory: Path
) -> None:
    bad = _non_finite_leaves(state) + (buffer.non_finite_fields() if buffer is not None else [])
    if bad:
        kept = f"step {latest} stays the latest" if latest is not None else "none was saved"
        raise NonFiniteStateError(
            f"Refusing to save checkpoint step {step} in {directory}: non-finite values (NaN or "
            f"inf) in {', '.join(bad)}. Nothing was written ({kept}). Training diverged or the "
            "env produced non-finite data: resume from the last checkpoint and look at the "
            "rewards/observations, or lower the learning rates."
        )


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
