"""Websocket policy server (openpi wire protocol + steering noise) and its msgpack-numpy codec.

`PolicyServer` is imported on first use, so a client importing `dsrl.serving.protocol` does not
load the server (websockets' server side, thread pools, JAX's compile listener)."""

from typing import Any

from dsrl.serving.msgpack_numpy import WireFormatError, packb, unpackb
from dsrl.serving.protocol import API_KEY_ENV, RequestError

__all__ = ["API_KEY_ENV", "PolicyServer", "RequestError", "WireFormatError", "packb", "unpackb"]


def __getattr__(name: str) -> Any:
    if name == "PolicyServer":
        from dsrl.serving.server import PolicyServer

        return PolicyServer
    raise AttributeError(f"module 'dsrl.serving' has no attribute {name!r}")
