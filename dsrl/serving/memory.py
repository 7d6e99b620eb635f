"""Handing freed memory back to the OS once large frames and closing connections stop.

glibc keeps freed frame-sized buffers in its heap for reuse, which keeps large frames cheap on the
event loop (no fresh pages to fault in), but a burst of them would otherwise raise RSS for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import time
from collections.abc import Callable

# Trim once nothing memory-heavy has happened for this long.
TRIM_AFTER_S = 2.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _load_malloc_trim()


class HeapTrimmer:
    """`note(loop)` after each large frame or closed connection; `malloc_trim` runs in `executor`
    (ctypes releases the GIL meanwhile) once such events have stopped for TRIM_AFTER_S."""

    def __init__(self, executor: concurrent.futures.Executor):
        self._executor = executor
        self._last_event = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def note(self, loop: asyncio.AbstractEventLoop) -> None:
        self._last_event = time.monotonic()
        if self._timer is None and _malloc_trim is not None:
            self._timer = loop.call_later(TRIM_AFTER_S, self._trim_when_quiet, loop)

    def _trim_when_quiet(self, loop: asyncio.AbstractEventLoop) -> None:
        quiet_s = time.monotonic() - self._last_event
        if quiet_s < TRIM_AFTER_S:
            self._timer = loop.call_later(TRIM_AFTER_S - quiet_s, self._trim_when_quiet, loop)
            return
        self._timer = None
        with contextlib.suppress(RuntimeError):  # pool already shut down
            self._executor.submit(_malloc_trim, 0)
