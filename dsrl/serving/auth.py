"""API-key check of the websocket handshake (and of `GET /stats`).

The key comes as header `Authorization: Api-Key <key>` (openpi's client) or `?api_key=<key>`, and
is compared in constant time. A correct key is accepted at once, always: nothing a client with a
wrong key does can refuse or delay it. Behind the SSH tunnel the docs recommend every client
comes from 127.0.0.1, so anything keyed on the address would let one bad client lock out all.

A wrong (or missing) key slows down only its own handshake: its 401 comes after
`failure_delay_s`, and 401s leave the server no faster than `_FAILURES_PER_DELAY` per delay in
all, so a flood of guesses over many connections learns at most that many answers per delay
(each further guess waits its turn, up to just before the handshake deadline). This is a speed
bump; the protection is a long random key (`python -c "import secrets;
print(secrets.token_urlsafe(32))"`).
"""

from __future__ import annotations

import asyncio
import hmac
import http
import time
import urllib.parse
from typing import Any

from websockets.asyncio.server import ServerConnection

from dsrl.serving.protocol import API_KEY_HEADER, API_KEY_QUERY, API_KEY_SCHEME

# 401s answered per failure_delay_s, over every connection together.
_FAILURES_PER_DELAY = 16
# A failing handshake is answered this long before its deadline at the latest, so that its 401
# still reaches the client instead of the handshake timing out.
_DEADLINE_MARGIN_S = 0.25


def given_key(request: Any, parsed: urllib.parse.SplitResult) -> str | None:
    """The key a handshake carries, from its header or its query; None if neither."""
    header = request.headers.get(API_KEY_HEADER, "")
    if header.startswith(API_KEY_SCHEME):
        return header[len(API_KEY_SCHEME) :]
    return urllib.parse.parse_qs(parsed.query).get(API_KEY_QUERY, [None])[0]


class ApiKeyGate:
    """Checks handshakes against `api_key` (None: every handshake passes). `max_wait_s` bounds
    how long a failing handshake is held (below the server's handshake deadline)."""

    def __init__(self, api_key: str | None, failure_delay_s: float, max_wait_s: float, stats: dict):
        self.api_key = api_key
        self.failure_delay_s = failure_delay_s
        self.max_wait_s = max(max_wait_s - _DEADLINE_MARGIN_S, failure_delay_s)
        self.stats = stats
        self._spacing_s = failure_delay_s / _FAILURES_PER_DELAY
        self._next_answer_at = 0.0

    def accepts(self, request: Any, parsed: urllib.parse.SplitResult) -> bool:
        if self.api_key is None:
            return True
        given = given_key(request, parsed)
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    async def check(
        self, connection: ServerConnection, request: Any, parsed: urllib.parse.SplitResult
    ) -> Any:
        """None if the key is right (at once); else a 401 response, after this handshake's
        delay."""
        if self.accepts(request, parsed):
            return None
        self.stats["auth_failures"] += 1
        await asyncio.sleep(self._failure_wait())  # only this handshake waits
        return connection.respond(
            http.HTTPStatus.UNAUTHORIZED,
            "missing or wrong API key: send header 'Authorization: Api-Key <key>' or "
            "query '?api_key=<key>'\n",
        )

    def _failure_wait(self) -> float:
        """Seconds until this failure's 401: its own delay, or later when other failures hold the
        earlier answer slots."""
        now = time.monotonic()
        answer_at = max(now + self.failure_delay_s, self._next_answer_at)
        if answer_at - now > self.max_wait_s:
            # The slots are taken up to past the deadline: wait until then, holding no slot.
            self.stats["auth_throttled"] += 1
            return self.max_wait_s
        self._next_answer_at = answer_at + self._spacing_s
        return answer_at - now
