"""Websocket policy server speaking openpi's wire protocol, plus steering noise.

Protocol (what the unmodified PyPI `openpi_client.WebsocketClientPolicy` expects):
  * one websocket binary frame = one msgpack-numpy object (`dsrl.serving.msgpack_numpy`);
  * on connect the server sends the metadata dict (ours adds `noise_shape`, `action_dim`,
    `methods`, `max_request_bytes`);
  * each request frame is answered by exactly one reply frame, in order;
  * `GET /healthz` answers HTTP 200 "OK".

Requests (all binary msgpack maps):
  * plain openpi observation `{"observation/...": ..., "prompt": ..., "noise"?: (H, D)|(1, H, D)}`
    -> `{"actions": f32 (H, A), "server_timing": {...}, ...}`;
  * the DSRL fork's envelope `{"method": "infer", "obs": {...}}` (noise inside obs or beside it);
  * `{"method": "infer_batch", "obs": <leaves with leading B>, "noise": (B, H, D)}` -> actions
    (B, H, A): one batched `sample_actions` call (what `RemotePolicy` uses);
  * `{"method": "get_prefix_feature", "obs": {...}}` or `"return_prefix_feature": True` on an
    infer request -> `"prefix_feature"`: f32 (width,), the policy's prefix (image + prompt)
    hidden state averaged over VALID tokens (the reference used the last, usually padded, slot).

Errors differ from openpi on purpose (openpi issue #1039): a bad request gets a TEXT frame
`"dsrl-server error [<kind>]: <what is wrong and how to fix it>"` (no traceback; the upstream
client raises RuntimeError with this text), and the connection stays open for the next request.
Inference runs in a thread pool, never on the event loop (openpi issue #717), so slow inference
or a slow client never stalls health checks, metadata or other connections. The server binds
127.0.0.1 unless told otherwise, and enforces an API key when one is set (header
`Authorization: Api-Key <key>`, as openpi's client sends it, or query `?api_key=<key>`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import http
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve

from dsrl.serving import msgpack_numpy

logger = logging.getLogger(__name__)

API_KEY_ENV = "DSRL_SERVER_API_KEY"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Keys of a request envelope; a map with "method" or made of these keys only is an envelope.
_ENVELOPE_KEYS = frozenset({"method", "obs", "noise", "return_prefix_feature"})
_METHODS = ("infer", "infer_batch", "get_prefix_feature")
# Obs keys reserved by the protocol, popped before the observation reaches the policy.
_RESERVED_OBS_KEYS = ("noise", "return_prefix_feature")
_MAX_ERROR_CHARS = 600


class RequestError(ValueError):
    """A request the server refuses; `kind` is a short tag, the message says what to fix."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


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


