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

`unpackb(data, limits=FrameLimits(...))` (what the server uses) first walks the frame's msgpack
headers without building any object and refuses, with `FrameLimitError`, a frame whose declared
containers hold more than `max_items` elements in total, nest deeper than `max_depth`, or carry a
str/bin longer than allowed. msgpack's own defaults are sized by the frame (a 60 MB frame may
declare 60M nils, i.e. ~1 GB of Python objects), so without this walk a small hostile frame costs
a lot of memory and seconds of decoding.
"""

from __future__ import annotations

import dataclasses
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


class FrameLimitError(WireFormatError):
    """A well-formed frame over one of `FrameLimits`; `kind` names the limit."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class FrameLimits:
    """Bounds on one decoded frame. The defaults fit a batch of real Pi0 observations (three
    224x224x3 uint8 images, state and prompt per element: ~12 items per array, one bin each).

    max_bytes: whole frame; also the largest bin (an image batch is one bin).
    max_items: array elements + map keys + map values, summed over every container.
    max_depth: container nesting (an envelope with an "images" dict of arrays is 5 deep).
    max_str_bytes: one str (prompts, keys, dtype strings).
    """

    max_bytes: int = 16 * 1024 * 1024
    max_items: int = 100_000
    max_depth: int = 16
    max_str_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"FrameLimits.{field.name} must be a positive int, got {value!r}")


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


# msgpack type bytes -> (size of the length field, kind) for variable-length types; see the spec at
# github.com/msgpack/msgpack/blob/master/spec.md ("formats").
_SIZED = {
    0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"),
    0xC7: (1, "ext"), 0xC8: (2, "ext"), 0xC9: (4, "ext"),
    0xD9: (1, "str"), 0xDA: (2, "str"), 0xDB: (4, "str"),
    0xDC: (2, "array"), 0xDD: (4, "array"),
    0xDE: (2, "map"), 0xDF: (4, "map"),
}  # fmt: skip
# Fixed-size scalars: type byte -> bytes that follow it.
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8,
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,
}  # fmt: skip


def check_frame(data: bytes | bytearray | memoryview, limits: FrameLimits) -> None:
    """Walk the msgpack headers of `data` (no objects are built) and raise `FrameLimitError`
    when it exceeds `limits`, or `WireFormatError` when it is truncated or uses msgpack ext
    types (not part of openpi's format). Cost: O(number of containers and scalars) up to
    `max_items`, independent of what the headers claim."""
    if len(data) > limits.max_bytes:
        raise FrameLimitError(
            "too_large", f"frame of {len(data)} bytes exceeds max_bytes={limits.max_bytes}"
        )
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    end = len(view)
    pos = 0
    items = 0
    # Children still to read in each open container; the bottom entry is the one top-level object.
    pending = [1]
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            raise WireFormatError("frame is truncated: a msgpack object is cut off")
        byte = view[pos]
        pos += 1
        if byte <= 0x7F or byte >= 0xE0:  # positive / negative fixint
            continue
        if byte <= 0x8F:  # fixmap
            kind, length = "map", byte & 0x0F
        elif byte <= 0x9F:  # fixarray
            kind, length = "array", byte & 0x0F
        elif byte <= 0xBF:  # fixstr
            kind, length = "str", byte & 0x1F
        elif byte in _FIXED:
            pos += _FIXED[byte]
            continue
        elif byte in _SIZED:
            size, kind = _SIZED[byte]
            if pos + size > end:
                raise WireFormatError("frame is truncated inside a msgpack header")
            length = int.from_bytes(view[pos : pos + size], "big")
            pos += size
        elif 0xD4 <= byte <= 0xD8:
            kind, length = "ext", 0
        else:  # 0xC1 is never used
            raise WireFormatError(f"byte 0x{byte:02x} at offset {pos - 1} is not valid msgpack")
        if kind == "ext":
            raise WireFormatError(
                "msgpack ext types are not part of the openpi wire format; send maps, arrays, "
                "str, bin and numbers"
            )
        if kind == "str" or kind == "bin":
            if kind == "str" and length > limits.max_str_bytes:
                raise FrameLimitError(
                    "too_large",
                    f"a string of {length} bytes exceeds max_str_bytes={limits.max_str_bytes}; "
                    "send long data as a numpy array (bin), not as a string",
                )
            pos += length
            continue
        children = 2 * length if kind == "map" else length
        items += children
        if items > limits.max_items:
            raise FrameLimitError(
                "too_many_items",
                f"frame declares more than max_items={limits.max_items} array elements and map "
                f"entries in total (the {kind} that crossed it holds {length}); send data as "
                "numpy arrays, which are one item each, not as msgpack lists",
            )
        if children > end - pos:  # every child takes at least one byte
            raise WireFormatError(f"frame is truncated: a {kind} of {length} cannot fit in it")
        if children:
            if len(pending) > limits.max_depth:
                raise FrameLimitError(
                    "too_deep",
                    f"frame nests containers more than max_depth={limits.max_depth} deep; send "
                    "a flat observation dict of arrays",
                )
            pending.append(children)
    if pos > end:
        raise WireFormatError("frame is truncated: a msgpack value is cut off")
    if pos < end:
        raise WireFormatError(
            f"not a single valid msgpack object ({end - pos} bytes after the first object)"
        )


def packb(obj: Any) -> bytes:
    """Serialise nested dicts/lists of numpy arrays, scalars, str, bytes, numbers."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes | bytearray | memoryview, limits: FrameLimits | None = None) -> Any:
    """Inverse of `packb`; raises `WireFormatError` for anything that is not a valid frame.
    With `limits`, the frame is checked by `check_frame` before anything is decoded."""
    bounds: dict[str, int] = {}
    if limits is not None:
        check_frame(data, limits)
        # Redundant after check_frame; kept so msgpack itself never allocates past the limits.
        bounds = dict(
            max_str_len=limits.max_str_bytes,
            max_bin_len=limits.max_bytes,
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
            max_ext_len=0,
        )
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False, **bounds)
    except WireFormatError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise WireFormatError(f"not a single valid msgpack object ({type(e).__name__})") from None
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise WireFormatError(f"not valid msgpack: {e}") from None
