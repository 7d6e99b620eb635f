"""One writer per run directory: an advisory lock held for the life of a run.

Two launchers resuming the same run directory would both restore the same step, append
duplicate rows to metrics.jsonl and race each other's checkpoint saves. `RunDirLock` takes an
exclusive `fcntl.flock` on `run_dir/.dsrl.lock`; the second launcher is refused with a line
naming the holder (PID and host, written into the file by the holder).

A killed run needs no clean-up: the kernel drops a flock when the last descriptor of its open
file is closed, which happens when the process dies however it dies (SIGKILL included). The
next launcher therefore simply takes the lock; the PID left in the file only lets it say that
it took over from a run that is gone. Taking the lock is one atomic system call, so two
launchers racing for a stale lock cannot both win.

The descriptor is opened close-on-exec, so processes the run exec's (Ray daemons, a policy
server) never hold the lock. A forked env worker inherits it until it exits; that is what a
lock should do while a worker of the run is still alive.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".dsrl.lock"


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory's lock."""


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirLock:
    """An exclusive lock on a run directory; `acquire` raises RunDirLockedError when another
    process holds it. Use as a context manager, or call `release` (also done at process exit by
    the kernel)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self.previous_holder: dict = {}  # what a dead holder left in the file, if anything

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        # No O_TRUNC: the holder's PID/host must survive a failed attempt, for the message.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirLockedError(self._refusal(holder)) from None
        self.previous_holder = _read_holder(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def took_over_from(self) -> str | None:
        """A line about the run that held the lock before, when it died without releasing it
        (its PID is still in the file); None after a clean release or for a new directory."""
        pid, host = self.previous_holder.get("pid"), self.previous_holder.get("host")
        if not pid:
            return None
        if host == socket.gethostname() and pid != os.getpid() and _pid_alive(pid):
            # A live process of that PID does not hold the lock: the PID was reused.
            return f"the lock's previous holder (PID {pid}) ended without releasing it"
        return f"the run that held it before (PID {pid} on {host}) ended without releasing it"

    def _refusal(self, holder: dict) -> str:
        who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return (
            f"{self.run_dir} is in use by another run ({who}, lock {self.path}); stop that run "
            "first, or resume a different run directory."
        )

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a clean exit leaves no PID to report as a dead holder
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