class PolicyServer:
    """Serves one policy over websockets.

    `policy` is either a BasePolicy (`noise_shape`, `action_dim`, batched `sample_actions`) or a
    Pi0Policy-like object that also has `infer(obs, noise) -> {"actions": (H, A), ...}` for one
    unbatched openpi-style observation (used for plain requests) and optionally
    `prefix_feature(obs) -> (B, width)` (batched) for `get_prefix_feature`, and
    `sample_actions_and_prefix_feature(obs, noise) -> ((B, H, A), (B, width))` (batched), used
    for infer requests that also ask for the feature so the prefix is encoded only once.

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
        num_workers: int = 1,
        seed: int = 0,
    ):
        for attr in ("noise_shape", "action_dim"):
            if not hasattr(policy, attr):
                raise TypeError(
                    f"{type(policy).__name__} has no `{attr}`: the server serves objects "
                    "implementing dsrl.base_policies.base.BasePolicy"
                )
        if max_request_bytes <= 0 or num_workers <= 0:
            raise ValueError("max_request_bytes and num_workers must be positive")
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.noise_shape = tuple(int(d) for d in policy.noise_shape)
        self.action_dim = int(policy.action_dim)
        self.max_request_bytes = int(max_request_bytes)
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
            "server": "dsrl",
        }
        self._packed_metadata = msgpack_numpy.packb(self.metadata)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_workers, thread_name_prefix="policy-infer"
        )
        # Default noise (requests without "noise") comes from one seeded stream.
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "errors": 0, "connections": 0}

    # ----------------------------------------------------------------------------- requests

    def _parse(self, message: bytes | str) -> tuple[str, dict, np.ndarray | None, bool]:
        """Frame -> (method, observation, noise or None, want_prefix_feature)."""
        if isinstance(message, str):
            raise RequestError(
                "bad_frame", "expected a binary msgpack frame, got a text frame; send bytes"
            )
        if len(message) > self.max_request_bytes:
            raise RequestError(
                "too_large",
                f"request of {len(message)} bytes exceeds max_request_bytes="
                f"{self.max_request_bytes}; send smaller images or raise --max_request_mb",
            )
        try:
            request = msgpack_numpy.unpackb(message)
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
        return method, obs, noise, want_feature

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
        return noise.reshape(-1, horizon, dim).astype(np.float32)

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

    def _run(self, method: str, obs: dict, noise: Any, want_feature: bool) -> dict[str, Any]:
        """Runs in a worker thread: validation that needs no I/O, then the policy call."""
        policy = self.policy
        out: dict[str, Any] = {}
        if method == "infer_batch":
            batch = self._batch_size(obs)
            if self.observation_spec:
                _check_spec(obs, self.observation_spec, batch)
            if noise is None:
                raise RequestError("missing_key", "infer_batch needs 'noise' (B, H, D)")
            noise = self._check_noise(noise, batch)
            combined = self._combined(want_feature)
            if combined is not None:
                actions, feature = combined(obs, noise)
                return {
                    "actions": np.asarray(actions, np.float32),
                    "prefix_feature": np.asarray(feature, np.float32),
                }
            out["actions"] = np.asarray(policy.sample_actions(obs, noise), np.float32)
            if want_feature:
                out["prefix_feature"] = self._prefix_feature(obs, batched=True)
            return out
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

    # ----------------------------------------------------------------------------- websocket

    def _process_request(self, connection: ServerConnection, request: Any):
        parsed = urllib.parse.urlsplit(request.path)
        if parsed.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is None:
            return None
        header = request.headers.get("Authorization", "")
        given = header[len("Api-Key ") :] if header.startswith("Api-Key ") else None
        if given is None:
            given = urllib.parse.parse_qs(parsed.query).get("api_key", [None])[0]
        if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key: send header 'Authorization: Api-Key <key>' or "
                "query '?api_key=<key>'\n",
            )
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.stats["connections"] += 1
        loop = asyncio.get_running_loop()
        await ws.send(self._packed_metadata)
        prev_total_ms: float | None = None
        while True:
            try:
                message = await ws.recv()
            except websockets.ConnectionClosed:
                return
            start = time.perf_counter()
            try:
                method, obs, noise, want_feature = self._parse(message)
                reply = await loop.run_in_executor(
                    self._executor, self._run, method, obs, noise, want_feature
                )
                infer_ms = (time.perf_counter() - start) * 1000.0
                timing = {"infer_ms": infer_ms}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply["server_timing"] = timing
                frame: bytes | str = msgpack_numpy.packb(reply)
                self.stats["requests"] += 1
            except RequestError as e:
                frame = f"dsrl-server error [{e.kind}]: {str(e)[:_MAX_ERROR_CHARS]}"
                self.stats["errors"] += 1
            except Exception as e:  # noqa: BLE001 - any policy failure becomes a reply
                logger.exception("inference failed")
                frame = (
                    f"dsrl-server error [inference_failed]: {type(e).__name__}: "
                    f"{str(e)[:_MAX_ERROR_CHARS]}"
                )
                self.stats["errors"] += 1
            try:
                await ws.send(frame)
            except websockets.ConnectionClosed:
                return
            prev_total_ms = (time.perf_counter() - start) * 1000.0

    async def _start(self) -> None:
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            compression=None,
            # Frames up to 2x the soft limit are read and answered with an error; beyond that the
            # connection is closed (1009) rather than buffering unbounded memory.
            max_size=2 * self.max_request_bytes,
            process_request=self._process_request,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_async(self) -> None:
        await self._start()
        logger.info("serving %s on ws://%s:%d", self.metadata["policy"], self.host, self.port)
        await self._server.serve_forever()

    def serve_forever(self) -> None:
        try:
            asyncio.run(self.serve_async())
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def start(self) -> PolicyServer:
        """Serve from a background daemon thread; returns once the port is bound."""
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
        self._executor.shutdown(wait=False, cancel_futures=True)

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
