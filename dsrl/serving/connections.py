"""The open connections of a policy server, and which one to evict when the cap is reached.

Idle is told from dead by websockets' keep-alive pings (`ping_interval_s`): a peer that stops
answering them is dropped within three ping intervals (ping, pong deadline, closing handshake),
whatever `idle_timeout_s` says. An idle but live connection keeps its slot until `idle_timeout_s`, except when the server
is at its cap: then a new handshake evicts the connection idle the longest (close 1001, "evicted
... reconnect"), so a well-behaved client can always reconnect; only when every connection is busy
with a request (or idle for less than `min_idle_s`) is the newcomer refused with 503.
"""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode

# A connection is not evicted before it has been idle this long: a client between two requests
# of a control loop (a few ms to ~1 s apart) keeps its slot against a burst of newcomers.
DEFAULT_MIN_IDLE_S = 1.0


class ConnectionTable:
    """Open connections and since when each is idle (None while one of its requests is being
    answered). Connections being evicted do not count against the cap."""

    def __init__(self, cap: int, min_idle_s: float = DEFAULT_MIN_IDLE_S):
        self.cap = cap
        self.min_idle_s = min_idle_s
        self._idle_since: dict[ServerConnection, float | None] = {}
        self._evicting: set[ServerConnection] = set()
        self._closing: set[asyncio.Task] = set()  # strong references to the close tasks

    def __len__(self) -> int:
        return len(self._idle_since)

    def counted(self) -> int:
        """Connections that hold a slot."""
        return len(self._idle_since) - len(self._evicting)

    def add(self, ws: ServerConnection) -> bool:
        """Register a new connection; False if it is over the cap (handshakes that passed the
        cap check together)."""
        self._idle_since[ws] = time.monotonic()
        return self.counted() <= self.cap

    def remove(self, ws: ServerConnection) -> None:
        self._idle_since.pop(ws, None)
        self._evicting.discard(ws)

    def mark_idle(self, ws: ServerConnection) -> None:
        if ws in self._idle_since:
            self._idle_since[ws] = time.monotonic()

    def mark_busy(self, ws: ServerConnection) -> None:
        if ws in self._idle_since:
            self._idle_since[ws] = None

    def make_room(self) -> bool:
        """True if a new connection fits, evicting the longest-idle one when the cap is reached;
        False when none can be evicted."""
        if self.counted() < self.cap:
            return True
        now = time.monotonic()
        idle = [
            (since, id(ws), ws)
            for ws, since in self._idle_since.items()
            if since is not None and ws not in self._evicting and now - since >= self.min_idle_s
        ]
        if not idle:
            return False
        since, _, victim = min(idle)
        self._evicting.add(victim)
        reason = f"evicted after {now - since:.0f} s idle: server at its connection cap; reconnect"
        task = asyncio.get_running_loop().create_task(victim.close(CloseCode.GOING_AWAY, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return True
