"""Frame -> request: the msgpack-numpy decode under the server's frame limits, and the envelope
forms of the protocol (`dsrl.serving.protocol`). Runs in the decode thread pool, never on the
event loop."""

from __future__ import annotations

import dataclasses
from typing import Any

from dsrl.serving import msgpack_numpy
from dsrl.serving.protocol import ENVELOPE_KEYS, METHODS, RequestError
from dsrl.serving.validation import check_tree, finite_check

# The server flag to raise when a FrameLimits bound refuses a legitimate request.
LIMIT_FLAGS = {
    "too_many_items": "--max_items",
    "too_deep": "--max_depth",
    "too_large": "--max_str_kb",
}


@dataclasses.dataclass
class Request:
    method: str
    obs: dict[str, Any]
    noise: Any
    want_feature: bool


def too_large(size: int, max_request_bytes: int) -> RequestError:
    return RequestError(
        "too_large",
        f"request of {size} bytes exceeds max_request_bytes={max_request_bytes}; send "
        "smaller images or raise --max_request_mb",
    )


def parse_request(message: bytes | str, limits: msgpack_numpy.FrameLimits) -> Request:
    """Frame -> request. Raises RequestError."""
    if isinstance(message, str):
        raise RequestError(
            "bad_frame", "expected a binary msgpack frame, got a text frame; send bytes"
        )
    if len(message) > limits.max_bytes:
        raise too_large(len(message), limits.max_bytes)
    try:
        request = msgpack_numpy.unpackb(message, limits)
    except msgpack_numpy.FrameLimitError as e:
        flag = LIMIT_FLAGS.get(e.kind, "")
        raise RequestError(e.kind, f"{e} (server limit: {flag})") from None
    except msgpack_numpy.WireFormatError as e:
        raise RequestError("bad_msgpack", f"request is not openpi msgpack-numpy: {e}") from None
    if not isinstance(request, dict):
        raise RequestError(
            "bad_request", f"request must be a msgpack map, got {type(request).__name__}"
        )
    is_envelope = "method" in request or (
        "obs" in request and isinstance(request["obs"], dict) and set(request) <= ENVELOPE_KEYS
    )
    if is_envelope:
        method, obs, noise, want_feature = _open_envelope(request)
    else:
        method, obs, noise, want_feature = "infer", dict(request), None, False
    # Keys reserved by the protocol are popped before the observation reaches the policy.
    if "noise" in obs:
        noise = obs.pop("noise") if noise is None else noise
        obs.pop("noise", None)
    want_feature = bool(obs.pop("return_prefix_feature", want_feature))
    check_tree(obs)
    if noise is not None:
        finite_check("noise", noise)
    return Request(method, obs, noise, want_feature)


def _open_envelope(request: dict[str, Any]) -> tuple[str, dict[str, Any], Any, bool]:
    method = request.get("method", "infer")
    if method == "get_prefix_rep":
        raise RequestError(
            "bad_method",
            "get_prefix_rep (hidden states + KV cache, ~30 MB per call) is not served; "
            "use method 'get_prefix_feature' for a (width,) feature pooled over valid "
            "prefix tokens",
        )
    if method not in METHODS:
        raise RequestError("bad_method", f"unknown method {method!r}; use one of {list(METHODS)}")
    obs = request.get("obs")
    if not isinstance(obs, dict):
        raise RequestError("missing_key", "envelope needs an 'obs' map")
    return method, dict(obs), request.get("noise"), bool(request.get("return_prefix_feature"))
