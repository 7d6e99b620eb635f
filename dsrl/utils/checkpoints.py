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

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from dsrl.data.replay_buffer import ReplayBuffer
from dsrl.utils.checkpoint_files import (
    MANIFEST,
    CheckpointDiskFullError,
    ReplayBufferRestore,
    ReplayBufferSave,
    disk_full_error,
    disk_is_full,
    one_line,
    quiet_absl,
    verify_manifest,
    write_manifest,
)
from dsrl.utils.checkpoint_state import (
    FORMAT_VERSION,
    CheckpointDamagedError,
    CheckpointMismatchError,
    NoIntactCheckpointError,
    NonFiniteStateError,
    check_restored_array,
    check_template,
    non_finite_leaves,
    rebuild_leaf,
    restore_target,
    split_state,
)

__all__ = [
    "CheckpointDiskFullError",
    "CheckpointDamagedError",
    "CheckpointMismatchError",
    "NoIntactCheckpointError",
    "NonFiniteStateError",
    "RunCheckpointer",
]

log = logging.getLogger(__name__)

_ARRAYS, _META, _BUFFER = "state", "state_meta", "replay_buffer"
_REPLACED_SUFFIX = ".dsrl-replaced"


class RunCheckpointer:
    """Saves and restores a run's full training state under `run_dir/checkpoints/<step>/`.

    `state` is any pytree: typically {"agent": learner (flax.struct PyTreeNode with params, optax
    states and a PRNG key), "step": int, "env_steps": int, "rng": np.random.Generator or its
    `bit_generator.state`}. Saving is synchronous: when `save` returns, the step is on disk and
    its checksum manifest written. `max_to_keep` steps are kept (the newest verified one always).
    """

    def __init__(self, run_dir: str | os.PathLike, max_to_keep: int = 2, read_only: bool = False):
        """read_only: restore only, and change nothing on disk (no directory created, no
        interrupted save cleaned up): for reading a run that may still be training, e.g. an
        evaluation-only run (dsrl.training.eval_only)."""
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}.")
        self.directory = Path(run_dir).absolute() / "checkpoints"
        self.max_to_keep = max_to_keep
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"{Path(run_dir)} has no checkpoints/ directory to read")
        if self.directory.is_dir() and not read_only:
            self._recover_replaced_steps()
        # orbax warns that a read-only manager will not save: that is the point of one.
        with quiet_absl("read only") if read_only else contextlib.nullcontext():
            options = ocp.CheckpointManagerOptions(
                # Garbage collection is ours (`_collect_garbage`): orbax would delete old steps as
                # soon as a new one is finalised, before its checksums are written.
                max_to_keep=None,
                create=not read_only,
                # A crash leaves `<step>.orbax-checkpoint-tmp-*`; a restarted run removes it.
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
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
        if self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only: nothing can be saved")
        _refuse_non_finite(step, state, buffer, self.latest_step(), self.directory)
        arrays, meta = split_state(state)
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
        latest = self.latest_step()
        try:
            # orbax logs a failed write's traceback before raising it; the error says it all.
            with quiet_absl("raised an exception"):
                self._manager.save(step, args=ocp.args.Composite(**items), force=True)
                self._manager.wait_until_finished()
            write_manifest(step_dir)
        except BaseException as err:
            # The new step is not verified: it must not shadow the one it replaces.
            full = isinstance(err, Exception) and disk_is_full(self.directory, err)
            shutil.rmtree(step_dir, ignore_errors=True)
            for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)  # space back for the next save
            if replacing:
                os.rename(aside, step_dir)
            self._manager.reload()
            if full:
                raise disk_full_error(self.directory, step, latest) from err
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
            if (step_dir / MANIFEST).is_file():
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
        return verify_manifest(self.directory / str(step))

    def restore(
        self,
        template_state: Any,
        step: int | None = None,
        example_transition: dict[str, Any] | None = None,
        load_buffer: bool = True,
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
        keys, numpy Generators. `buffer` is None when the checkpoint was saved without one, or
        with `load_buffer=False` (the agent alone, e.g. for an evaluation).
        """
        self._manager.reload()
        if step is not None:
            if step not in self.all_steps():
                raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}.")
            return self._restore_step(step, template_state, example_transition, load_buffer)
        steps = self.all_steps()
        if not steps:
            return None
        verified, unverified, failures = self._sort_steps(steps)
        for candidate in verified:
            try:
                result = self._restore_step(
                    candidate, template_state, example_transition, load_buffer
                )
            except CheckpointMismatchError:
                raise  # intact files that do not fit the template: a config error, not damage
            except Exception as err:  # noqa: BLE001 - any failure means: try the older step
                failures.append((candidate, err))
                continue
            self._log_choice(candidate, failures, unverified, verified=True)
            return result
        # No verified step restores: an unverified one (written before checksums existed, or its
        # manifest lost) is used only if its arrays pass every check, and said so.
        for candidate in unverified:
            try:
                result = self._restore_step(
                    candidate, template_state, example_transition, load_buffer
                )
            except Exception as err:  # noqa: BLE001 - any failure means: try the older step
                failures.append((candidate, err))
                continue
            self._log_choice(candidate, failures, [], verified=False)
            return result
        failures.sort(key=lambda item: -item[0])
        mismatches = [err for _, err in failures if isinstance(err, CheckpointMismatchError)]
        if mismatches:
            raise mismatches[0]  # every step refused the template: a config error, not damage
        reasons = "; ".join(f"step {s}: {one_line(err)}" for s, err in failures)
        raise NoIntactCheckpointError(
            f"No checkpoint in {self.directory} can be restored ({reasons}). Nothing was deleted; "
            "restore the files from a backup, or start a fresh run directory."
        ) from failures[0][1]

    def _sort_steps(self, steps: list[int]) -> tuple[list[int], list[int], list]:
        """(verified, unverified, damaged) steps, newest first; damaged ones with the reason."""
        verified, unverified, damaged = [], [], []
        for step in reversed(steps):
            try:
                (verified if verify_manifest(self.directory / str(step)) else unverified).append(
                    step
                )
            except CheckpointDamagedError as err:
                damaged.append((step, err))
        return verified, unverified, damaged

    def _log_choice(self, step: int, failures: list, passed_over: list[int], verified: bool):
        for skipped, err in failures:
            log.warning(
                "Checkpoint step %d in %s is damaged and was skipped: %s",
                skipped,
                self.directory,
                one_line(err),
            )
        newer = sorted((s for s in passed_over if s > step), reverse=True)
        for skipped in newer:
            log.warning(
                "Checkpoint step %d in %s has no readable checksum manifest (%s) and was skipped: "
                "step %d is the newest verified one.",
                skipped,
                self.directory,
                MANIFEST,
                step,
            )
        if not verified:
            log.warning(
                "No checkpoint step in %s is verified; restored step %d unverified (it has no "
                "readable checksum manifest, %s) after its arrays passed every check (shapes, "
                "dtypes, finite values).",
                self.directory,
                step,
                MANIFEST,
            )
        if failures or newer:
            log.warning(
                "Resuming from checkpoint step %d. The skipped steps were left on disk for "
                "inspection.",
                step,
            )

    def _restore_step(
        self,
        step: int,
        template_state: Any,
        example_transition: dict[str, Any] | None,
        load_buffer: bool = True,
    ) -> tuple[Any, ReplayBuffer | None]:
        where = self.directory / str(step)
        verify_manifest(where)  # raises CheckpointDamagedError
        meta = self._manager.restore(
            step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
        )[_META]
        if not isinstance(meta, dict) or "leaves" not in meta:
            raise CheckpointDamagedError(f"{where}/{_META} holds no leaf table: {meta!r:.200}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"Checkpoint {where} has format {meta.get('format_version')}; this code reads "
                f"format {FORMAT_VERSION}."
            )
        flat, treedef = jax.tree_util.tree_flatten_with_path(template_state)
        _, template_meta = split_state(template_state)
        check_template(meta["leaves"], template_meta["leaves"], where)
        template_leaves = [leaf for _, leaf in flat]

        # Restore targets come from what is on disk (shapes/dtypes checked against the template
        # above); jax leaves take the template's sharding when it has one.
        targets = {}
        for index, (record, leaf) in enumerate(zip(meta["leaves"], template_leaves, strict=True)):
            if record["kind"] in ("jax", "numpy", "prng_key"):
                targets[f"leaf_{index:05d}"] = restore_target(record, leaf)
        items: dict[str, Any] = {}
        if targets:
            items[_ARRAYS] = ocp.args.StandardRestore(targets)
        with_buffer = bool(meta["has_replay_buffer"]) and load_buffer
        if with_buffer:
            items[_BUFFER] = ReplayBufferRestore(example_transition)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items)) if items else {}
        arrays = restored[_ARRAYS] if targets else {}

        leaves = []
        for index, (record, leaf) in enumerate(zip(meta["leaves"], template_leaves, strict=True)):
            array = arrays.get(f"leaf_{index:05d}")
            check_restored_array(record, array, where)
            leaves.append(rebuild_leaf(record, leaf, array))
        state = jax.tree_util.tree_unflatten(treedef, leaves)
        buffer = restored.get(_BUFFER) if with_buffer else None
        # Random bytes in an unverified step, or NaN saved before saves were checked, would
        # otherwise train into NaN silently.
        bad = non_finite_leaves(state) + (buffer.non_finite_fields() if buffer else [])
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


def _refuse_non_finite(
    step: int, state: Any, buffer: ReplayBuffer | None, latest: int | None, directory: Path
) -> None:
    bad = non_finite_leaves(state) + (buffer.non_finite_fields() if buffer is not None else [])
    if bad:
        kept = f"step {latest} stays the latest" if latest is not None else "none was saved"
        raise NonFiniteStateError(
            f"Refusing to save checkpoint step {step} in {directory}: non-finite values (NaN or "
            f"inf) in {', '.join(bad)}. Nothing was written ({kept}). Training diverged or the "
            "env produced non-finite data: resume from the last checkpoint and look at the "
            "rewards/observations, or lower the learning rates."
        )
