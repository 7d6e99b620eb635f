"""One websocket connection's life on the policy server: the handshake's checks (`/healthz`,
`/stats`, the API key, the connection cap), then its requests answered one at a time, each
decoded and run off the event loop, until the client leaves, stays idle past `idle_timeout_s`,
stalls mid-frame or with its reply unread, or is evicted at the cap (`connections`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import http
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode

from dsrl.serving import transport
from dsrl.serving.auth import ApiKeyGate
from dsrl.serving.connections import ConnectionTable
from dsrl.serving.decoding import Request, too_large
from dsrl.serving.memory import HeapTrimmer
from dsrl.serving.protocol import error_frame


@dataclasses.dataclass(frozen=True)
class Sessions:
    """What every connection shares. `decode` runs in `decode_pool` (frame -> request or error
    frame), `infer` in `infer_pool` ((request, start, prev_total_ms) -> reply or error frame)."""

    metadata_frame: bytes
    auth: ApiKeyGate
    table: ConnectionTable
    stats: dict[str, Any]
    snapshot: Callable[[], dict[str, Any]]
    idle_timeout_s: float
    max_request_bytes: int
    decode: Callable[[bytes], Request | str]
    decode_pool: concurrent.futures.Executor
    infer: Callable[[Request, float, float | None], bytes | str]
    infer_pool: concurrent.futures.Executor
    trimmer: HeapTrimmer

    async def process_request(self, connection: ServerConnection, request: Any):
        parsed = urllib.parse.urlsplit(request.path)
        if parsed.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        denied = await self.auth.check(connection, request, parsed)
        if denied is not None:
            return denied
        if parsed.path == "/stats":
            return connection.respond(http.HTTPStatus.OK, json.dumps(self.snapshot()) + "\n")
        if self.table.counted() >= self.table.cap:
            if self.table.make_room():
                self.stats["evicted_idle"] += 1
                return None
            self.stats["refused_connections"] += 1
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"server at its connection cap ({self.table.cap} open connections, all "
                "busy or just used): retry later, or raise --max_connections\n",
            )
        return None

    async def handler(self, ws: transport.Connection) -> None:
        try:
            if not self.table.add(ws):
                # Several handshakes passed the cap check at once; the late ones leave.
                self.stats["refused_connections"] += 1
                await ws.close(CloseCode.TRY_AGAIN_LATER, "connection cap reached; retry later")
                return
            self.stats["connections"] += 1
            await self._serve_connection(ws)
        finally:
            self.table.remove(ws)
            # Connection state is freed now: after a flood, hand the memory back once it is over.
            self.trimmer.note(asyncio.get_running_loop())

    async def _serve_connection(self, ws: transport.Connection) -> None:
        await ws.send(self.metadata_frame)
        prev_total_ms: float | None = None
        while True:
            message = await self._next_message(ws)
            if message is None:
                return
            start = time.perf_counter()
            frame = await self._answer(ws, message, start, prev_total_ms)
            del message  # the frame may be tens of MB; do not hold it during inference
            self.stats["errors" if isinstance(frame, str) else "requests"] += 1
            if not await self._send_reply(ws, frame):
                return
            prev_total_ms = (time.perf_counter() - start) * 1000.0

    async def _next_message(self, ws: transport.Connection) -> bytes | None:
        """The next request frame's bytes; None once the connection is closed or dropped."""
        self.table.mark_idle(ws)
        try:
            async with asyncio.timeout(self.idle_timeout_s or None):
                message = await ws.recv(decode=False)
            self.table.mark_busy(ws)
            return message
        except websockets.ConnectionClosed:
            return None
        except TimeoutError:
            pass
        if ws.reader.mid_frame:
            # Stalled partway through a frame: its close frame could only arrive as more
            # payload, so a closing handshake cannot succeed. Drop the connection and the
            # part-frame buffered for it now.
            self.stats["stalled_closed"] += 1
            ws.transport.abort()
            return None
        self.stats["idle_closed"] += 1
        await ws.close(
            CloseCode.GOING_AWAY,
            f"no request for {self.idle_timeout_s:g} s (idle timeout); reconnect",
        )
        return None

    async def _answer(
        self, ws: transport.Connection, message: bytes, start: float, prev_total_ms: float | None
    ) -> bytes | str:
        """The reply frame (or error frame) for one message, decoded and run off the loop."""
        loop = asyncio.get_running_loop()
        if len(message) > transport.LARGE_FRAME_BYTES:
            self.trimmer.note(loop)
        info = ws.messages.popleft()
        if info.dropped_bytes:
            error = too_large(len(message) + info.dropped_bytes, self.max_request_bytes)
            return error_frame(error.kind, str(error))
        if info.text:
            return error_frame(
                "bad_frame", "expected a binary msgpack frame, got a text frame; send bytes"
            )
        request = await loop.run_in_executor(self.decode_pool, self.decode, message)
        del message
        if isinstance(request, str):
            return request
        return await loop.run_in_executor(
            self.infer_pool, self.infer, request, start, prev_total_ms
        )

    async def _send_reply(self, ws: transport.Connection, frame: bytes | str) -> bool:
        """Send one reply; False once the connection is closed or dropped."""
        try:
            async with asyncio.timeout(self.idle_timeout_s or None):
                await ws.send(frame)
            return True
        except websockets.ConnectionClosed:
            return False
        except TimeoutError:
            # The client stopped reading: a close frame would queue behind the unread reply,
            # so drop the connection (and the reply buffered for it) at once.
            self.stats["stalled_closed"] += 1
            ws.transport.abort()
            return False
