"""Websocket policy server (openpi wire protocol + steering noise) and its msgpack-numpy codec."""

from dsrl.serving.msgpack_numpy import WireFormatError, packb, unpackb
from dsrl.serving.server import API_KEY_ENV, PolicyServer, RequestError

__all__ = ["API_KEY_ENV", "PolicyServer", "RequestError", "WireFormatError", "packb", "unpackb"]
