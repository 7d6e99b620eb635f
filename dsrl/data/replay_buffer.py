"""A circular replay buffer of nested-dict transitions with its own seeded RNG.

One transition is one base-policy query (see docs/architecture.md, "One training query"), e.g.

    {"observations": {"pixels": uint8 (H, W, C), "state": float32 (d,)},
     "latents": float32 (latent_dim,), "rewards": float32 (), "masks": float32 (),
     "discounts": float32 (), "next_observations": {...same as observations...}}

Storage is preallocated from an example transition: one array of shape (capacity, *leaf_shape) per
leaf, in the leaf's own dtype (uint8 pixels stay uint8). When full, the oldest transition is
overwritten; the buffer never grows. Sampling draws from a `numpy.random.Generator` owned by the
buffer, so a run's batches depend only on the buffer seed and what was inserted, and `save` /
`load` carry that generator's state so a resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

Transition = dict[str, Any]
LeafPath = tuple[str, ...]

_META_FILE = "replay_buffer.json"
# 2: the agent's output is stored as "latents" (dsrl.agents.spec). Format 1 called it "actions";
# `load` renames it, so buffers and checkpoints written before the rename still resume.
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_RENAMED_IN_V2 = {("actions",): ("latents",)}


class LayoutMismatchError(ValueError):
    """A saved buffer's keys, shapes or dtypes differ from the expected transition layout."""


