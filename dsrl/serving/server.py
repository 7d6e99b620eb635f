"""Websocket policy server speaking openpi's wire protocol (`dsrl.serving.protocol`), plus
steering noise.

This module wires the parts together; each concern lives in its own module:
  * `transport`: the frame reader, the connection class and the listening socket;
  * `decoding`: frame -> request, under the frame limits (decode thread pool);
  * `validation`: checks on values, keys, shapes, dtypes and noise, and on the policy's output;
  * `batching`: compiled batch sizes and padding;
  * `inference`: running a request on the policy (inference thread pool) and the warm-up;
  * `specs`: the keys, shapes and dtypes each served robot must send;
  * `connections`: the open connections and which to evict at the cap;
  * `auth`: the API-key check; `memory`: heap trimming; `compiles`: compile counting.

Staying responsive under abuse (issue 16): the event loop only moves bytes, a chunk at a time.
Frames are decoded and validated in a decode thread pool, under `FrameLimits` checked before any
object is built; inference runs in its own pool (openpi issue #717). The objects that live as
long as the server are frozen out of the cyclic collector. So a hostile frame, a slow inference
or a slow client never stalls `/healthz`, handshakes or other connections. Open connections are
capped (at the cap the longest-idle connection is evicted; HTTP 503 if none is idle), a connection
idle for `idle_timeout_s` is closed (1001), a dead one within three keep-alive ping intervals, one
stalled that long partway through a frame or with its reply unread is dropped. Each request is
checked against the robot's observation spec (`specs`) before inference.

The server binds 127.0.0.1 unless told otherwise; an empty host is refused (asyncio would bind
every IPv4 and IPv6 interface, each on its own port when port=0). It enforces an API key when one
is set (see `auth`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from websockets.asyncio.server import serve

from dsrl.serving import batching, msgpack_numpy, transport
from dsrl.serving.auth import ApiKeyGate
from dsrl.serving.compiles import CompileCounter
from dsrl.serving.connections import ConnectionTable
from dsrl.serving.decoding import Request, parse_request
from dsrl.serving.inference import Inference, log_failure
from dsrl.serving.memory import HeapTrimmer
from dsrl.serving.protocol import API_KEY_ENV, METHODS, RequestError, error_frame
from dsrl.serving.sessions import Sessions
from dsrl.serving.specs import spec_for_policy

__all__ = ["API_KEY_ENV", "PolicyServer", "RequestError"]

logger = logging.getLogger(__name__)

# A batch of 16 real Pi0 observations (three 224x224x3 uint8 images each) is 7.3 MB. A frame up
# to this size is still unmasked in one pass on the event loop by websockets (~0.5-1 ms/MB on a
# loaded 2-core box), so this limit also bounds how long one frame can stall /healthz; larger
# frames are dropped as they arrive (`transport.FrameReader`).
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_AUTH_FAILURE_DELAY_S = 1.0
# Keep-alive pings: a peer that answers none for this long after one is sent is closed.
DEFAULT_PING_INTERVAL_S = 10.0
# Wait for a peer's closing handshake without pings (websockets' default).
_CLOSE_TIMEOUT_S = 10.0


def _check_arguments(
    policy: Any,
    host: Any,
    *,
    max_request_bytes: int,
    num_workers: int,
    decode_workers: int,
    max_connections: int,
    idle_timeout_s: float,
    open_timeout_s: float,
    auth_failure_delay_s: float,
    ping_interval_s: float,
) -> None:
    """Refuse a server that could not work, before anything is built."""
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
    if min(idle_timeout_s, auth_failure_delay_s, ping_interval_s) < 0 or open_timeout_s <= 0:
        raise ValueError(
            "idle_timeout_s, auth_failure_delay_s and ping_interval_s must be >= 0 and "
            "open_timeout_s > 0"
        )
    if auth_failure_delay_s >= open_timeout_s:
        raise ValueError(
            f"auth_failure_delay_s={auth_failure_delay_s} must be below open_timeout_s="
            f"{open_timeout_s}: the delayed 401 is part of the handshake"
        )


def _new_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "connections": 0,
        "open_connections": 0,
        "refused_connections": 0,
        "evicted_idle": 0,
        "idle_closed": 0,
        "stalled_closed": 0,
        "auth_failures": 0,
        "auth_throttled": 0,
        "compiles_at_startup": 0,
        "compiles_while_serving": 0,
        "warmup_s": 0.0,
    }


def _metadata(
    policy: Any, extra: Mapping[str, Any] | None, inference: Inference, max_request_bytes: int
) -> dict[str, Any]:
    """What the server announces on connect: the policy's own metadata, the caller's, then what a
    client needs to form requests."""
    return {
        **dict(getattr(policy, "metadata", None) or {}),
        **dict(extra or {}),
        "policy": type(policy).__name__,
        "noise_shape": list(inference.noise_shape),
        "action_dim": int(policy.action_dim),
        "methods": list(METHODS),
        "max_request_bytes": max_request_bytes,
        "max_batch": inference.max_batch,
        "batch_sizes": list(inference.batch_sizes),
        "server": "dsrl",
    }


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
      observation_spec: {key: (shape, dtype)} of ONE observation, checked before inference
        (default: derived from the policy, `dsrl.serving.specs`).
      max_connections: open websocket connections; at the cap a newcomer evicts the connection
        idle the longest (`dsrl.serving.connections`), and gets HTTP 503 only if none is idle.
      idle_timeout_s: a connection without a request for this long is closed (0 = never).
      ping_interval_s: keep-alive pings; a peer that answers none within this is dropped as dead
        (within three intervals in all; 0 = no pings).
      open_timeout_s: a TCP connection must finish its websocket handshake within this.
      auth_failure_delay_s: a wrong API key is answered (401) after this delay; only that
        handshake waits, a correct key is never delayed or refused (`dsrl.serving.auth`).

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
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
        num_workers: int = 1,
        decode_workers: int = 2,
        seed: int = 0,
    ):
        _check_arguments(
            policy,
            host,
            max_request_bytes=max_request_bytes,
            num_workers=num_workers,
            decode_workers=decode_workers,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
            open_timeout_s=open_timeout_s,
            auth_failure_delay_s=auth_failure_delay_s,
            ping_interval_s=ping_interval_s,
        )
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_request_bytes = int(max_request_bytes)
        self.frame_limits = msgpack_numpy.FrameLimits(
            max_bytes=self.max_request_bytes,
            max_items=max_items,
            max_depth=max_depth,
            max_str_bytes=max_str_bytes,
        )
        self.warmup_observation = dict(warmup_observation) if warmup_observation else None
        self.max_connections = int(max_connections)
        self.idle_timeout_s = float(idle_timeout_s)
        self.open_timeout_s = float(open_timeout_s)
        self.ping_interval_s = float(ping_interval_s)
        self.stats: dict[str, Any] = _new_stats()
        self._stats_lock = threading.Lock()
        self.inference = Inference(
            policy,
            batch_sizes=batching.padded_sizes(max_batch, batch_sizes),
            fields=spec_for_policy(policy, observation_spec),
            compiles=CompileCounter(self.stats, self._stats_lock),
            seed=seed,
        )
        self.noise_shape = self.inference.noise_shape
        self.action_dim = int(policy.action_dim)
        self.batch_sizes = self.inference.batch_sizes
        self.max_batch = self.inference.max_batch
        self.metadata = _metadata(policy, metadata, self.inference, self.max_request_bytes)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_workers,
            thread_name_prefix="policy-infer",
            initializer=self.inference.compiles.claim_thread,
        )
        self._decode_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=decode_workers, thread_name_prefix="policy-decode"
        )
        self._connections = ConnectionTable(self.max_connections)
        self._sessions = self._make_sessions(float(auth_failure_delay_s))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _make_sessions(self, auth_failure_delay_s: float) -> Sessions:
        return Sessions(
            metadata_frame=msgpack_numpy.packb(self.metadata),
            auth=ApiKeyGate(self.api_key, auth_failure_delay_s, self.open_timeout_s, self.stats),
            table=self._connections,
            stats=self.stats,
            snapshot=self.stats_snapshot,
            idle_timeout_s=self.idle_timeout_s,
            max_request_bytes=self.max_request_bytes,
            decode=self._decode,
            decode_pool=self._decode_executor,
            infer=self.inference.serve,
            infer_pool=self._executor,
            trimmer=HeapTrimmer(self._decode_executor),
        )

    def stats_snapshot(self) -> dict[str, Any]:
        with self._stats_lock:
            return {**self.stats, "open_connections": len(self._connections)}

    # ----------------------------------------------------------------------------- requests

    def _parse(self, message: bytes | str) -> Request:
        """Frame -> request (decode thread). Raises RequestError."""
        return parse_request(message, self.frame_limits)

    def _decode(self, message: bytes | str) -> Request | str:
        """Decode thread: the parsed request, or the error frame to send back."""
        try:
            return self._parse(message)
        except RequestError as e:
            return error_frame(e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - a decoder bug must not kill the connection
            log_failure("decoding a request failed", e)
            return error_frame("bad_request", f"{type(e).__name__}: {e}")

    # ----------------------------------------------------------------------------- lifecycle

    def _warmup(self) -> None:
        seconds = self.inference.warmup(self.warmup_observation)
        if self.warmup_observation is None:
            return
        self.stats["warmup_s"] = round(seconds, 3)
        logger.info(
            "warm-up: batch sizes %s compiled in %.1f s (%d compilations)",
            list(self.batch_sizes),
            self.stats["warmup_s"],
            self.stats["compiles_at_startup"],
        )

    async def _start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._warmup)
        # What exists now (JAX, the policy, its compiled functions: about a million objects) lives
        # as long as the server. Left to the cyclic collector, every full collection walks it all
        # on whichever thread allocates: 80-110 ms stalls of the event loop during a connection
        # flood. Frozen, collections skip it (`stop()` unfreezes).
        gc.collect()
        gc.freeze()
        sock = transport.listening_socket(self.host, self.port)
        self._server = await serve(
            self._sessions.handler,
            sock=sock,
            create_connection=functools.partial(
                transport.Connection, keep_bytes=self.max_request_bytes
            ),
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
            # Keep-alive pings tell an idle client from a dead one: a peer that stops answering
            # them is dropped within three intervals (ping, pong deadline, closing handshake),
            # long before idle_timeout_s.
            ping_interval=self.ping_interval_s or None,
            ping_timeout=self.ping_interval_s or None,
            close_timeout=self.ping_interval_s or _CLOSE_TIMEOUT_S,
            process_request=self._sessions.process_request,
        )
        # ... but a long kernel queue, so that during a flood a health check waits its turn
        # instead of having its SYN dropped (and retried by the client 1 s later).
        sock.listen(transport.KERNEL_BACKLOG)
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
