"""Websocket policy server speaking openpi's wire protocol, plus steering noise.

Protocol (what the unmodified PyPI `openpi_client.WebsocketClientPolicy` expects):
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
    (B, H, A): one batched `sample_actions` call (what `RemotePolicy` uses). B is at most
    `max_batch`; the batch is padded (last element repeated) to the next of `batch_sizes`, the
    sizes compiled at start-up, so serving never compiles;
  * `{"method": "get_prefix_feature", "obs": {...}}` or `"return_prefix_feature": True` on an
    infer request -> `"prefix_feature"`: f32 (width,), the policy's prefix (image + prompt)
    hidden state averaged over VALID tokens (the reference used the last, usually padded, slot).

Errors differ from openpi on purpose (openpi issue #1039): a bad request gets a TEXT frame
`"dsrl-server error [<kind>]: <what is wrong and how to fix it>"` (no traceback; the upstream
client raises RuntimeError with this text), and the connection stays open for the next request.
NaN/inf inputs are refused (`bad_value`), and so are NaN/inf outputs (`non_finite_output`: finite
but absurd inputs such as a state of 3e38 overflow inside the policy).

Staying responsive under abuse (issue 16): the event loop only moves bytes, a chunk at a time
(`_FrameReader`: payloads filled in place, frames over the limit dropped as they arrive). Frames
are decoded and validated in a decode thread pool, under `FrameLimits` checked before any object
is built (total bytes, items over all lists/maps, nesting depth, string length); inference runs in
its own pool (openpi issue #717). The objects that live as long as the server are frozen out of
the cyclic collector. So a hostile frame, a slow inference or a slow client never stalls
`/healthz`, handshakes or other connections. Open connections are capped (HTTP 503 beyond it),
a connection idle for `idle_timeout_s` is closed (1001), one stalled that long partway through a
frame or with its reply unread is dropped, and after a wrong API key the client's
address waits `auth_failure_delay_s` for its 401 and gets 429 on any other attempt until then, so
keys can be tried at most once per delay per address while other addresses are unaffected.

The server binds 127.0.0.1 unless told otherwise; an empty host is refused (asyncio would bind
every IPv4 and IPv6 interface, each on its own port when port=0). It enforces an API key when one
is set (header `Authorization: Api-Key <key>`, as openpi's client sends it, or `?api_key=<key>`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import gc
import hmac
import http
import json
import logging
import socket
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import CloseCode, Frame, Opcode
from websockets.streams import StreamReader

from dsrl.serving import msgpack_numpy

logger = logging.getLogger(__name__)

API_KEY_ENV = "DSRL_SERVER_API_KEY"
# A batch of 16 real Pi0 observations (three 224x224x3 uint8 images each) is 7.3 MB. A frame up
# to this size is still unmasked in one pass on the event loop by websockets (~0.5-1 ms/MB on a
# loaded 2-core box), so this limit also bounds how long one frame can stall /healthz; larger
# frames are dropped as they arrive (`_FrameReader`).
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_AUTH_FAILURE_DELAY_S = 1.0
# Keys of a request envelope; a map with "method" or made of these keys only is an envelope.
_ENVELOPE_KEYS = frozenset({"method", "obs", "noise", "return_prefix_feature"})
_METHODS = ("infer", "infer_batch", "get_prefix_feature")
# Obs keys reserved by the protocol, popped before the observation reaches the policy.
_RESERVED_OBS_KEYS = ("noise", "return_prefix_feature")
# Error text sent to a client, and one log record: a hostile request must not produce a
# megabyte reply or log line (a 4M-key map once produced a 47 MB one).
_MAX_ERROR_CHARS = 600
_MAX_LOG_CHARS = 4000
# The server flag to raise when a FrameLimits bound refuses a legitimate request.
_LIMIT_FLAGS = {
    "too_many_items": "--max_items",
    "too_deep": "--max_depth",
    "too_large": "--max_str_kb",
}
# After frames of this size (or connections) stop coming for _TRIM_AFTER_S, freed memory is handed
# back to the OS. glibc keeps freed frame-sized buffers in its heap for reuse, which keeps large
# frames cheap on the event loop (no fresh pages to fault in), but a burst of them would otherwise
# raise RSS for good.
_LARGE_FRAME_BYTES = 1 << 20
_TRIM_AFTER_S = 2.0
# Kernel accept queue of the listening socket (Linux caps it at net.core.somaxconn).
_KERNEL_BACKLOG = 1024
# Addresses remembered for the API-key delay; beyond this, expired entries are dropped.
_MAX_TRACKED_ADDRESSES = 4096


class RequestError(ValueError):
    """A request the server refuses; `kind` is a short tag, the message says what to fix."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more chars]"


def _error_frame(kind: str, message: str) -> str:
    return f"dsrl-server error [{kind}]: {_clip(message, _MAX_ERROR_CHARS)}"


# ------------------------------------------------------------------------------ compile counting

