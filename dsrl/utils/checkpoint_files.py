"""Checkpoint files: the checksum manifest written after orbax finalised a step (and checked
before a restore), and the replay buffer as an orbax item."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dsrl.data.replay_buffer import LayoutMismatchError, ReplayBuffer
from dsrl.utils.checkpoint_state import CheckpointDamagedError, CheckpointMismatchError

log = logging.getLogger(__name__)

MANIFEST = "dsrl_checksums.json"
_MANIFEST_VERSION = 1


@contextlib.contextmanager
def quiet_absl(phrase: str):
    """Drops absl log records that mention `phrase` (underscores read as spaces)."""
    absl_log = logging.getLogger("absl")
    quiet = logging.Filter()
    quiet.filter = lambda record: phrase not in record.getMessage().replace("_", " ")
    absl_log.addFilter(quiet)
    try:
        yield
    finally:
        absl_log.removeFilter(quiet)


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


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}"


# ---------------------------------------------------------------------------------------------
# Checksums and finiteness


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: Path) -> None:
    """Checks that the finalised step reads back and writes its checksum manifest, atomically."""
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
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
    tmp = step_dir / f"{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, step_dir / MANIFEST)
    dir_fd = os.open(step_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


def verify_manifest(step_dir: Path) -> bool:
    """True if every file in the manifest matches; False if there is no usable manifest."""
    manifest_path = step_dir / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["files"]
        if manifest.get("format_version") != _MANIFEST_VERSION or not isinstance(entries, dict):
            raise ValueError(f"unknown manifest format {manifest.get('format_version')!r}")
    except (ValueError, KeyError, TypeError) as err:
        log.warning("Checksum manifest %s is unreadable (%s).", manifest_path, one_line(err))
        return False
    for name, entry in entries.items():
        path = step_dir / name
        if not path.is_file():
            raise CheckpointDamagedError(f"{path} is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointDamagedError(
                f"{path} has {size} bytes, {entry['size']} were written (truncated or overwritten)"
            )
        if _sha256(path) != entry["sha256"]:
            raise CheckpointDamagedError(f"{path} does not match its sha256 in {MANIFEST}")
    return True


class CheckpointDiskFullError(OSError):
    """A checkpoint could not be written because its disk is full; nothing of it was kept."""


_FULL_PHRASES = ("no space left", "resource_exhausted", "disk quota exceeded")


def disk_is_full(directory: Path, err: BaseException) -> bool:
    """Whether `err` (raised while writing under `directory`) comes from a full disk: ENOSPC or
    EDQUOT anywhere in its chain, orbax's RESOURCE_EXHAUSTED, or a short write (numpy reports
    those without an errno) with almost no space left."""
    seen = err
    while seen is not None:
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(phrase in str(seen).lower() for phrase in _FULL_PHRASES):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return False
    return isinstance(err, OSError) and usage.free < max(16 * 2**20, usage.total // 100)


def disk_full_error(directory: Path, step: int, latest: int | None) -> CheckpointDiskFullError:
    kept = f"step {latest} stays the latest" if latest is not None else "no earlier step exists"
    err = CheckpointDiskFullError(
        f"checkpoint step {step} could not be written to {directory}: the disk is full. Nothing "
        f"of step {step} was kept ({kept}). Free space on that disk (df -h {directory}), then "
        f"resume the run (--resume {directory.parent})"
    )
    err.errno = errno.ENOSPC
    return err
