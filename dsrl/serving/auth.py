"""API-key check of the websocket handshake (and of `GET /stats`).

The key comes as header `Authorization: Api-Key <key>` (openpi's client) or `?api_key=<key>`, and
is compared in constant time. After a wrong key the client's address waits `failure_delay_s` for
its 401 and gets 429 on any other attempt until then, so keys can be tried at most once per delay
per address while other addresses are unaffected.
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

# Addresses remembered for the API-key delay; beyond this, expired entries are dropped.
_MAX_TRACKED_ADDRESSES = 4096


def given_key(request: Any, parsed: urllib.parse.SplitResult) -> str | None:
    """The key a handshake carries, from its header or its query; None if neither."""
    header = request.headers.get(API_KEY_HEADER, "")
    if header.startswith(API_KEY_SCHEME):
        return header[len(API_KEY_SCHEME) :]
    return urllib.parse.parse_qs(parsed.query).get(API_KEY_QUERY, [None])[0]


class ApiKeyGate:
    """Checks handshakes against `api_key` (None: every handshake passes)."""

    def __init__(self, api_key: str | None, failure_delay_s: float, stats: dict[str, Any]):
        self.api_key = api_key
        self.failure_delay_s = failure_delay_s
        self.stats = stats
        self._penalty_until: dict[str, float] = {}

    async def check(
        self, connection: ServerConnection, request: Any, parsed: urllib.parse.SplitResult
    ) -> Any:
        """None if the key is right; else a 401 (after the delay) or a 429 response."""
        if self.api_key is None:
            return None
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        now = time.monotonic()
        until = self._penalty_until.get(address, 0.0)
        if now < until:
            # Not checked at all: a guess made during the penalty learns nothing.
            self.stats["auth_throttled"] += 1
            return connection.respond(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed API-key attempts from {address}: retry in {until - now:.1f} s\n",
            )
        given = given_key(request, parsed)
        if given is not None and hmac.compare_digest(given.encode(), self.api_key.encode()):
            return None
        self.stats["auth_failures"] += 1
        if len(self._penalty_until) >= _MAX_TRACKED_ADDRESSES:
            self._penalty_until = {a: t for a, t in self._penalty_until.items() if t > now}
        self._penalty_until[address] = now + self.failure_delay_s
        if self.failure_delay_s:
            await asyncio.sleep(self.failure_delay_s)  # only this handshake waits
        return connection.respond(
            http.HTTPStatus.UNAUTHORIZED,
            "missing or wrong API key: send header 'Authorization: Api-Key <key>' or "
            "query '?api_key=<key>'\n",
        )