# Inference threads record which server they belong to, so that a JAX compilation can be charged
# to that server (other servers and the caller's own jit calls in the same process are not).
_thread_owner = threading.local()
_listener_lock = threading.Lock()
_listener_installed = False
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _on_jax_event(event: str, duration: float, **kwargs: Any) -> None:
    if event != _BACKEND_COMPILE_EVENT:
        return
    server = getattr(_thread_owner, "server", None)
    if server is not None:
        server._record_compile(str(kwargs.get("fun_name", "?")), duration)


def _install_compile_listener() -> None:
    global _listener_installed
    with _listener_lock:
        if _listener_installed:
            return
        try:
            import jax.monitoring
        except ImportError:  # a NumPy-only policy compiles nothing
            return
        jax.monitoring.register_event_duration_secs_listener(_on_jax_event)
        _listener_installed = True


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _load_malloc_trim()


# ------------------------------------------------------------------------------ validation


def _is_pi0_style(policy: Any) -> bool:
    return callable(getattr(policy, "infer", None))


def _finite_check(name: str, value: Any) -> None:
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
        if not np.all(np.isfinite(value)):
            raise RequestError("bad_value", f"{name} contains NaN or inf; send finite values")
    elif isinstance(value, float | np.floating) and not np.isfinite(value):
        raise RequestError("bad_value", f"{name} is NaN or inf; send a finite value")


def _check_tree(obs: Mapping[str, Any], prefix: str = "obs") -> None:
    """Keys must be str, float leaves finite, nesting bounded."""
    for key, value in obs.items():
        if not isinstance(key, str):
            raise RequestError(
                "bad_request", f"{prefix} has a non-string key {key!r}; use str keys"
            )
        name = f"{prefix}[{key!r}]"
        if isinstance(value, Mapping):
            if name.count("[") > 8:
                raise RequestError("bad_request", f"{name}: observation nested too deeply")
            _check_tree(value, name)
        else:
            _finite_check(name, value)


def _check_spec(obs: Mapping[str, Any], spec: Mapping[str, tuple[Any, Any]], batch: int | None):
    """Validate required keys, shapes (None = any size) and dtypes of one observation."""
    missing = [k for k in spec if k not in obs]
    if missing:
        raise RequestError(
            "missing_key",
            f"observation lacks key(s) {missing}; the served policy needs {sorted(spec)}",
        )
    for key, (shape, dtype) in spec.items():
        value = obs[key]
        if dtype is str:
            ok = isinstance(value, str) if batch is None else isinstance(value, list | np.ndarray)
            if not ok:
                raise RequestError("bad_dtype", f"obs[{key!r}] must be a string")
            continue
        if not isinstance(value, np.ndarray):
            raise RequestError(
                "bad_dtype", f"obs[{key!r}] must be a numpy array, got {type(value).__name__}"
            )
        want = tuple(shape) if batch is None else (batch, *shape)
        if len(want) != value.ndim or any(
            w is not None and w != v for w, v in zip(want, value.shape, strict=True)
        ):
            raise RequestError(
                "bad_shape", f"obs[{key!r}] has shape {value.shape}, expected {want}"
            )
        if dtype is not None and value.dtype != np.dtype(dtype):
            raise RequestError(
                "bad_dtype", f"obs[{key!r}] has dtype {value.dtype}, expected {np.dtype(dtype)}"
            )


def _check_output(reply: Mapping[str, Any], batch: int | None) -> None:
    """NaN/inf actions or features are an error, never a successful reply."""
    for key in ("actions", "prefix_feature"):
        value = reply.get(key)
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            continue
        finite = np.isfinite(value)
        if finite.all():
            continue
        where = ""
        if batch is not None:
            bad = np.flatnonzero(~finite.reshape(batch, -1).all(axis=1))
            where = f" (batch elements {bad[:10].tolist()})"
        raise RequestError(
            "non_finite_output",
            f"the policy returned NaN/inf {key}{where} for finite inputs: some input is out of "
            "range (e.g. a state of 3e38 overflows the policy's normalisation); check the "
            "observation's values and units",
        )


def _batch_sizes(max_batch: int, batch_sizes: Sequence[int] | None) -> tuple[int, ...]:
    """Explicit sizes, or 1, 2, 4, ... up to and including max_batch."""
    if batch_sizes is None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        sizes = {max_batch}
        size = 1
        while size < max_batch:
            sizes.add(size)
            size *= 2
        return tuple(sorted(sizes))
    sizes = sorted(set(batch_sizes))
    if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {list(batch_sizes)!r}")
    if sizes[0] != 1:
        sizes.insert(0, 1)  # single observations (openpi `infer`) are batch 1
    return tuple(sizes)


def _pad_batch(tree: Mapping[str, Any], batch: int, target: int) -> dict[str, Any]:
    """Repeat the last element of every batched leaf until the batch is `target` long: the padded
    rows are valid observations, so the policy computes on sensible values."""
    out: dict[str, Any] = {}
    extra = target - batch
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = _pad_batch(value, batch, target)
        elif isinstance(value, list):
            out[key] = value + [value[-1]] * extra
        elif isinstance(value, np.ndarray):
            out[key] = np.concatenate([value, np.repeat(value[-1:], extra, axis=0)])
        else:
            out[key] = value
    return out


