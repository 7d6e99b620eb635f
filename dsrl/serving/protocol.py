"""What the policy server and its clients agree on: names, methods, error frames, the codec.

The wire protocol is openpi's (what the unmodified PyPI `openpi_client.WebsocketClientPolicy`
expects):
  * one websocket binary frame = one msgpack-numpy object (`dsrl.serving.msgpack_numpy`);
  * on connect the server sends the metadata dict (ours adds `noise_shape`, `action_dim`,
    `methods`, `max_request_bytes`, `max_batch`, `batch_sizes`);
  * each request frame is answered by exactly one reply frame, in order;
  * `GET /healthz` answers HTTP 200 "OK"; `GET /stats` answers the server's counters as JSON
    (API key required when one is set).

Requests (all binary msgpack maps):
  * plain openpi observation `{"observation/...": ..., "prompt": ..., "noise"?: (H, D)|(1, H, D)}`
    -> `{"actions": f32 (H, A), "server_timing": {...}, ...}`;
  * the DSRL fork's envelope `{"method": "infer", "obs": {...}}` (noise inside obs or beside it);
  * `{"method": "infer_batch", "obs": <leaves with leading B>, "noise": (B, H, D)}` -> actions
    (B, H, A): one batched `sample_actions` call (what `RemotePolicy` uses);
  * `{"method": "get_prefix_feature", "obs": {...}}` or `"return_prefix_feature": True` on an
    infer request -> `"prefix_feature"`: f32 (width,).

Errors differ from openpi on purpose (openpi issue #1039): a bad request gets a TEXT frame
`"dsrl-server error [<kind>]: <what is wrong and how to fix it>"` (no traceback; the upstream
client raises RuntimeError with this text), and the connection stays open for the next request.

The API key travels as header `Authorization: Api-Key <key>` (as openpi's client sends it) or as
the query `?api_key=<key>`. This module imports no server code, so a client stays light.
"""

from __future__ import annotations

from dsrl.serving.msgpack_numpy import WireFormatError, packb, unpackb

__all__ = [
    "API_KEY_ENV",
    "ENVELOPE_KEYS",
    "METHODS",
    "RequestError",
    "WireFormatError",
    "clip",
    "error_frame",
    "packb",
    "unpackb",
]

# Environment variable holding the API key, read by the server script and by `RemotePolicy`.
API_KEY_ENV = "DSRL_SERVER_API_KEY"
API_KEY_HEADER = "Authorization"
API_KEY_SCHEME = "Api-Key "
API_KEY_QUERY = "api_key"

METHODS = ("infer", "infer_batch", "get_prefix_feature")
# Keys of a request envelope; a map with "method" or made of these keys only is an envelope.
ENVELOPE_KEYS = frozenset({"method", "obs", "noise", "return_prefix_feature"})
ERROR_PREFIX = "dsrl-server error"
# Error text sent to a client: a hostile request must not produce a megabyte reply (a 4M-key map
# once produced a 47 MB one).
MAX_ERROR_CHARS = 600
# Close code websockets sends when a frame exceeds the connection's max_size.
CLOSE_MESSAGE_TOO_BIG = 1009


class RequestError(ValueError):
    """A request the server refuses; `kind` is a short tag, the message says what to fix."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more chars]"


def error_frame(kind: str, message: str) -> str:
    """The text frame answering a refused request."""
    return f"{ERROR_PREFIX} [{kind}]: {clip(message, MAX_ERROR_CHARS)}"
