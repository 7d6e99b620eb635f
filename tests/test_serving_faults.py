"""The policy server under abuse (issue 16): hostile frames, oversized batches, non-finite values,
connection floods, idle clients, API-key guessing, an empty host. Every case runs against a real
server thread on 127.0.0.1 with real websocket / HTTP clients, and ends by checking that a correct
request is still answered correctly and that /healthz answers."""

from __future__ import annotations

import base64
import http.client
import logging
import os
import socket
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import websockets
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from dsrl.base_policies.remote import RemotePolicy, RemotePolicyError
from dsrl.serving import PolicyServer, msgpack_numpy

H, D, A, S = 4, 32, 3, 6
STATE_MEAN, STATE_STD = 0.5, 0.1


class NormalizingPolicy:
    """A jitted policy that normalises its state as Pi0 does, so absurd finite states (3e38)
    overflow to inf inside it and come out as NaN actions."""

    noise_shape = (H, D)
    action_dim = A

    def __init__(self, delay_s: float = 0.0, fail_with: str | None = None):
        k1, k2 = jax.random.split(jax.random.key(0))
        self.w_noise = jax.random.normal(k1, (D, A)) / np.sqrt(D)
        self.w_state = jax.random.normal(k2, (S, A))  # mixed signs: inf - inf = NaN
        self.delay_s = delay_s
        self.fail_with = fail_with

        def act(noise, state):
            z = (state - STATE_MEAN) / STATE_STD
            return jnp.tanh(noise @ self.w_noise + (z @ self.w_state)[:, None])

        self._fn = jax.jit(act)

    def sample_actions(self, observation, noise):
        if self.fail_with is not None:
            raise ValueError(self.fail_with)
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.asarray(self._fn(jnp.asarray(noise), jnp.asarray(observation["state"])))


EXAMPLE = {"state": np.zeros(S, np.float32), "prompt": "pick"}


def _obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"state": rng.standard_normal(S).astype(np.float32), "prompt": "pick"}


def _noise(seed: int = 0, batch: tuple[int, ...] = ()) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((*batch, H, D)).astype(np.float32)


def _expected(policy, obs, noise) -> np.ndarray:
    return policy.sample_actions({"state": obs["state"][None]}, noise[None])[0]


def _server(policy, **kw) -> PolicyServer:
    kw.setdefault("warmup_observation", EXAMPLE)
    kw.setdefault("max_batch", 4)
    return PolicyServer(policy, port=0, **kw)