def _tile_batch(obs: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """One unbatched observation -> the same observation `batch` times (warm-up inputs)."""
    return _pad_batch(_add_batch_axis(obs), 1, batch)


class _FrameReader(StreamReader):
    """websockets' byte reader, changed for frame payloads so that the event loop never handles a
    large frame in one go (the stock reader grows one buffer, which glibc may copy on each growth,
    then copies the payload out of it when the last byte arrives: 20-50 ms in one callback for a
    15-30 MB frame on a loaded 2-core box, during which /healthz waits).

    Frame headers are read 2, 2 or 8, and 4 bytes at a time and control frames carry at most 125
    bytes, so any longer read is a data frame's payload:
      * one of up to `keep_bytes` (and at least _LARGE_FRAME_BYTES) is copied into a buffer of its
        final size chunk by chunk as it arrives, and handed over without another copy;
      * one over `keep_bytes` (the request limit; websockets' own max_size still closes the
        connection beyond it) is counted and dropped as it arrives and read as empty, so nothing
        is buffered and the server answers `too_large` on the same connection.
    `empty_payloads` holds, for each frame read with an empty payload and in order, the dropped
    size (0: the frame was empty on the wire), for `_Connection` to pair with those frames."""

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
        if n <= self._MAX_SMALL_READ or (keep and n < _LARGE_FRAME_BYTES):
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
class _Message:
    """What the server needs to know of an incoming message before touching its bytes."""

    text: bool
    dropped_bytes: int = 0


class _Connection(ServerConnection):
    """A websocket connection reading frames with `_FrameReader` and noting, for each incoming
    message, whether it is text and how many of its bytes were dropped. Text frames are never
    valid requests: knowing it lets `recv(decode=False)` be used, as websockets would otherwise
    UTF-8-decode one (up to twice max_request_bytes) on the event loop only to have it refused."""

    def __init__(self, protocol: Any, *args: Any, keep_bytes: int, **kwargs: Any):
        super().__init__(protocol, *args, **kwargs)
        # The protocol's parser has only started (waiting for the handshake's first line): restart
        # it on our reader, as the protocol's own constructor does with the stock one.
        self.reader = _FrameReader(keep_bytes)
        protocol.reader = self.reader
        protocol.parser = protocol.parse()
        next(protocol.parser)
        self.messages: collections.deque[_Message] = collections.deque()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame):
            dropped = 0 if event.data else self.reader.empty_payloads.popleft()
            # The first frame of a message carries its type; continuation frames carry CONT.
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.messages.append(_Message(event.opcode is Opcode.TEXT, dropped))
            elif event.opcode is Opcode.CONT and self.messages:
                self.messages[-1].dropped_bytes += dropped
        super().process_event(event)


@dataclasses.dataclass
class _Request:
    method: str
    obs: dict[str, Any]
    noise: Any
    want_feature: bool