def _flatten(tree: Mapping[str, Any], prefix: LeafPath = ()) -> Iterator[tuple[LeafPath, Any]]:
    """Yields (path, leaf) for a nested dict in sorted key order; dicts are the only inner nodes."""
    for key in sorted(tree):
        if not isinstance(key, str):
            raise TypeError(f"Transition keys must be strings, got {key!r} at {'/'.join(prefix)}.")
        value = tree[key]
        if isinstance(value, Mapping):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _unflatten(items: Mapping[LeafPath, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in items.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _name(path: LeafPath) -> str:
    return "/".join(path)


def _example_leaf_array(path: LeafPath, value: Any) -> np.ndarray:
    """The storage dtype/shape of an example leaf. Python floats become float32 (the learner's
    dtype) rather than numpy's default float64, Python ints int32."""
    if isinstance(value, bool):
        return np.asarray(value, dtype=np.bool_)
    if isinstance(value, int):
        return np.asarray(value, dtype=np.int32)
    if isinstance(value, float):
        return np.asarray(value, dtype=np.float32)
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "USV":
        raise TypeError(
            f"Replay buffer leaf '{_name(path)}' has dtype {array.dtype}; only numeric and bool "
            "arrays can be stored. Keep strings (prompts) out of the transition."
        )
    return array


def _accepts(value_dtype: np.dtype, field_dtype: np.dtype) -> bool:
    """Whether a value of `value_dtype` may be written into a `field_dtype` slot.

    Lossless casts are accepted, and float->float (float64 rewards into float32 storage). Anything
    else (float images into uint8 pixels, floats into ints) is almost always a bug upstream.
    """
    if np.can_cast(value_dtype, field_dtype, casting="safe"):
        return True
    return value_dtype.kind == "f" and field_dtype.kind == "f"


class ReplayBuffer:
    """Circular buffer with fixed capacity, seeded sampling and trajectory bookkeeping.

    Args:
      example_transition: ONE transition (nested dict of arrays/scalars) that fixes the keys,
        shapes and dtypes of every later insert. Its values are not stored.
      capacity: maximum number of transitions kept; the oldest is overwritten when full.
      seed: seed of the buffer's own `numpy.random.Generator` (used by `sample` only).
    """

    def __init__(self, example_transition: Mapping[str, Any], capacity: int, seed: int):
        if not isinstance(example_transition, Mapping) or not example_transition:
            raise TypeError(
                "example_transition must be a non-empty nested dict of arrays, e.g. "
                '{"observations": {...}, "actions": ..., "rewards": ...}.'
            )
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}.")
        self._capacity = int(capacity)
        self._spec: dict[LeafPath, tuple[tuple[int, ...], np.dtype]] = {}
        self._storage: dict[LeafPath, np.ndarray] = {}
        for path, value in _flatten(example_transition):
            example = _example_leaf_array(path, value)
            self._spec[path] = (tuple(example.shape), example.dtype)
            # np.zeros maps pages lazily: memory is committed as transitions arrive.
            self._storage[path] = np.zeros((self._capacity, *example.shape), example.dtype)
        self._rng = np.random.default_rng(seed)
        self._insert_index = 0  # ring slot of the next insert
        self._size = 0
        # Trajectory bookkeeping in global insert counts (monotonic, never wrap), so that
        # overwritten episodes are recognised without ambiguity.
        self._num_inserted = 0
        self._open_start = 0  # global index where the current (unclosed) trajectory starts
        self._closed: collections.deque[tuple[int, int]] = collections.deque()

    # ----------------------------------------------------------------------------------------
    # Properties

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def num_inserted(self) -> int:
        """Transitions inserted since creation, including overwritten ones."""
        return self._num_inserted

    @property
    def insert_index(self) -> int:
        """Ring slot the next insert writes to."""
        return self._insert_index

    @property
    def rng(self) -> np.random.Generator:
        return self._rng

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated storage at full capacity."""
        return sum(a.nbytes for a in self._storage.values())

    def __len__(self) -> int:
        return self._size

    def example_transition(self) -> Transition:
        """A zero transition with the buffer's keys, shapes and dtypes."""
        return _unflatten({p: np.zeros(s, d) for p, (s, d) in self._spec.items()})

    @property
    def trajectory_bounds(self) -> list[tuple[int, int]]:
        """(start, end) of every closed trajectory still fully stored, oldest first.

        `start` is a ring slot in [0, capacity); `end` is exclusive and NOT wrapped, so it may
        exceed the capacity: the trajectory's slots are `np.arange(start, end) % capacity`
        (`end - start` is its length). Trajectories whose first transitions were overwritten are
        dropped; the trajectory still being collected is listed once `end_trajectory()` closes it.
        """
        return [(gs % self._capacity, gs % self._capacity + (ge - gs)) for gs, ge in self._closed]

    # ----------------------------------------------------------------------------------------
    # Writing

    def insert(self, transition: Mapping[str, Any]) -> None:
        """Copies one transition into the next ring slot (overwriting the oldest when full)."""
        items = dict(_flatten(transition)) if isinstance(transition, Mapping) else None
        if items is None:
            raise TypeError(f"insert expects a nested dict transition, got {type(transition)}.")
        if items.keys() != self._spec.keys():
            missing = sorted(_name(p) for p in self._spec.keys() - items.keys())
            extra = sorted(_name(p) for p in items.keys() - self._spec.keys())
            raise KeyError(
                f"Transition keys do not match the buffer's: missing {missing}, unexpected {extra}. "
                "Insert transitions with exactly the keys of the example_transition the buffer "
                "was created with."
            )
        converted = {}
        for path, value in items.items():
            shape, dtype = self._spec[path]
            if isinstance(value, bool | int | float):  # Python scalars: cast to the field dtype.
                array = np.asarray(value, dtype=dtype)
            else:
                array = np.asarray(value)
                if not _accepts(array.dtype, dtype):
                    raise TypeError(
                        f"Transition leaf '{_name(path)}' has dtype {array.dtype}, the buffer stores "
                        f"{dtype}. Convert it before inserting (e.g. images must stay uint8 0-255)."
                    )
            if array.shape != shape:
                raise ValueError(
                    f"Transition leaf '{_name(path)}' has shape {array.shape}, the buffer expects "
                    f"{shape} (from the example transition). Insert ONE unbatched transition."
                )
            converted[path] = array
        # Validate everything before writing anything, so a bad insert leaves the buffer intact.
        for path, array in converted.items():
            self._storage[path][self._insert_index] = array
        self._insert_index = (self._insert_index + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)
        self._num_inserted += 1
        self._drop_overwritten()

    def end_trajectory(self) -> None:
        """Closes the current trajectory (call once per episode, after its last insert).

        A call with no insert since the previous one is a no-op. A trajectory longer than the
        capacity (its start already overwritten) is not recorded."""
        if self._num_inserted > self._open_start:
            if self._open_start >= self._oldest_global():
                self._closed.append((self._open_start, self._num_inserted))
            self._open_start = self._num_inserted

    def _oldest_global(self) -> int:
        return self._num_inserted - self._size

    def _drop_overwritten(self) -> None:
        oldest = self._oldest_global()
        while self._closed and self._closed[0][0] < oldest:
            self._closed.popleft()

    # ----------------------------------------------------------------------------------------
    # Reading

    def sample(self, batch_size: int, num_batches: int = 1) -> Transition:
        """Uniform sampling with replacement; returns arrays of shape (num_batches, batch_size, ...).

        The K = num_batches batches are drawn in one index draw and one gather per leaf, ready for
        a learner update that runs K gradient steps in one call."""
        if self._size == 0:
            raise ValueError(
                "Cannot sample from an empty replay buffer: insert transitions first (the training "
                "loop collects `start_online_updates` transitions before its first update)."
            )
        if batch_size < 1 or num_batches < 1:
            raise ValueError(
                f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}."
            )
        # A batch may exceed the number of stored transitions: sampling is with replacement, and
        # the reference's real-robot schedule (5000 updates after one ~20-transition episode,
        # batch 256) relies on it.
        indices = self._rng.integers(0, self._size, size=(num_batches, batch_size))
        # Before the first wrap the valid slots are [0, size); afterwards all slots are valid, so
        # indices in [0, size) address stored transitions in both cases.
        return _unflatten({p: a[indices] for p, a in self._storage.items()})

    def get(self, indices: np.ndarray) -> Transition:
        """Transitions at ring slots `indices` (any integer array shape), copied out."""
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= self._size):
            raise IndexError(f"Slots must lie in [0, {self._size}), got {indices}.")
        return _unflatten({p: a[indices] for p, a in self._storage.items()})

    def sample_trajectories(self, num_trajectories: int, seed: int = 0) -> list[Transition]:
        """Up to `num_trajectories` distinct stored trajectories, each with leaves (T, ...).

        Uses its own generator seeded by `seed`, NOT the buffer's: drawing trajectories for value
        plots must not change the training batches."""
        bounds = self.trajectory_bounds
        if not bounds:
            raise ValueError("No complete trajectory is stored; call end_trajectory() per episode.")
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(bounds), size=min(num_trajectories, len(bounds)), replace=False)
        return [
            self.get(np.arange(bounds[i][0], bounds[i][1]) % self._capacity) for i in sorted(chosen)
        ]

    def non_finite_fields(self) -> list[str]:
        """Names of the stored float fields holding NaN or inf (with a count and a first slot)."""
        bad = []
        for path, array in self._storage.items():
            if np.issubdtype(array.dtype, np.inexact):
                finite = np.isfinite(array[: self._size])
                if not finite.all():
                    rows = np.flatnonzero(~finite.reshape(self._size, -1).all(axis=1))
                    bad.append(
                        f"replay buffer field '{_name(path)}' ({len(rows)} transitions, first at "
                        f"slot {rows[0]})"
                    )
        return bad

    # ----------------------------------------------------------------------------------------
    # Persistence

    def _state_dict(self) -> dict[str, Any]:
        return {
            "format_version": _FORMAT_VERSION,
            "capacity": self._capacity,
            "size": self._size,
            "insert_index": self._insert_index,
            "num_inserted": self._num_inserted,
            "open_trajectory_start": self._open_start,
            "closed_trajectories": [list(b) for b in self._closed],
            # PCG64 state holds 128-bit ints; JSON keeps Python ints exact.
            "rng_state": self._rng.bit_generator.state,
            "leaves": [
                {"path": list(p), "shape": list(s), "dtype": np.dtype(d).str}
                for p, (s, d) in self._spec.items()
            ],
        }

    def write_to(self, directory: str | os.PathLike) -> None:
        """Writes the buffer's files into an existing empty directory (not atomic by itself;
        `save` and the run checkpointer provide atomicity around it)."""
        directory = Path(directory)
        for index, array in enumerate(self._storage.values()):
            # Only the filled prefix; slots keep their ring positions, so trajectory bounds and
            # the insert index stay valid after loading.
            np.save(directory / f"leaf_{index:03d}.npy", array[: self._size], allow_pickle=False)
        # The metadata goes last: a directory without it is recognisably incomplete.
        with open(directory / _META_FILE, "w") as f:
            json.dump(self._state_dict(), f)
            f.flush()
            os.fsync(f.fileno())

    def save(self, directory: str | os.PathLike) -> None:
        """Atomically saves contents, RNG state, insert position and trajectory bounds.

        Files are written to a temporary sibling directory which is then renamed into place, so
        `directory` holds either the previous complete save or the new one, never a partial one.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            self.write_to(tmp)
            if directory.exists():
                old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(directory, old)
                os.rename(tmp, directory)
                shutil.rmtree(old)
            else:
                os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        example_transition: Mapping[str, Any] | None = None,
    ) -> ReplayBuffer:
        """Restores a buffer written by `save` exactly: contents, RNG state, position, bounds.

        If `example_transition` is given, the saved keys/shapes/dtypes must match it."""
        directory = Path(directory)
        meta_file = directory / _META_FILE
        if not meta_file.exists():
            raise FileNotFoundError(
                f"{directory} holds no saved replay buffer ({_META_FILE} is missing); it was never "
                "saved there or the save did not complete."
            )
        try:
            meta = json.loads(meta_file.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{meta_file} is not valid JSON ({err}): the file is truncated or damaged."
            ) from None
        meta = meta if isinstance(meta, dict) else {}
        version = meta.get("format_version")
        if version not in _READABLE_VERSIONS:
            raise ValueError(
                f"Replay buffer in {directory} has format {version}, this code reads formats "
                f"{list(_READABLE_VERSIONS)}."
            )
        # Leaf i of the metadata is file leaf_{i:03d}; format 1 paths are renamed to today's.
        disk_paths = [tuple(leaf["path"]) for leaf in meta["leaves"]]
        if version == 1:
            disk_paths = [_RENAMED_IN_V2.get(path, path) for path in disk_paths]
        saved = _unflatten(
            {
                path: np.zeros(leaf["shape"], leaf["dtype"])
                for path, leaf in zip(disk_paths, meta["leaves"], strict=True)
            }
        )
        buffer = cls(saved, capacity=meta["capacity"], seed=0)
        if example_transition is not None:
            expected = cls(example_transition, capacity=1, seed=0)._spec
            if expected != buffer._spec:
                raise LayoutMismatchError(
                    f"The replay buffer in {directory} does not match the expected transition "
                    f"layout ({_spec_diff(buffer._spec, expected)}): it was written by a run with "
                    "a different config (observation/action layout). Use a fresh run directory."
                )
        size = meta["size"]
        for index, path in enumerate(disk_paths):
            # mmap + copy into the preallocated ring: no second full-size copy in memory.
            leaf_file = directory / f"leaf_{index:03d}.npy"
            try:
                on_disk = np.load(leaf_file, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"Replay buffer file {leaf_file} ('{_name(path)}') is unreadable ({err}): it "
                    "is missing, truncated or damaged."
                ) from None
            if on_disk.shape != (size, *buffer._spec[path][0]):
                raise ValueError(
                    f"Replay buffer file {leaf_file} ('{_name(path)}') holds shape "
                    f"{on_disk.shape}, {_META_FILE} says {(size, *buffer._spec[path][0])}."
                )
            buffer._storage[path][:size] = on_disk
            del on_disk
        buffer._size = size
        buffer._insert_index = meta["insert_index"]
        buffer._num_inserted = meta["num_inserted"]
        buffer._open_start = meta["open_trajectory_start"]
        buffer._closed = collections.deque(tuple(b) for b in meta["closed_trajectories"])
        rng_state = meta["rng_state"]
        bit_generator = getattr(np.random, rng_state["bit_generator"])()
        bit_generator.state = rng_state
        buffer._rng = np.random.Generator(bit_generator)
        return buffer


def _spec_diff(saved: Mapping[LeafPath, Any], expected: Mapping[LeafPath, Any]) -> str:
    """Names the leaves that differ between two specs {path: (shape, dtype)}."""
    parts = []
    if missing := sorted(_name(p) for p in expected.keys() - saved.keys()):
        parts.append(f"missing on disk: {missing}")
    if extra := sorted(_name(p) for p in saved.keys() - expected.keys()):
        parts.append(f"unexpected on disk: {extra}")
    for path in sorted(saved.keys() & expected.keys()):
        if saved[path] != expected[path]:
            (s_shape, s_dtype), (e_shape, e_dtype) = saved[path], expected[path]
            parts.append(
                f"'{_name(path)}' is {s_dtype} {s_shape} on disk, expected {e_dtype} {e_shape}"
            )
    return "; ".join(parts)
