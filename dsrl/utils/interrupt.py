"""A graceful stop for training runs on Ctrl-C (SIGINT) and SIGTERM.

    with StopSignals() as stop:
        ...                      # the loop checks `stop.requested` between chunks and blocks
        if stop.requested:
            ...                  # save a checkpoint, then `raise stop.exit(message)`

The first signal only sets a flag and says so on stderr: the loop finishes the chunk in flight
(a robot is never left mid-motion), stores what was collected, writes a checkpoint and exits
with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), without a traceback. A second
signal exits at once (`os._exit`): checkpoints are written into a temporary directory and renamed
when complete (dsrl.utils.checkpoints), so quitting mid-save leaves the previous checkpoint the
latest. Code that blocks for a human (the operator's "press Enter" between real-robot episodes)
runs inside `interruptible()`, where the first signal raises `StopRequested` instead, so the run
does not wait for an Enter nobody will press.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

_ACTIVE: StopSignals | None = None  # the installed handler, for `interruptible()`


class StopRequested(Exception):
    """Raised where the loop cannot simply finish what it is doing (an evaluation, a wait for the
    operator): the loop catches it, checkpoints and exits."""


class TrainingInterrupted(SystemExit):
    """Exits the process with 128 + signal number, after the loop saved its checkpoint."""


def _say(text: str) -> None:
    # os.write, not print: a signal handler may run while print holds stderr's lock.
    with contextlib.suppress(OSError):
        os.write(2, f"\n{text}\n".encode())


class StopSignals:
    """Installs SIGINT / SIGTERM handlers for the `with` block (main thread only; elsewhere it
    installs nothing and `requested` stays False)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._raise_now = 0  # > 0 inside interruptible()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def exit(self, message: str) -> TrainingInterrupted:
        """The exception to raise once the work is saved; prints `message` first."""
        print(message, flush=True)
        return TrainingInterrupted(128 + int(self.signum or signal.SIGINT))

    def _handle(self, signum: int, frame) -> None:
        del frame
        if self.signum is not None:
            _say(
                f"[dsrl] {signal.Signals(signum).name} again: exiting now (the last checkpoint is kept)"
            )
            os._exit(128 + signum)
        self.signum = signum
        if self._raise_now:
            _say(
                f"[dsrl] {self.name}: stopping; saving a checkpoint (press Ctrl-C again to quit at once)"
            )
            raise StopRequested(self.name)
        _say(
            f"[dsrl] {self.name}: finishing the current chunk, then saving a checkpoint "
            "(press Ctrl-C again to quit at once)"
        )

    def __enter__(self) -> StopSignals:
        global _ACTIVE
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            _ACTIVE = self
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if _ACTIVE is self:
            _ACTIVE = None


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside: the first stop signal raises `StopRequested` at once (for waits on a human).
    Outside a `StopSignals` block this does nothing."""
    active = _ACTIVE
    if active is None:
        yield
        return
    if active.requested:
        raise StopRequested(active.name)
    active._raise_now += 1
    try:
        yield
    finally:
        active._raise_now -= 1