class PolicyServer:
    """Serves one policy over websockets.

    `policy` is either a BasePolicy (`noise_shape`, `action_dim`, batched `sample_actions`) or a
    Pi0Policy-like object that also has `infer(obs, noise) -> {"actions": (H, A), ...}` for one
    unbatched openpi-style observation (used for plain requests) and optionally
    `prefix_feature(obs) -> (B, width)` (batched) for `get_prefix_feature`, and
    `sample_actions_and_prefix_feature(obs, noise) -> ((B, H, A), (B, width))` (batched), used
    for infer requests that also ask for the feature so the prefix is encoded only once.

    Limits (defaults fit batches of real Pi0 observations: three 224x224x3 uint8 images, state
    and prompt per element):
      max_request_bytes: larger frames get a `too_large` error (their bytes are dropped as they
        arrive, never buffered); frames over twice this close the connection (1009).
      max_items, max_depth, max_str_bytes: see `msgpack_numpy.FrameLimits`.
      max_batch / batch_sizes: `infer_batch` accepts up to max_batch observations and pads each
        batch to the next of batch_sizes (default 1, 2, 4, ... max_batch).
      warmup_observation: ONE unbatched observation; before the port is bound, every batch size
        and method is run on it so that JAX compiles everything then, not while serving
        (`stats["compiles_while_serving"]` counts any compilation after that). Without it,
        each batch size compiles on first use.
      max_connections: open websocket connections; more get HTTP 503.
      idle_timeout_s: a connection without a request for this long is closed (0 = never).
      open_timeout_s: a TCP connection must finish its websocket handshake within this.
      auth_failure_delay_s: a wrong API key is answered (401) after this delay, and the same
        client address gets 429 without its key being checked until then.

    Use `serve_forever()` from a script, or `with server.running():` (a background thread) in
    tests and benchmarks; `server.port` is the bound port (pass port=0 for an ephemeral one).
    """

    def __init__(
        self,
        policy: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        observation_spec: Mapping[str, tuple[Any, Any]] | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_items: int = msgpack_numpy.FrameLimits.max_items,
        max_depth: int = msgpack_numpy.FrameLimits.max_depth,
        max_str_bytes: int = msgpack_numpy.FrameLimits.max_str_bytes,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_sizes: Sequence[int] | None = None,
        warmup_observation: Mapping[str, Any] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        open_timeout_s: float = 10.0,
        auth_failure_delay_s: float = DEFAULT_AUTH_FAILURE_DELAY_S,
        num_workers: int = 1,
        decode_workers: int = 2,
        seed: int = 0,
    ):
        for attr in ("noise_shape", "action_dim"):
            if not hasattr(policy, attr):
                raise TypeError(
                    f"{type(policy).__name__} has no `{attr}`: the server serves objects "
                    "implementing dsrl.base_policies.base.BasePolicy"
                )
        if host is None or (isinstance(host, str) and not host.strip()):
            raise ValueError(
                f"host {host!r} is ambiguous: asyncio would bind every IPv4 and IPv6 interface "
                "(each on its own port when port=0). Pass host='127.0.0.1' for this machine "
                "only, or '0.0.0.0' for every IPv4 interface (then set an API key)"
            )
        if max_request_bytes <= 0 or num_workers <= 0 or decode_workers <= 0:
            raise ValueError("max_request_bytes, num_workers and decode_workers must be positive")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if idle_timeout_s < 0 or open_timeout_s <= 0 or auth_failure_delay_s < 0:
            raise ValueError(
                "idle_timeout_s and auth_failure_delay_s must be >= 0 and open_timeout_s > 0"
            )
        if auth_failure_delay_s >= open_timeout_s:
            raise ValueError(
                f"auth_failure_delay_s={auth_failure_delay_s} must be below open_timeout_s="
                f"{open_timeout_s}: the delayed 401 is part of the handshake"
            )
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.noise_shape = tuple(int(d) for d in policy.noise_shape)
        self.action_dim = int(policy.action_dim)
        self.max_request_bytes = int(max_request_bytes)
        self.frame_limits = msgpack_numpy.FrameLimits(
            max_bytes=self.max_request_bytes,
            max_items=max_items,
            max_depth=max_depth,
            max_str_bytes=max_str_bytes,
        )
        self.batch_sizes = _batch_sizes(max_batch, batch_sizes)
        self.max_batch = self.batch_sizes[-1]
        self.warmup_observation = dict(warmup_observation) if warmup_observation else None
        self.max_connections = int(max_connections)
        self.idle_timeout_s = float(idle_timeout_s)
        self.open_timeout_s = float(open_timeout_s)
        self.auth_failure_delay_s = float(auth_failure_delay_s)
        if observation_spec is None:
            observation_spec = getattr(policy, "observation_spec", None)
        self.observation_spec = dict(observation_spec) if observation_spec else None
        self.metadata = {
            **dict(getattr(policy, "metadata", None) or {}),
            **dict(metadata or {}),
            "policy": type(policy).__name__,
            "noise_shape": list(self.noise_shape),
            "action_dim": self.action_dim,
            "methods": list(_METHODS),
            "max_request_bytes": self.max_request_bytes,
            "max_batch": self.max_batch,
            "batch_sizes": list(self.batch_sizes),
            "server": "dsrl",
        }
        self._packed_metadata = msgpack_numpy.packb(self.metadata)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_workers,
            thread_name_prefix="policy-infer",
            initializer=self._claim_thread,
        )
        self._decode_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=decode_workers, thread_name_prefix="policy-decode"
        )
        # Default noise (requests without "noise") comes from one seeded stream.
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._warm = False
        self._open_connections = 0
        self._auth_penalty_until: dict[str, float] = {}
        self._last_memory_event = 0.0
        self._trim_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.stats: dict[str, Any] = {
            "requests": 0,
            "errors": 0,
            "connections": 0,
            "open_connections": 0,
            "refused_connections": 0,
            "idle_closed": 0,
            "stalled_closed": 0,
            "auth_failures": 0,
            "auth_throttled": 0,
            "compiles_at_startup": 0,
            "compiles_while_serving": 0,
            "warmup_s": 0.0,
        }
        _install_compile_listener()

    # ----------------------------------------------------------------------------- compiles

    def _claim_thread(self) -> None:
        _thread_owner.server = self

    def _record_compile(self, fun_name: str, duration: float) -> None:
        with self._stats_lock:
            if self._warm:
                self.stats["compiles_while_serving"] += 1
            else:
                self.stats["compiles_at_startup"] += 1
        if self._warm:
            logger.warning(
                "compiled %s while serving (%.2f s): a request used a shape not compiled at "
                "start-up (pass warmup_observation / check --batch_sizes)",
                fun_name,
                duration,
            )

    def _warmup(self) -> None:
        """Run every batch size and method once on the warm-up observation (inference thread)."""
        example = self.warmup_observation
        if example is None:
            logger.warning("no warm-up observation: each batch size compiles on its first request")
            self._warm = True
            return
        t0 = time.perf_counter()
        has_feature = any(
            callable(getattr(self.policy, name, None))
            for name in ("prefix_feature", "sample_actions_and_prefix_feature")
        )
        rng = np.random.default_rng(0)  # not the serving stream: warm-up must not shift it
        try:
            for batch in self.batch_sizes:
                obs = _tile_batch(example, batch)
                noise = rng.standard_normal((batch, *self.noise_shape), dtype=np.float32)
                self._run(_Request("infer_batch", obs, noise, False))
                if has_feature:
                    self._run(_Request("infer_batch", obs, noise, True))
            noise = rng.standard_normal(self.noise_shape, dtype=np.float32)
            self._run(_Request("infer", dict(example), noise, False))
            if _is_pi0_style(self.policy):  # draws its own noise: a path of its own to compile
                self._run(_Request("infer", dict(example), None, False))
            if has_feature:
                self._run(_Request("infer", dict(example), noise, True))
                self._run(_Request("get_prefix_feature", dict(example), None, False))
        except Exception as e:
            raise RuntimeError(
                f"warm-up on the example observation failed ({type(e).__name__}: "
                f"{_clip(str(e), _MAX_ERROR_CHARS)}); the observation must be one the policy "
                "accepts, unbatched"
            ) from e
        self.stats["warmup_s"] = round(time.perf_counter() - t0, 3)
        self._warm = True
        logger.info(
            "warm-up: batch sizes %s compiled in %.1f s (%d compilations)",
            list(self.batch_sizes),
            self.stats["warmup_s"],
            self.stats["compiles_at_startup"],
        )

    # ----------------------------------------------------------------------------- requests

    def _parse(self, message: bytes | str) -> _Request:
        """Frame -> request (decode thread). Raises RequestError."""
        if isinstance(message, str):
            raise RequestError(
                "bad_frame", "expected a binary msgpack frame, got a text frame; send bytes"
            )
        if len(message) > self.max_request_bytes:
            raise self._too_large(len(message))
        try:
            request = msgpack_numpy.unpackb(message, self.frame_limits)
        except msgpack_numpy.FrameLimitError as e:
            flag = _LIMIT_FLAGS.get(e.kind, "")
            raise RequestError(e.kind, f"{e} (server limit: {flag})") from None
        except msgpack_numpy.WireFormatError as e:
            raise RequestError("bad_msgpack", f"request is not openpi msgpack-numpy: {e}") from None
        if not isinstance(request, dict):
            raise RequestError(
                "bad_request", f"request must be a msgpack map, got {type(request).__name__}"
            )
        is_envelope = "method" in request or (
            "obs" in request and isinstance(request["obs"], dict) and set(request) <= _ENVELOPE_KEYS
        )
        if is_envelope:
            method = request.get("method", "infer")
            if method == "get_prefix_rep":
                raise RequestError(
                    "bad_method",
                    "get_prefix_rep (hidden states + KV cache, ~30 MB per call) is not served; "
                    "use method 'get_prefix_feature' for a (width,) feature pooled over valid "
                    "prefix tokens",
                )
            if method not in _METHODS:
                raise RequestError(
                    "bad_method", f"unknown method {method!r}; use one of {list(_METHODS)}"
                )
            obs = request.get("obs")
            if not isinstance(obs, dict):
                raise RequestError("missing_key", "envelope needs an 'obs' map")
            obs = dict(obs)
            noise = request.get("noise")
            want_feature = bool(request.get("return_prefix_feature", False))
        else:
            method, obs, noise, want_feature = "infer", dict(request), None, False
        if "noise" in obs:
            noise = obs.pop("noise") if noise is None else noise
            obs.pop("noise", None)
        want_feature = bool(obs.pop("return_prefix_feature", want_feature))
        _check_tree(obs)
        if noise is not None:
            _finite_check("noise", noise)
        return _Request(method, obs, noise, want_feature)

    def _too_large(self, size: int) -> RequestError:
        return RequestError(
            "too_large",
            f"request of {size} bytes exceeds max_request_bytes={self.max_request_bytes}; send "
            "smaller images or raise --max_request_mb",
        )

    def _decode(self, message: bytes | str) -> _Request | str:
        """Decode thread: the parsed request, or the error frame to send back."""
        try:
            return self._parse(message)
        except RequestError as e:
            return _error_frame(e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - a decoder bug must not kill the connection
            self._log_failure("decoding a request failed", e)
            return _error_frame("bad_request", f"{type(e).__name__}: {e}")

    def _check_noise(self, noise: Any, batch: int | None) -> np.ndarray:
        horizon, dim = self.noise_shape
        if not isinstance(noise, np.ndarray):
            raise RequestError(
                "bad_dtype", f"noise must be a numpy float array, got {type(noise).__name__}"
            )
        if noise.dtype.kind != "f":
            raise RequestError(
                "bad_dtype", f"noise has dtype {noise.dtype}; send float32 (float64 is accepted)"
            )
        if batch is None:
            ok = noise.shape in ((horizon, dim), (1, horizon, dim))
            want = f"({horizon}, {dim}) or (1, {horizon}, {dim})"
        else:
            ok = noise.shape == (batch, horizon, dim)
            want = f"({batch}, {horizon}, {dim}) (batch, *noise_shape)"
        if not ok:
            raise RequestError(
                "bad_shape", f"noise has shape {noise.shape}, expected {want} for this policy"
            )
        _finite_check("noise", noise)
        with np.errstate(over="ignore"):  # float64 beyond float32's range: refused just below
            noise = noise.reshape(-1, horizon, dim).astype(np.float32)
        if not np.all(np.isfinite(noise)):
            raise RequestError("bad_value", "noise overflows float32; send values within float32")
        return noise

    def _default_noise(self, batch: int) -> np.ndarray:
        with self._rng_lock:
            return self._rng.standard_normal((batch, *self.noise_shape), dtype=np.float32)

    def _batch_size(self, obs: Mapping[str, Any]) -> int:
        sizes = set()
        for key, value in obs.items():
            if isinstance(value, np.ndarray) and value.ndim:
                sizes.add(value.shape[0])
            elif isinstance(value, list):
                sizes.add(len(value))
            elif isinstance(value, dict):
                sizes.add(self._batch_size(value))
            else:
                raise RequestError(
                    "bad_shape",
                    f"infer_batch: obs[{key!r}] has no leading batch axis; send arrays (B, ...) "
                    "and lists of B strings",
                )
        if len(sizes) != 1:
            raise RequestError(
                "bad_shape", f"infer_batch: leaves disagree on the batch size ({sorted(sizes)})"
            )
        return sizes.pop()

    def _run(self, request: _Request) -> dict[str, Any]:
        """Inference thread: validation that needs no I/O, then the policy call."""
        method, obs, noise, want_feature = (
            request.method,
            request.obs,
            request.noise,
            request.want_feature,
        )
        if method == "infer_batch":
            return self._run_batch(obs, noise, want_feature)
        policy = self.policy
        out: dict[str, Any] = {}
        if self.observation_spec:
            _check_spec(obs, self.observation_spec, None)
        if method == "get_prefix_feature":
            return {"prefix_feature": self._prefix_feature(obs, batched=False)}
        noise = self._check_noise(noise, None) if noise is not None else None
        combined = self._combined(want_feature)
        if combined is not None:
            actions, feature = combined(
                _add_batch_axis(obs), noise if noise is not None else self._default_noise(1)
            )
            out["actions"] = np.asarray(actions, np.float32)[0]
            out["prefix_feature"] = np.asarray(feature, np.float32)[0]
            return out
        if _is_pi0_style(policy):
            result = policy.infer(obs, noise)
            out.update({k: v for k, v in dict(result).items() if k != "server_timing"})
        else:
            if noise is None:
                noise = self._default_noise(1)
            batched = _add_batch_axis(obs)
            out["actions"] = np.asarray(policy.sample_actions(batched, noise), np.float32)[0]
        if want_feature:
            out["prefix_feature"] = self._prefix_feature(obs, batched=False)
        return out

    def _run_batch(self, obs: dict, noise: Any, want_feature: bool) -> dict[str, Any]:
        batch = self._batch_size(obs)
        if batch < 1:
            raise RequestError("bad_shape", "infer_batch needs at least one observation")
        if batch > self.max_batch:
            raise RequestError(
                "batch_too_large",
                f"infer_batch of {batch} observations exceeds max_batch={self.max_batch}; split "
                f"it into requests of at most {self.max_batch} (or restart the server with "
                f"--max_batch {batch})",
            )
        if self.observation_spec:
            _check_spec(obs, self.observation_spec, batch)
        if noise is None:
            raise RequestError("missing_key", "infer_batch needs 'noise' (B, H, D)")
        noise = self._check_noise(noise, batch)
        # Pad to a compiled size: a new batch size would recompile (seconds) while others wait.
        padded = next(b for b in self.batch_sizes if b >= batch)
        if padded != batch:
            obs = _pad_batch(obs, batch, padded)
            noise = np.concatenate([noise, np.repeat(noise[-1:], padded - batch, axis=0)])
        combined = self._combined(want_feature)
        if combined is not None:
            actions, feature = combined(obs, noise)
            return {
                "actions": np.asarray(actions, np.float32)[:batch],
                "prefix_feature": np.asarray(feature, np.float32)[:batch],
            }
        out = {"actions": np.asarray(self.policy.sample_actions(obs, noise), np.float32)[:batch]}
        if want_feature:
            out["prefix_feature"] = self._prefix_feature(obs, batched=True)[:batch]
        return out

    def _combined(self, want_feature: bool) -> Callable | None:
        """The policy's one-prefix-pass actions+feature call, when a feature is wanted."""
        if not want_feature:
            return None
        return getattr(self.policy, "sample_actions_and_prefix_feature", None)

    def _prefix_feature(self, obs: dict, *, batched: bool) -> np.ndarray:
        fn: Callable | None = getattr(self.policy, "prefix_feature", None)
        if fn is None:
            raise RequestError(
                "unsupported",
                f"the served policy ({type(self.policy).__name__}) has no prefix feature; only "
                "Pi0 policies expose one",
            )
        feature = np.asarray(fn(obs if batched else _add_batch_axis(obs)), np.float32)
        return feature if batched else feature[0]

    def _serve(self, request: _Request, start: float, prev_total_ms: float | None) -> bytes | str:
        """Inference thread: run one decoded request; the reply frame or the error frame."""
        try:
            reply = self._run(request)
            _check_output(reply, None if request.method != "infer_batch" else len(reply["actions"]))
        except RequestError as e:
            return _error_frame(e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - any policy failure becomes a reply
            self._log_failure("inference failed", e)
            return _error_frame("inference_failed", f"{type(e).__name__}: {e}")
        timing = {"infer_ms": (time.perf_counter() - start) * 1000.0}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        reply["server_timing"] = timing
        return msgpack_numpy.packb(reply)

    def _log_failure(self, what: str, error: BaseException) -> None:
        # The message is clipped before it is formatted into the record; the frames are source
        # lines only, so the record stays small whatever the request held.
        frames = "".join(traceback.format_tb(error.__traceback__))
        message = _clip(f"{type(error).__name__}: {error}", _MAX_ERROR_CHARS)
        logger.error("%s", _clip(f"{what}: {message}\n{frames}", _MAX_LOG_CHARS))

    # ----------------------------------------------------------------------------- websocket

    def stats_snapshot(self) -> dict[str, Any]:
        with self._stats_lock:
            return {**self.stats, "open_connections": self._open_connections}

    def _given_key(self, request: Any, parsed: urllib.parse.SplitResult) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Api-Key "):
            return header[len("Api-Key ") :]
        return urllib.parse.parse_qs(parsed.query).get("api_key", [None])[0]

    async def _check_api_key(self, connection: ServerConnection, request: Any, parsed) -> Any:
        """None if the key is right; else a 401 (after the delay) or a 429 response."""
        if self.api_key is None:
            return None
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        now = time.monotonic()
        until = self._auth_penalty_until.get(address, 0.0)
        if now < until:
            # Not checked at all: a guess made during the penalty learns nothing.
            self.stats["auth_throttled"] += 1
            return connection.respond(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed API-key attempts from {address}: retry in {until - now:.1f} s\n",
            )
        given = self._given_key(request, parsed)
        if given is not None and hmac.compare_digest(given.encode(), self.api_key.encode()):
            return None
        self.stats["auth_failures"] += 1
        if len(self._auth_penalty_until) >= _MAX_TRACKED_ADDRESSES:
            self._auth_penalty_until = {
                a: t for a, t in self._auth_penalty_until.items() if t > now
            }
        self._auth_penalty_until[address] = now + self.auth_failure_delay_s
        if self.auth_failure_delay_s:
            await asyncio.sleep(self.auth_failure_delay_s)  # only this handshake waits
        return connection.respond(
            http.HTTPStatus.UNAUTHORIZED,
            "missing or wrong API key: send header 'Authorization: Api-Key <key>' or "
            "query '?api_key=<key>'\n",
        )

    async def _process_request(self, connection: ServerConnection, request: Any):
        parsed = urllib.parse.urlsplit(request.path)
        if parsed.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        denied = await self._check_api_key(connection, request, parsed)
        if denied is not None:
            return denied
        if parsed.path == "/stats":
            return connection.respond(http.HTTPStatus.OK, json.dumps(self.stats_snapshot()) + "\n")
        if self._open_connections >= self.max_connections:
            self.stats["refused_connections"] += 1
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"server at its connection cap ({self.max_connections} open connections): close "
                "idle clients, retry later, or raise --max_connections\n",
            )
        return None

    async def _handler(self, ws: _Connection) -> None:
        self._open_connections += 1
        try:
            if self._open_connections > self.max_connections:
                # Several handshakes passed the cap check at once; the late ones leave.
                self.stats["refused_connections"] += 1
                await ws.close(CloseCode.TRY_AGAIN_LATER, "connection cap reached; retry later")
                return
            self.stats["connections"] += 1
            await self._serve_connection(ws)
        finally:
            self._open_connections -= 1
            # Connection state is freed now: after a flood, hand the memory back once it is over.
            self._schedule_trim(asyncio.get_running_loop())

    async def _serve_connection(self, ws: _Connection) -> None:
        loop = asyncio.get_running_loop()
        idle_timeout = self.idle_timeout_s or None
        await ws.send(self._packed_metadata)
        prev_total_ms: float | None = None
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    message = await ws.recv(decode=False)
            except TimeoutError:
                if ws.reader.mid_frame:
                    # Stalled partway through a frame: its close frame could only arrive as more
                    # payload, so a closing handshake cannot succeed. Drop the connection and the
                    # part-frame buffered for it now.
                    self.stats["stalled_closed"] += 1
                    ws.transport.abort()
                    return
                self.stats["idle_closed"] += 1
                await ws.close(
                    CloseCode.GOING_AWAY,
                    f"no request for {self.idle_timeout_s:g} s (idle timeout); reconnect",
                )
                return
            except websockets.ConnectionClosed:
                return
            start = time.perf_counter()
            if len(message) > _LARGE_FRAME_BYTES:
                self._schedule_trim(loop)
            info = ws.messages.popleft()
            if info.dropped_bytes:
                error = self._too_large(len(message) + info.dropped_bytes)
                request: _Request | str = _error_frame(error.kind, str(error))
            elif info.text:
                request = _error_frame(
                    "bad_frame", "expected a binary msgpack frame, got a text frame; send bytes"
                )
            else:
                request = await loop.run_in_executor(self._decode_executor, self._decode, message)
            del message  # the frame may be tens of MB; do not hold it during inference
            if isinstance(request, str):
                frame: bytes | str = request
            else:
                frame = await loop.run_in_executor(
                    self._executor, self._serve, request, start, prev_total_ms
                )
                del request
            if isinstance(frame, str):
                self.stats["errors"] += 1
            else:
                self.stats["requests"] += 1
            try:
                async with asyncio.timeout(idle_timeout):
                    await ws.send(frame)
            except websockets.ConnectionClosed:
                return
            except TimeoutError:
                # The client stopped reading: a close frame would queue behind the unread reply,
                # so drop the connection (and the reply buffered for it) at once.
                self.stats["stalled_closed"] += 1
                ws.transport.abort()
                return
            prev_total_ms = (time.perf_counter() - start) * 1000.0

    def _schedule_trim(self, loop: asyncio.AbstractEventLoop) -> None:
        """Trim the heap once large frames and closing connections have stopped for a while."""
        self._last_memory_event = time.monotonic()
        if self._trim_timer is None and _malloc_trim is not None:
            self._trim_timer = loop.call_later(_TRIM_AFTER_S, self._trim_when_quiet, loop)

    def _trim_when_quiet(self, loop: asyncio.AbstractEventLoop) -> None:
        quiet_s = time.monotonic() - self._last_memory_event
        if quiet_s < _TRIM_AFTER_S:
            self._trim_timer = loop.call_later(_TRIM_AFTER_S - quiet_s, self._trim_when_quiet, loop)
            return
        self._trim_timer = None
        with contextlib.suppress(RuntimeError):  # pool already shut down
            self._decode_executor.submit(_malloc_trim, 0)  # ctypes releases the GIL meanwhile

    async def _start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._warmup)
        # What exists now (JAX, the policy, its compiled functions: about a million objects) lives
        # as long as the server. Left to the cyclic collector, every full collection walks it all
        # on whichever thread allocates: 80-110 ms stalls of the event loop during a connection
        # flood. Frozen, collections skip it (`stop()` unfreezes).
        gc.collect()
        gc.freeze()
        sock = _listening_socket(self.host, self.port)
        self._server = await serve(
            self._handler,
            sock=sock,
            create_connection=functools.partial(_Connection, keep_bytes=self.max_request_bytes),
            # asyncio accepts up to `backlog` connections per loop iteration and re-listens with
            # it: keep that batch small so a connection flood leaves the loop turns for /healthz
            # (100 = asyncio's default) ...
            backlog=100,
            compression=None,
            # Frames up to 2x the soft limit are dropped as they arrive and answered with an error;
            # beyond that the connection is closed (1009) at the frame header.
            max_size=2 * self.max_request_bytes,
            # Requests are answered one at a time: buffer at most one more frame per connection,
            # not websockets' default 16 (16 x max_size per connection).
            max_queue=1,
            open_timeout=self.open_timeout_s,
            process_request=self._process_request,
        )
        # ... but a long kernel queue, so that during a flood a health check waits its turn
        # instead of having its SYN dropped (and retried by the client 1 s later).
        sock.listen(_KERNEL_BACKLOG)
        self.port = sock.getsockname()[1]

    async def serve_async(self) -> None:
        await self._start()
        logger.info("serving %s on ws://%s:%d", self.metadata["policy"], self.host, self.port)
        await self._server.serve_forever()

    def serve_forever(self) -> None:
        try:
            asyncio.run(self.serve_async())
        finally:
            self._shutdown_pools()

    def start(self) -> PolicyServer:
        """Warm up, then serve from a background daemon thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as e:  # noqa: BLE001 - reported to the caller
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_until_complete(self._server.serve_forever())

        self._thread = threading.Thread(target=run, name="policy-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        gc.unfreeze()
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._decode_executor.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        """Block until the background server thread ends (after `stop()` or a crash)."""
        if self._thread is not None:
            self._thread.join()

    @contextlib.contextmanager
    def running(self) -> Iterator[PolicyServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def _listening_socket(host: str, port: int) -> socket.socket:
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
        sock.listen(_KERNEL_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _add_batch_axis(obs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, Mapping):
            out[key] = _add_batch_axis(value)
        elif isinstance(value, str):
            out[key] = [value]
        else:
            out[key] = np.asarray(value)[None]
    return out