def _health(srv, timeout: float = 10.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def _connect(srv, *, source: str | None = None, **kw):
    sock = None
    if source is not None:  # another loopback address: another client machine for the server
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", srv.port))
    ws = websockets.sync.client.connect(
        f"ws://127.0.0.1:{srv.port}",
        compression=None,
        max_size=None,
        proxy=None,
        legacy=True,
        open_timeout=20,
        sock=sock,
        **kw,
    )
    metadata = msgpack_numpy.unpackb(ws.recv(timeout=10))
    return ws, metadata


def _roundtrip(ws, frame, timeout: float = 60):
    ws.send(frame)
    return ws.recv(timeout=timeout)


def _assert_still_serves(srv, policy, **client_kw) -> None:
    """A fresh unmodified openpi client gets the right actions, and /healthz answers."""
    assert _health(srv) == 200
    obs, noise = _obs(7), _noise(7)
    client = WebsocketClientPolicy("127.0.0.1", srv.port, **client_kw)
    out = client.infer({**obs, "noise": noise})
    np.testing.assert_allclose(out["actions"], _expected(policy, obs, noise), atol=1e-6)
    client._ws.close()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _raw_client(srv, *, rcvbuf: int | None = None) -> socket.socket:
    """A websocket client on a bare socket, so that it can misbehave exactly as a test needs
    (stop reading, stop mid-frame): the opening handshake by hand, nothing read beyond it."""
    sock = socket.socket()
    if rcvbuf is not None:  # before connect: a small receive window fills up at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while not response.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)  # one byte at a time: the frames that follow stay unread
        assert byte, f"server closed during the handshake: {response!r}"
        response += byte
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def _client_frame(payload: bytes, opcode: Opcode = Opcode.BINARY) -> bytes:
    return Frame(opcode, payload).serialize(mask=True)


def _read_frames(sock: socket.socket, count: int | None = None) -> tuple[list[Frame], bool]:
    """Frames the server sent on a raw client: until `count` frames, else until the connection
    ends. Returns them and whether the connection ended (EOF or reset)."""
    parser = Protocol(Side.CLIENT, max_size=None)
    frames: list[Frame] = []
    while count is None or len(frames) < count:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            return frames, True
        parser.receive_data(data)
        frames += parser.events_received()
    return frames, False


def _wait_for(condition, timeout: float) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - t0


class HealthProbe:
    """Polls /healthz from a thread while abuse runs; every probe must get 200."""

    def __init__(self, srv):
        self.srv = srv
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.statuses.append(_health(self.srv))
            except Exception as e:  # noqa: BLE001 - recorded, asserted below
                self.statuses.append(repr(e))
            time.sleep(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def assert_all_ok(self) -> None:
        assert self.statuses, "no health probe completed during the abuse"
        bad = [s for s in self.statuses if s != 200]
        assert not bad, f"{len(bad)} of {len(self.statuses)} health probes failed: {bad[:3]}"


@pytest.fixture(scope="module")
def policy():
    return NormalizingPolicy()


@pytest.fixture(scope="module")
def server(policy):
    with _server(policy).running() as srv:
        yield srv


# ----------------------------------------------------------------------------- hostile frames


def test_frames_of_nils_are_refused_without_memory_or_health_cost(server, policy):
    """Before: a 60 MB frame of nils took +1.0 GB and blocked /healthz for 7 s (msgpack built
    60M Nones on the event loop)."""
    nils = 12_000_000  # under the 16 MB byte limit: the item limit must catch it
    frame = b"\xdd" + nils.to_bytes(4, "big") + b"\xc0" * nils
    ws, _ = _connect(server)
    rss0 = _rss_mb()
    with HealthProbe(server) as probe:
        reply = _roundtrip(ws, frame)
        # The connection that sent it still serves a correct request.
        obs, noise = _obs(1), _noise(1)
        ok = openpi_msgpack.unpackb(_roundtrip(ws, openpi_msgpack.packb({**obs, "noise": noise})))
        # 60 MB is over twice the byte limit: the connection is closed at the frame header
        # (1009), nothing is buffered or decoded.
        big = b"\xdd" + (60_000_000).to_bytes(4, "big") + b"\xc0" * 60_000_000
        with pytest.raises(websockets.ConnectionClosed) as info:
            _roundtrip(ws, big)
        del big
    del frame
    assert isinstance(reply, str) and reply.startswith("dsrl-server error [too_many_items]")
    assert "max_items=100000" in reply and "--max_items" in reply
    np.testing.assert_allclose(ok["actions"], _expected(policy, obs, noise), atol=1e-6)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    probe.assert_all_ok()
    assert _rss_mb() - rss0 < 200, "the refused frames kept hundreds of MB"
    _assert_still_serves(server, policy)


def test_map_with_millions_of_keys_and_many_small_lists_are_refused(server, policy):
    """Before: a 40 MB map of 4M keys took +1.6 GB, 10 s, and a 47 MB log line."""
    entries = 4_000_000  # 8 MB: key 1 -> nil, repeated (duplicate keys are valid msgpack)
    big_map = b"\xdf" + entries.to_bytes(4, "big") + b"\x01\xc0" * entries
    # Many containers each under any per-container bound: the total is what is limited.
    many_lists = b"\xdc" + (2000).to_bytes(2, "big") + (b"\xdc\x00\x64" + b"\xc0" * 100) * 2000
    ws, _ = _connect(server)
    with HealthProbe(server) as probe:
        for frame in (big_map, many_lists):
            reply = _roundtrip(ws, frame)
            assert isinstance(reply, str) and "[too_many_items]" in reply, reply[:200]
            assert len(reply) < 1000
    probe.assert_all_ok()
    ws.close()
    _assert_still_serves(server, policy)


def test_deep_nesting_and_long_strings_are_refused(server, policy):
    ws, _ = _connect(server)
    deep = b"\x91" * 100_000 + b"\xc0"  # [[[[...]]]] 100k levels
    reply = _roundtrip(ws, deep)
    assert reply.startswith("dsrl-server error [too_deep]") and "max_depth=16" in reply
    # A 1 MB prompt (as a key, so an error would quote it): refused before decoding.
    long_key = openpi_msgpack.packb({"x" * 1_000_000: 1})
    reply = _roundtrip(ws, long_key)
    assert reply.startswith("dsrl-server error [too_large]") and "max_str_bytes" in reply
    assert len(reply) < 1000
    # Truncated and ext-typed frames are refused with a reason, not a crash.
    assert "[bad_msgpack]" in _roundtrip(ws, b"\xdd\x00\x00\x00\x05\xc0")
    assert "ext types" in _roundtrip(ws, b"\x81\xa1k\xd4\x01\x00")
    ws.close()
    _assert_still_serves(server, policy)


def test_limits_are_configurable_and_a_real_request_fits_them(policy):
    obs, noise = _obs(2), _noise(2)
    with _server(policy, max_items=40, max_depth=3).running() as srv:
        ws, meta = _connect(srv)
        assert meta["max_batch"] == 4 and meta["batch_sizes"] == [1, 2, 4]
        reply = _roundtrip(ws, openpi_msgpack.packb({**obs, "noise": noise, "pad": [0] * 50}))
        assert "[too_many_items]" in reply and "max_items=40" in reply
        nested = {"method": "infer", "obs": {**obs, "images": {"cam": {"x": 1}}}, "noise": noise}
        assert "[too_deep]" in _roundtrip(ws, openpi_msgpack.packb(nested))
        ok = openpi_msgpack.unpackb(_roundtrip(ws, openpi_msgpack.packb({**obs, "noise": noise})))
        np.testing.assert_allclose(ok["actions"], _expected(policy, obs, noise), atol=1e-6)
        ws.close()


def test_default_limits_fit_a_batch_of_real_pi0_observations(server):
    """16 DROID-style elements (three 224x224x3 uint8 images, state, prompt) decode fine."""
    rng = np.random.default_rng(0)
    batch = 16
    obs = {
        f"observation/{cam}": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        for cam in ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
    }
    obs["observation/joint_position"] = rng.standard_normal((batch, 7)).astype(np.float32)
    obs["prompt"] = ["put the spoon on the plate"] * batch
    frame = openpi_msgpack.packb({"method": "infer_batch", "obs": obs, "noise": _noise(0, (16,))})
    request = server._parse(frame)  # the decode step on its own (the test policy is not Pi0)
    assert request.method == "infer_batch" and request.obs["prompt"][0].startswith("put")
    assert request.obs["observation/wrist_image_left"].shape == (batch, 224, 224, 3)


def test_error_text_is_capped_in_replies_and_logs(caplog):
    huge = "y" * 5_000_000
    policy = NormalizingPolicy(fail_with=f"policy exploded: {huge}")
    with _server(policy, warmup_observation=None).running() as srv, caplog.at_level(logging.ERROR):
        ws, _ = _connect(srv)
        reply = _roundtrip(ws, openpi_msgpack.packb({**_obs(), "noise": _noise()}))
        ws.close()
    assert reply.startswith("dsrl-server error [inference_failed]: ValueError: policy exploded")
    assert len(reply) < 1000
    records = [r.getMessage() for r in caplog.records if r.name.startswith("dsrl.serving")]
    assert records and all(len(m) < 5000 for m in records)


# ----------------------------------------------------------------------------- batches, compiles


def test_oversized_batch_refused_and_no_compile_while_serving():
    policy = NormalizingPolicy()  # its own jit cache: nothing compiled before the server starts
    with _server(policy).running() as srv:
        assert srv.stats["compiles_at_startup"] > 0
        ws, _ = _connect(srv)
        state = np.random.default_rng(3).standard_normal((5, S)).astype(np.float32)
        noise = _noise(3, (5,))

        def batch_frame(b: int) -> bytes:
            obs = {"state": state[:b], "prompt": ["pick"] * b}
            return openpi_msgpack.packb({"method": "infer_batch", "obs": obs, "noise": noise[:b]})

        reply = _roundtrip(ws, batch_frame(5))
        assert reply.startswith("dsrl-server error [batch_too_large]")
        assert "max_batch=4" in reply and "--max_batch" in reply
        # 1..4 observations (3 is padded to 4), single infers with and without noise: all
        # answered correctly from the start-up compilations.
        for b in (3, 1, 2, 4):
            out = openpi_msgpack.unpackb(_roundtrip(ws, batch_frame(b)))
            expected = policy.sample_actions({"state": state[:b]}, noise[:b])
            assert out["actions"].shape == (b, H, A)
            np.testing.assert_allclose(out["actions"], expected, atol=1e-6)
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        assert client.infer(_obs(4))["actions"].shape == (H, A)
        assert client.infer({**_obs(4), "noise": _noise(4)})["actions"].shape == (H, A)
        ws.close()
        stats = srv.stats_snapshot()
        assert stats["compiles_while_serving"] == 0, stats
        _assert_still_serves(srv, policy)
        assert srv.stats_snapshot()["compiles_while_serving"] == 0


def test_remote_policy_splits_batches_over_max_batch(server, policy):
    state = np.random.default_rng(5).standard_normal((11, S)).astype(np.float32)
    noise = _noise(5, (11,))
    with RemotePolicy("127.0.0.1", server.port) as rp:
        out = rp.sample_actions({"state": state, "prompt": ["pick"] * 11}, noise)
    np.testing.assert_allclose(out, policy.sample_actions({"state": state}, noise), atol=1e-6)


# ----------------------------------------------------------------------------- non-finite values


def test_non_finite_inputs_and_outputs_are_errors_not_actions(server, policy):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    noise = _noise(6)
    # 3e38 is a finite float32; normalising it overflows inside the policy.
    with pytest.raises(RuntimeError, match=r"\[non_finite_output\].*NaN/inf actions"):
        client.infer({"state": np.full(S, 3e38, np.float32), "noise": noise})
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(RuntimeError, match=r"\[bad_value\].*state.*NaN or inf"):
            client.infer({"state": np.full(S, bad, np.float32), "noise": noise})
    with pytest.raises(RuntimeError, match=r"\[bad_value\]"):
        client.infer({"state": np.zeros(S, np.float64), "noise": noise.astype(np.float64) * 1e300})
    # In a batch, the error names the element.
    state = np.zeros((3, S), np.float32)
    state[1] = 3e38
    ws, _ = _connect(server)
    reply = _roundtrip(
        ws,
        openpi_msgpack.packb(
            {"method": "infer_batch", "obs": {"state": state}, "noise": _noise(6, (3,))}
        ),
    )
    assert reply.startswith("dsrl-server error [non_finite_output]") and "[1]" in reply
    ws.close()
    # The same client's connection keeps working.
    obs = _obs(8)
    out = client.infer({**obs, "noise": noise})
    np.testing.assert_allclose(out["actions"], _expected(policy, obs, noise), atol=1e-6)
    _assert_still_serves(server, policy)


# ----------------------------------------------------------------------------- connections


def test_idle_connections_are_closed_but_slow_requests_are_not(policy):
    # The idle timeout leaves room for a loaded machine between connecting and sending; the
    # slow request takes longer than it.
    slow = NormalizingPolicy(delay_s=2.5)
    with _server(slow, idle_timeout_s=1.5, warmup_observation=None).running() as srv:
        ws, _ = _connect(srv)
        with pytest.raises(websockets.ConnectionClosed) as info:
            ws.recv(timeout=30)  # no request sent: the server closes the connection
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert "idle timeout" in info.value.rcvd.reason
        # A request that takes longer than the idle timeout is not cut off.
        ws, _ = _connect(srv)
        obs, noise = _obs(10), _noise(10)
        out = openpi_msgpack.unpackb(_roundtrip(ws, openpi_msgpack.packb({**obs, "noise": noise})))
        np.testing.assert_allclose(out["actions"], _expected(policy, obs, noise), atol=1e-6)
        ws.close()
        # RemotePolicy reconnects by itself after an idle close.
        with RemotePolicy("127.0.0.1", srv.port, backoff_s=0.05) as rp:
            time.sleep(2.5)
            batch = {"state": obs["state"][None], "prompt": ["pick"]}
            np.testing.assert_allclose(rp.sample_actions(batch, noise[None])[0], out["actions"])
            assert rp.connections == 2
        assert srv.stats_snapshot()["idle_closed"] >= 2
        _assert_still_serves(srv, policy)


def test_remote_policy_reports_wrong_key_after_the_delay(policy):
    with _server(policy, api_key="k", auth_failure_delay_s=0.5).running() as srv:
        t0 = time.monotonic()
        with pytest.raises(RemotePolicyError, match="API key"):
            RemotePolicy("127.0.0.1", srv.port, api_key="nope")
        assert time.monotonic() - t0 >= 0.45
        _assert_still_serves(srv, policy, api_key="k")


# ----------------------------------------------------------------------------- stalled clients


class BigReplyPolicy:
    """Pi0-style (`infer` for plain requests): the reply carries `reply_bytes` extra bytes when the
    observation asks for them, so one client can be sent a reply larger than the socket buffers
    while others get small ones."""

    noise_shape = (H, D)
    action_dim = A

    def sample_actions(self, observation, noise):
        return np.zeros((len(noise), H, A), np.float32)

    def infer(self, obs, noise=None):
        blob = np.zeros(int(obs.get("reply_bytes", 0)), np.uint8)
        return {"actions": np.ones((H, A), np.float32), "blob": blob}


def test_client_that_stops_reading_its_reply_is_dropped_at_the_send_deadline():
    """The send deadline: a client that sends a request and never reads the (32 MB) reply is
    dropped once the reply has waited idle_timeout_s, rather than holding its slot and the reply
    for a closing handshake that cannot get through; others are served meanwhile."""
    deadline = 1.0
    reply_bytes = 32 << 20
    with _server(
        BigReplyPolicy(), idle_timeout_s=deadline, warmup_observation=None
    ).running() as srv:
        stalled = _raw_client(srv, rcvbuf=4096)
        stalled.sendall(_client_frame(openpi_msgpack.packb({"reply_bytes": reply_bytes})))
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        for _ in range(3):
            np.testing.assert_array_equal(client.infer({"state": 0})["actions"], np.ones((H, A)))
            assert _health(srv) == 200
        # Dropped within the deadline plus scheduling slack: the old close handshake alone
        # waited websockets' 10 s close timeout on top of it.
        _wait_for(lambda: srv.stats_snapshot()["stalled_closed"] == 1, timeout=deadline + 6)
        _wait_for(lambda: srv.stats_snapshot()["open_connections"] == 1, timeout=5)
        received = 0
        while True:  # what reached the socket before the drop, then the end of the connection
            try:
                data = stalled.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
        assert received < reply_bytes, "the whole reply was delivered: the client was not cut off"
        # The client that kept reading is still connected and served.
        np.testing.assert_array_equal(client.infer({"state": 0})["actions"], np.ones((H, A)))
        client._ws.close()
        _wait_for(lambda: srv.stats_snapshot()["open_connections"] == 0, timeout=10)
        stats = srv.stats_snapshot()
        assert stats["stalled_closed"] == 1 and stats["idle_closed"] == 0, stats


def test_clients_stalled_mid_frame_are_dropped_and_idle_ones_closed_with_a_reason(policy):
    """The receive deadline: a client that stops partway through a frame (a large one, filled in
    place, or a small one) is dropped after idle_timeout_s, as its close frame could only arrive
    as more payload; an idle client between requests gets a 1001 close naming the timeout."""
    deadline = 1.0
    with _server(policy, idle_timeout_s=deadline).running() as srv:
        large, small, idle = _raw_client(srv), _raw_client(srv), _raw_client(srv)
        large.sendall(_client_frame(b"\x00" * (4 << 20))[: 1 << 20])  # 1 MB of a 4 MB frame
        obs, noise = _obs(12), _noise(12)
        small.sendall(_client_frame(openpi_msgpack.packb({**obs, "noise": noise}))[:20])
        _wait_for(lambda: srv.stats_snapshot()["open_connections"] == 3, timeout=10)
        with HealthProbe(srv) as probe:
            _assert_still_serves(srv, policy)
            _wait_for(lambda: srv.stats_snapshot()["stalled_closed"] == 2, timeout=deadline + 6)
        probe.assert_all_ok()
        for sock in (large, small):
            frames, ended = _read_frames(sock)
            assert ended and [f.opcode for f in frames] == [Opcode.BINARY]  # metadata, no close
        frames, _ = _read_frames(idle, count=2)
        assert frames[1].opcode is Opcode.CLOSE
        assert frames[1].data[:2] == (1001).to_bytes(2, "big") and b"idle timeout" in frames[1].data
        idle.sendall(_client_frame(frames[1].data, Opcode.CLOSE))  # completes the closing handshake
        for sock in (large, small, idle):
            sock.close()
        _wait_for(lambda: srv.stats_snapshot()["open_connections"] == 0, timeout=15)
        stats = srv.stats_snapshot()
        assert stats["stalled_closed"] == 2 and stats["idle_closed"] == 1, stats
        _assert_still_serves(srv, policy)


def test_connections_that_never_finish_their_handshake_are_closed(policy):
    """Silent TCP connections and a half-sent HTTP request are closed after open_timeout_s, and
    do not hold back health checks or real clients meanwhile."""
    deadline = 1.5
    with _server(policy, open_timeout_s=deadline, auth_failure_delay_s=0.0).running() as srv:
        silent = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(5)]
        silent[0].sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web")
        t0 = time.monotonic()
        _assert_still_serves(srv, policy)
        for sock in silent:
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b"", f"expected the server to close the connection, got {data[:80]!r}"
            sock.close()
        assert time.monotonic() - t0 >= 0.9 * deadline, "closed before the handshake deadline"
        _assert_still_serves(srv, policy)


def test_frames_over_the_limit_are_dropped_as_they_arrive_and_answered(policy):
    """A frame between 1x and 2x max_request_bytes costs no memory: its bytes are dropped as
    they arrive, and the connection gets `too_large` and keeps serving. Frames sent back to back
    (an empty one, an oversized one, a valid one) are answered in order."""
    limit = 16 << 20
    with _server(policy, max_request_bytes=limit).running() as srv:
        sock = _raw_client(srv)
        _read_frames(sock, count=1)  # metadata
        frame = _client_frame(b"\x00" * (limit + limit // 2))  # 24 MB
        rss0 = _rss_mb()
        sock.sendall(memoryview(frame)[:-1024])
        time.sleep(0.5)  # the server reads what the socket buffers hold
        grown = _rss_mb() - rss0
        sock.sendall(memoryview(frame)[-1024:])
        (reply,), _ = _read_frames(sock, count=1)
        assert reply.opcode is Opcode.TEXT and b"[too_large]" in reply.data
        assert str(len(frame) - 14).encode() in reply.data and b"--max_request_mb" in reply.data
        assert grown < 8, f"the server grew by {grown:.0f} MB while reading a dropped 24 MB frame"
        del frame
        obs, noise = _obs(13), _noise(13)
        valid = openpi_msgpack.packb({**obs, "noise": noise})
        padded = openpi_msgpack.packb({**obs, "noise": noise, "pad": np.ones(3 << 20, np.uint8)})
        sock.sendall(
            _client_frame(b"")
            + _client_frame(b"\x01" * (limit + 1))
            + _client_frame(padded)  # 3 MB: filled in place
            + _client_frame(valid)
        )
        replies, _ = _read_frames(sock, count=4)
        assert b"[bad_msgpack]" in replies[0].data, replies[0].data[:200]
        assert b"[too_large]" in replies[1].data, replies[1].data[:200]
        for reply in replies[2:]:
            out = openpi_msgpack.unpackb(reply.data)
            np.testing.assert_allclose(out["actions"], _expected(policy, obs, noise), atol=1e-6)
        sock.close()
        _assert_still_serves(srv, policy)


# ----------------------------------------------------------------------------- host


@pytest.mark.parametrize("host", ["", "  ", None])
def test_empty_host_is_refused_with_a_clear_choice(policy, host):
    with pytest.raises(ValueError, match=r"ambiguous.*127\.0\.0\.1.*0\.0\.0\.0"):
        PolicyServer(policy, host=host, port=0)


def test_serve_policy_refuses_empty_host(capsys):
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "serve_policy.py"
    spec = importlib.util.spec_from_file_location("serve_policy_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit):
        module.parse_args(["--host", "", "--policy", "flow_random"])
    assert "--host '' would bind every IPv4 and IPv6 interface" in capsys.readouterr().err
    args = module.parse_args(["--policy", "flow_random", "--batch_sizes", "1,3,8"])
    assert args.batch_sizes == [1, 3, 8]
