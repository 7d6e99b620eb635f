"""msgpack with numpy arrays, wire-compatible with openpi's `openpi_client.msgpack_numpy`.

Wire format (one msgpack object per websocket binary frame):
  np.ndarray -> map {b"__ndarray__": True, b"data": <C-order bytes>, b"dtype": "<f4", b"shape": [..]}
  np.generic -> map {b"__npgeneric__": True, b"data": <python scalar>, b"dtype": "<f8"}
The marker keys are msgpack *bin* (Python bytes), not str: that is what openpi's packer emits and
what its decoder looks for. Object, void and complex dtypes are refused on both sides (object
arrays would need pickle, which is never acceptable on a network socket).

Unlike openpi's decoder, ours checks every array header (dtype string, shape, byte count) and
raises `WireFormatError` naming the problem, so a server can answer a malformed request with a
readable error instead of a numpy traceback. Decoded arrays view the message buffer and are
read-only, as in openpi; copy before mutating in place.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

_NDARRAY = b"__ndarray__"
_NPGENERIC = b"__npgeneric__"
_REFUSED_KINDS = ("V", "O", "c")
# A header may not describe more than this many elements; the byte-count check catches real
# mismatches, this only keeps `math.prod` on hostile shapes cheap.
_MAX_NDIM = 32


class WireFormatError(ValueError):
    """A frame that is not valid openpi msgpack-numpy."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        if obj.dtype.kind in _REFUSED_KINDS:
            raise WireFormatError(
                f"cannot send an array of dtype {obj.dtype} (object/void/complex dtypes are not "
                "part of the wire format); convert it to a numeric or string dtype first"
            )
        if isinstance(obj, np.ndarray):
            # memoryview of a C-contiguous array packs as msgpack bin without an extra copy.
            data = obj if obj.flags.c_contiguous else obj.copy(order="C")
            return {
                _NDARRAY: True,
                b"data": memoryview(data.reshape(-1)).cast("B") if data.size else b"",
                b"dtype": data.dtype.str,
                b"shape": list(data.shape),
            }
        return {_NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    # jax.Array and other array-likes: convert through numpy rather than failing.
    if hasattr(obj, "__array__") and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        return _encode(np.asarray(obj))
    raise TypeError(f"cannot serialise object of type {type(obj).__name__}")


def _parse_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str):
        raise WireFormatError(
            f"array dtype must be a string such as '<f4', got {type(raw).__name__}"
        )
    try:
        dtype = np.dtype(raw)
    except TypeError as e:
        raise WireFormatError(f"unknown array dtype {raw!r}") from e
    if dtype.kind in _REFUSED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireFormatError(f"array dtype {raw!r} is not allowed (object/void/complex)")
    return dtype


def _decode(obj: dict) -> Any:
    if _NDARRAY in obj:
        dtype = _parse_dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, list | tuple) or len(shape) > _MAX_NDIM:
            raise WireFormatError(f"array shape must be a list of at most {_MAX_NDIM} ints")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise WireFormatError(f"array shape must hold non-negative ints, got {shape!r}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise WireFormatError("array data must be msgpack bin (bytes)")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise WireFormatError(
                f"array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} bytes, "
                f"the frame carries {len(data)}"
            )
        return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))
    if _NPGENERIC in obj:
        dtype = _parse_dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise WireFormatError(f"bad numpy scalar of dtype {dtype.str}: {e}") from None
    return obj


def packb(obj: Any) -> bytes:
    """Serialise nested dicts/lists of numpy arrays, scalars, str, bytes, numbers."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Inverse of `packb`; raises `WireFormatError` for anything that is not a valid frame."""
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireFormatError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise WireFormatError(f"not a single valid msgpack object ({type(e).__name__})") from None
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise WireFormatError(f"not valid msgpack: {e}") from None
