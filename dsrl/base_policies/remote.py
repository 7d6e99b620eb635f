"""A base policy served by `scripts/serve_policy.py` on another machine (usually a GPU box).

`RemotePolicy` implements the BasePolicy contract over the openpi websocket protocol
(`dsrl/serving/protocol.py`): `noise_shape` and `action_dim` come from the server's metadata,
`sample_actions(observation, noise)` sends ONE batched request per call (several when the batch
exceeds the server's `max_batch`, announced in its metadata). Requests are
idempotent (the actions are a deterministic function of observation and noise), so a dropped
connection is re-opened with exponential backoff and the request re-sent; after `max_attempts`
failures it raises `RemotePolicyError` naming the server address. An error reply from the
server (bad request) is raised at once, never retried.

Usage: `RemotePolicy("gpu-box", 8000, api_key=os.environ.get("DSRL_SERVER_API_KEY"))`, or from
the launchers `--pi0_remote gpu-box:8000`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import websockets
import websockets.sync.client

from dsrl.serving import protocol
from dsrl.serving.protocol import API_KEY_ENV

logger = logging.getLogger(__name__)


class RemotePolicyError(RuntimeError):
    """The server could not be reached, or it answered with an error."""


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port), for the `--pi0_remote` flag."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"policy server address {address!r} must look like 'host:port'")
    return host, int(port)


class RemotePolicy:
    """BasePolicy backed by a dsrl policy server.

    Args:
      host, port: server address (a host starting with ws:// or wss:// is used as the URI).
      api_key: sent as `Authorization: Api-Key <key>` (openpi's header); default
        $DSRL_SERVER_API_KEY when set.
      max_attempts: connection attempts per call before giving up.
      backoff_s, max_backoff_s: first wait between attempts, doubled up to the maximum.
      timeout_s: per-request reply timeout (None waits forever; first Pi0 calls compile).
    """

    def __init__(
        self,
        host: str,
        port: int | str | None = None,
        api_key: str | None = None,
        *,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float | None = 300.0,
        open_timeout_s: float = 10.0,
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.uri = host if host.startswith("ws") else f"ws://{host}"
        if port is not None:
            self.uri += f":{int(port)}"
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.open_timeout_s = open_timeout_s
        self._ws: websockets.sync.client.ClientConnection | None = None
        self.metadata: dict[str, Any] = {}
        self.connections = 0  # successful connects; connections - 1 = reconnects
        self._with_retries(lambda: None)
        if "noise_shape" not in self.metadata or "action_dim" not in self.metadata:
            self.close()
            raise RemotePolicyError(
                f"server at {self.uri} did not announce noise_shape/action_dim: it is not a dsrl "
                "policy server (an upstream openpi server ignores steering noise). Start one "
                "with scripts/serve_policy.py"
            )
        self.noise_shape: tuple[int, int] = tuple(int(d) for d in self.metadata["noise_shape"])
        self.action_dim: int = int(self.metadata["action_dim"])

    # ---------------------------------------------------------------------------- transport

    def _connect(self) -> None:
        headers = (
            {protocol.API_KEY_HEADER: f"{protocol.API_KEY_SCHEME}{self.api_key}"}
            if self.api_key
            else None
        )
        try:
            ws = websockets.sync.client.connect(
                self.uri,
                compression=None,
                max_size=None,
                additional_headers=headers,
                open_timeout=self.open_timeout_s,
                proxy=None,
                legacy=True,  # a plain connection; reconnects are handled here
            )
        except websockets.InvalidStatus as e:
            if e.response.status_code == 401:
                raise RemotePolicyError(
                    f"server at {self.uri} refused the API key (HTTP 401): pass api_key= / "
                    "set DSRL_SERVER_API_KEY to the server's key"
                ) from None
            raise
        self.metadata = protocol.unpackb(ws.recv(timeout=self.open_timeout_s))
        self._ws = ws
        self.connections += 1

    def _with_retries(self, request: Any) -> Any:
        """Run `request()` (None: just connect) with reconnect + exponential backoff."""
        delay = self.backoff_s
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
            try:
                if self._ws is None:
                    self._connect()
                return request() if request is not None else None
            except RemotePolicyError:
                raise
            except (OSError, TimeoutError, websockets.WebSocketException) as e:
                self._drop()
                rcvd = getattr(e, "rcvd", None)
                if rcvd is not None and rcvd.code == protocol.CLOSE_MESSAGE_TOO_BIG:
                    # Our frame exceeded the server's size limit; re-sending cannot help.
                    raise RemotePolicyError(
                        f"policy server {self.uri} closed the connection: request too large "
                        "(1009); send smaller images or raise the server's --max_request_mb"
                    ) from None
                last = e
                if attempt + 1 < self.max_attempts:
                    logger.warning("policy server %s: %s; retrying in %.1fs", self.uri, e, delay)
                    time.sleep(delay)
                    delay = min(2 * delay, self.max_backoff_s)
        raise RemotePolicyError(
            f"policy server at {self.uri} unreachable after {self.max_attempts} attempts "
            f"(last error: {type(last).__name__}: {last}). Is scripts/serve_policy.py running "
            "there, and is the port reachable (ssh -L tunnel / --host)?"
        )

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - the socket is dead anyway
                pass
        self._ws = None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request map, return the decoded reply map."""
        frame = protocol.packb(message)

        def roundtrip() -> Any:
            assert self._ws is not None
            self._ws.send(frame)
            return self._ws.recv(timeout=self.timeout_s)

        reply = self._with_retries(roundtrip)
        if isinstance(reply, str):
            raise RemotePolicyError(f"policy server {self.uri} rejected the request: {reply}")
        return protocol.unpackb(reply)

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------- BasePolicy

    def sample_actions(self, observation: dict[str, Any], noise: np.ndarray) -> np.ndarray:
        """observation leaves (B, ...), noise (B, H, D) -> f32 (B, H, action_dim)."""
        noise = np.asarray(noise, np.float32)
        if noise.ndim != 3 or noise.shape[1:] != self.noise_shape:
            raise ValueError(
                f"noise has shape {noise.shape}, expected (B, *{self.noise_shape}) for the "
                f"policy served at {self.uri}"
            )
        # The server refuses batches over its max_batch (it compiles only up to it): split.
        max_batch = int(self.metadata.get("max_batch") or 0) or max(len(noise), 1)
        chunks = []
        for lo in range(0, max(len(noise), 1), max_batch):
            hi = lo + max_batch
            obs = observation if len(noise) <= max_batch else _slice_batch(observation, lo, hi)
            reply = self.request({"method": "infer_batch", "obs": obs, "noise": noise[lo:hi]})
            chunks.append(np.asarray(reply["actions"], np.float32))
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def infer(self, observation: dict[str, Any], noise: np.ndarray | None = None) -> dict:
        """One unbatched observation, openpi style; noise (H, D) or None (server draws it)."""
        message: dict[str, Any] = {"method": "infer", "obs": observation}
        if noise is not None:
            message["noise"] = np.asarray(noise, np.float32)
        return self.request(message)

    def prefix_feature(self, observation: dict[str, Any]) -> np.ndarray:
        """Pi0 prefix feature pooled over valid tokens, for one unbatched observation."""
        reply = self.request({"method": "get_prefix_feature", "obs": observation})
        return np.asarray(reply["prefix_feature"], np.float32)


def _slice_batch(tree: Any, lo: int, hi: int) -> Any:
    """Rows lo:hi of every batched leaf; a single string (one prompt for all) is kept whole."""
    if isinstance(tree, dict):
        return {k: _slice_batch(v, lo, hi) for k, v in tree.items()}
    if isinstance(tree, str | bytes):
        return tree
    if isinstance(tree, list | tuple):
        return list(tree[lo:hi])
    array = np.asarray(tree)
    return array[lo:hi] if array.ndim else tree
