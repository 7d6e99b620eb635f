"""Failures that end a run, each reported as one line naming what happened and what to do.

A traceback is for bugs. A run stopped by a full disk, by training that diverged, by a second
launcher on its run directory or by checkpoints that are all damaged is not a bug: the launcher
prints one line (the exception's own message, written to say the fix) and exits with status 1
(2 for checkpoints that do not fit the config: a bad value);
the full traceback goes to the run directory's `error_traceback.txt` for whoever wants it.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from dsrl.envs.chunk import NonFiniteActionError
from dsrl.utils.checkpoint_files import CheckpointDiskFullError
from dsrl.utils.checkpoint_state import (
    CheckpointMismatchError,
    NoIntactCheckpointError,
    NonFiniteStateError,
)
from dsrl.utils.run_lock import RunDirLockedError

EXPECTED = (
    CheckpointDiskFullError,
    CheckpointMismatchError,
    NoIntactCheckpointError,
    NonFiniteActionError,
    NonFiniteStateError,
    RunDirLockedError,
)
TRACEBACK_FILE = "error_traceback.txt"


def one_line(err: BaseException) -> str | None:
    """The line to print for an expected failure; None for anything else (a bug: traceback)."""
    if not isinstance(err, EXPECTED):
        return None
    return " ".join(str(err).split())


@contextlib.contextmanager
def one_line_failures(run_dir: str | Path | None = None, prog: str = "dsrl") -> Iterator[None]:
    """Turns an expected failure inside the block into one line on stderr and exit status 1."""
    try:
        yield
    except EXPECTED as err:
        where = ""
        if run_dir is not None and Path(run_dir).is_dir():
            path = Path(run_dir) / TRACEBACK_FILE
            with contextlib.suppress(OSError):
                path.write_text("".join(traceback.format_exception(err)))
                where = f" (traceback: {path})"
        print(f"{prog}: error: {one_line(err)}{where}", file=sys.stderr, flush=True)
        # A checkpoint that does not fit the config is a bad value (argparse's status 2).
        raise SystemExit(2 if isinstance(err, CheckpointMismatchError) else 1) from None
