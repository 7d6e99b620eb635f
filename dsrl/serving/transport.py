"""Bytes in and out of the policy server: a frame reader that never handles a large frame in
one go on the event loop, the connection class that uses it, and the listening socket.

The event loop only moves bytes, a chunk at a time: payloads are filled in place as they arrive,
and frames over the request limit are dropped as they arrive (never buffered), so a hostile frame
or a slow client never stalls `/healthz`, handshakes or other connections.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
from collections.abc import Generator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

# Frames of at least this size are filled in place by `FrameReader` (smaller ones go through
# websockets' own reader); after such frames the heap is trimmed (`memory.HeapTrimmer`).
LARGE_FRAME_BYTES = 1 << 20
# Kernel accept queue of the listening socket (Linux caps it at net.core.somaxconn).
KERNEL_BACKLOG = 1024


class FrameReader(StreamReader):
    """websockets' byte reader, changed for frame payloads so that the event loop never handles a
    large frame in one go (the stock reader grows one buffer, which glibc may copy on each growth,
    then copies the payload out of it when the last byte arrives: 20-50 ms in one callback for a
    15-30 MB frame on a loaded 2-core box, during which /healthz waits).

    Frame headers are read 2, 2 or 8, and 4 bytes at a time and control frames carry at most 125
    bytes, so any longer read is a data frame's payload:
      * one of up to `keep_bytes` (and at least LARGE_FRAME_BYTES) is copied into a buffer of its
        final size chunk by chunk as it arrives, and handed over without another copy;
      * one over `keep_bytes` (the request limit; websockets' own max_size still closes the
        connection beyond it) is counted and dropped as it arrives and read as empty, so nothing
        is buffered and the server answers `too_large` on the same connection.
    `empty_payloads` holds, for each frame read with an empty payload and in order, the dropped
    size (0: the frame was empty on the wire), for `Connection` to pair with those frames."""

    _MAX_SMALL_READ = 125

    def __init__(self, keep_bytes: int):
        super().__init__()
        self.keep_bytes = keep_bytes
        self.empty_payloads: collections.deque[int] = collections.deque()
        self._payload: bytearray | None = None  # the buffer being filled, None while dropping
        self._missing = 0  # payload bytes still to come

    @property
    def mid_frame(self) -> bool:
        """Part of a frame has arrived and the rest has not."""
        return bool(self.buffer) or self._missing > 0

    def feed_data(self, data: bytes | bytearray) -> None:
        if self._missing:
            if self.eof:
                raise EOFError("stream ended")
            take = min(len(data), self._missing)
            if self._payload is not None:
                start = len(self._payload) - self._missing
                self._payload[start : start + take] = memoryview(data)[:take]
            self._missing -= take
            if take == len(data):
                return
            data = memoryview(data)[take:]
        super().feed_data(data)

    def read_exact(self, n: int) -> Generator[None, None, bytearray]:
        if n == 0:
            self.empty_payloads.append(0)
        keep = n <= self.keep_bytes
        if n <= self._MAX_SMALL_READ or (keep and n < LARGE_FRAME_BYTES):
            return (yield from super().read_exact(n))
        buffered = min(len(self.buffer), n)
        self._payload = bytearray(n) if keep else None
        if self._payload is not None:
            with memoryview(self.buffer) as view:
                self._payload[:buffered] = view[:buffered]
        del self.buffer[:buffered]
        self._missing = n - buffered
        while self._missing:
            if self.eof:
                raise EOFError(f"stream ends {self._missing} bytes before the end of a frame")
            yield
        payload, self._payload = self._payload, None
        if payload is not None:
            return payload
        self.empty_payloads.append(n)
        return bytearray()


@dataclasses.dataclass
class Message:
    """What the server needs to know of an incoming message before touching its bytes."""

    text: bool
    dropped_bytes: int = 0


class Connection(ServerConnection):
    """A websocket connection reading frames with `FrameReader` and noting, for each incoming
    message, whether it is text and how many of its bytes were dropped. Text frames are never
    valid requests: knowing it lets `recv(decode=False)` be used, as websockets would otherwise
    UTF-8-decode one (up to twice max_request_bytes) on the event loop only to have it refused."""

    def __init__(self, protocol: Any, *args: Any, keep_bytes: int, **kwargs: Any):
        super().__init__(protocol, *args, **kwargs)
        # The protocol's parser has only started (waiting for the handshake's first line): restart
        # it on our reader, as the protocol's own constructor does with the stock one.
        self.reader = FrameReader(keep_bytes)
        protocol.reader = self.reader
        protocol.parser = protocol.parse()
        next(protocol.parser)
        self.messages: collections.deque[Message] = collections.deque()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame):
            dropped = 0 if event.data else self.reader.empty_payloads.popleft()
            # The first frame of a message carries its type; continuation frames carry CONT.
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.messages.append(Message(event.opcode is Opcode.TEXT, dropped))
            elif event.opcode is Opcode.CONT and self.messages:
                self.messages[-1].dropped_bytes += dropped
        super().process_event(event)


def listening_socket(host: str, port: int) -> socket.socket:
    """One socket on the first address `host` resolves to: a name such as "localhost" that
    resolves to 127.0.0.1 and ::1 would otherwise get two sockets (two ports when port=0)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve host {host!r} ({e}); pass an IP address") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart on the same port
        sock.bind(address)
        sock.listen(KERNEL_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
