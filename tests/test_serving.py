"""The policy server on 127.0.0.1: openpi wire compatibility, noise, robustness, concurrency, auth."""

from __future__ import annotations

import http.client
import threading
import time

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
import websockets
import websockets.sync.client
from hypothesis import HealthCheck, given, settings
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from dsrl.serving import PolicyServer, msgpack_numpy

H, D, A, S = 6, 32, 7, 8


class NoiseAffinePolicy:
    """A small jitted JAX BasePolicy: actions depend on both state and (all dims of) noise."""

    noise_shape = (H, D)
    action_dim = A

    def __init__(self, seed: int = 0, delay_s: float = 0.0):
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.w_noise = jax.random.normal(k1, (D, A)) / np.sqrt(D)
        self.w_state = jax.random.normal(k2, (S, A))
        self.delay_s = delay_s
        self._fn = jax.jit(lambda n, s: jnp.tanh(n @ self.w_noise + (s @ self.w_state)[:, None]))

    def sample_actions(self, observation, noise):
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.asarray(self._fn(jnp.asarray(noise), jnp.asarray(observation["state"])))


class WithPrefixFeature(NoiseAffinePolicy):
    def prefix_feature(self, observation):
        return np.asarray(observation["state"], np.float32) * 2.0


def _obs(seed: int = 0) -> dict:
    return {"state": np.random.default_rng(seed).standard_normal(S).astype(np.float32)}


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((H, D)).astype(np.float32)


def _expected(policy, obs, noise) -> np.ndarray:
    return policy.sample_actions({"state": obs["state"][None]}, noise[None])[0]


@pytest.fixture(scope="module")
def policy():
    return NoiseAffinePolicy()


@pytest.fixture(scope="module")
def server(policy):
    with PolicyServer(WithPrefixFeature(), port=0).running() as srv:
        yield srv


def _connect(srv, **kw):
    ws = websockets.sync.client.connect(
        f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None, proxy=None, legacy=True, **kw
    )
    metadata = msgpack_numpy.unpackb(ws.recv(timeout=10))
    return ws, metadata


def _roundtrip(ws, frame):
    ws.send(frame)
    return ws.recv(timeout=30)


def test_binds_loopback_by_default_and_health_check(server):
    assert server.host == "127.0.0.1"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read().strip() == b"OK"


def test_pypi_openpi_client_unchanged_gets_metadata_and_actions(server, policy):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    meta = client.get_server_metadata()
    assert tuple(meta["noise_shape"]) == (H, D) and meta["action_dim"] == A
    obs, noise = _obs(1), _noise(1)
    out = client.infer({**obs, "noise": noise})
    assert out["actions"].shape == (H, A) and out["actions"].dtype == np.float32
    np.testing.assert_allclose(out["actions"], _expected(policy, obs, noise), atol=1e-6)
    assert out["server_timing"]["infer_ms"] >= 0
    # The DSRL fork's envelope and a (1, H, D) noise give the same actions.
    out2 = client.infer({"method": "infer", "obs": {**obs, "noise": noise[None]}})
    np.testing.assert_array_equal(out2["actions"], out["actions"])
    assert "prev_total_ms" in out2["server_timing"]
    # No noise: the server draws it; the reply is still a valid chunk.
    out3 = client.infer(obs)
    assert out3["actions"].shape == (H, A) and np.all(np.isfinite(out3["actions"]))


def test_same_noise_same_actions_other_noise_other_actions(server):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    obs = _obs(2)
    a = client.infer({**obs, "noise": _noise(5)})["actions"]
    b = client.infer({**obs, "noise": _noise(5)})["actions"]
    c = client.infer({**obs, "noise": _noise(6)})["actions"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_prefix_feature_on_request(server):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    obs = _obs(3)
    feat = client.infer({"method": "get_prefix_feature", "obs": obs})["prefix_feature"]
    np.testing.assert_allclose(feat, obs["state"] * 2.0)
    out = client.infer({**obs, "noise": _noise(0), "return_prefix_feature": True})
    assert out["actions"].shape == (H, A)
    np.testing.assert_allclose(out["prefix_feature"], obs["state"] * 2.0)


def test_prefix_feature_unsupported_is_a_clear_error(policy):
    with PolicyServer(policy, port=0).running() as srv:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        with pytest.raises(RuntimeError, match=r"\[unsupported\].*no prefix feature"):
            client.infer({"method": "get_prefix_feature", "obs": _obs()})


def test_msgpack_codec_is_byte_compatible_with_openpi():
    tree = {
        "image": np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3),
        "state": np.linspace(-1, 1, 8, dtype=np.float32),
        "mask": np.array([True, False]),
        "prompt": "pick up the cream cheese",
        "names": np.array(["a", "bc"]),
        "n": [1, 2.5, None],
        "scalar": np.int32(7),
    }
    assert msgpack_numpy.packb(tree) == openpi_msgpack.packb(tree)
    for decoded in (
        openpi_msgpack.unpackb(msgpack_numpy.packb(tree)),
        msgpack_numpy.unpackb(openpi_msgpack.packb(tree)),
    ):
        for key, value in tree.items():
            if isinstance(value, np.ndarray | np.generic):
                assert decoded[key].dtype == value.dtype
                np.testing.assert_array_equal(decoded[key], value)
            else:
                assert decoded[key] == value


_DTYPES = ["<f4", "<f8", "|u1", "<i4", "<i8", "|b1", "<f2", "<U3"]


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 4), max_size=4),
    fortran=st.booleans(),
)
def test_msgpack_roundtrip_any_array(dtype, shape, fortran):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 100, size=shape).astype(dtype)
    if fortran:
        arr = np.asfortranarray(arr)
    for enc, dec in (
        (msgpack_numpy.packb, msgpack_numpy.unpackb),
        (msgpack_numpy.packb, openpi_msgpack.unpackb),
        (openpi_msgpack.packb, msgpack_numpy.unpackb),
    ):
        out = dec(enc({"x": arr}))["x"]
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)


def _header(data: bytes, dtype: str, shape) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def _malformed_frames(noise: np.ndarray, obs: dict) -> list[tuple[str, bytes | str]]:
    pack = openpi_msgpack.packb
    return [
        ("bad_frame", "a text frame"),
        ("bad_msgpack", b"\xc1\xc1\xc1"),
        ("bad_msgpack", b""),
        ("bad_msgpack", pack(obs) + b"\x00"),
        ("bad_request", pack([1, 2, 3])),
        ("bad_request", pack("infer")),
        ("bad_shape", pack({**obs, "noise": noise[:3]})),
        ("bad_shape", pack({**obs, "noise": noise[None, None]})),
        ("bad_dtype", pack({**obs, "noise": noise.astype(np.int32)})),
        ("bad_dtype", pack({**obs, "noise": [1.0, 2.0]})),
        ("bad_value", pack({**obs, "noise": np.full_like(noise, np.nan)})),
        ("bad_value", pack({"state": np.full(S, np.inf, np.float32), "noise": noise})),
        ("bad_method", pack({"method": "explode", "obs": obs})),
        ("bad_method", pack({"method": "get_prefix_rep", "obs": obs})),
        ("missing_key", pack({"method": "infer"})),
        ("missing_key", pack({"method": "infer_batch", "obs": {"state": obs["state"][None]}})),
        ("bad_msgpack", msgpack.packb({"state": _header(b"abc", "<f4", [8])})),
        ("bad_msgpack", msgpack.packb({"state": _header(b"\0" * 8, "|O", [1])})),
        ("bad_msgpack", msgpack.packb({"state": _header(b"\0" * 8, "<c8", [1])})),
        ("bad_msgpack", msgpack.packb({"state": _header(b"", "<f4", [-1])})),
        ("bad_msgpack", msgpack.packb({"state": _header(b"", "nonsense", [0])})),
        ("bad_request", msgpack.packb({1: 2})),
        ("inference_failed", pack({"wrong_key": obs["state"], "noise": noise})),
        ("inference_failed", pack({"state": np.zeros(3, np.float32), "noise": noise})),
        (
            "bad_shape",
            pack(
                {
                    "method": "infer_batch",
                    "obs": {"state": np.zeros((2, S), np.float32)},
                    "noise": noise[None],
                }
            ),
        ),
    ]


def test_malformed_requests_get_error_replies_and_connection_keeps_serving(server, policy):
    obs, noise = _obs(4), _noise(4)
    ws, _ = _connect(server)
    valid = openpi_msgpack.packb({**obs, "noise": noise})
    for kind, frame in _malformed_frames(noise, obs):
        reply = _roundtrip(ws, frame)
        assert isinstance(reply, str), f"{kind}: expected an error text frame"
        assert reply.startswith(f"dsrl-server error [{kind}]"), reply
        assert "Traceback" not in reply and 'File "' not in reply
        ok = openpi_msgpack.unpackb(_roundtrip(ws, valid))
        np.testing.assert_allclose(ok["actions"], _expected(policy, obs, noise), atol=1e-6)
    ws.close()


def test_oversized_frames(policy):
    obs, noise = _obs(), _noise(0)
    small = len(openpi_msgpack.packb({**obs, "noise": noise})) + 64
    with PolicyServer(policy, port=0, max_request_bytes=small).running() as srv:
        ws, _ = _connect(srv)
        big = openpi_msgpack.packb({**obs, "noise": noise, "pad": np.zeros(small, np.uint8)})
        reply = _roundtrip(ws, big)
        assert isinstance(reply, str) and "[too_large]" in reply and "max_request_bytes" in reply
        assert "actions" in openpi_msgpack.unpackb(
            _roundtrip(ws, openpi_msgpack.packb({**obs, "noise": noise}))
        )
        # Beyond 2x the limit the frame is not even buffered: the connection is closed (1009),
        # the server itself keeps serving new connections.
        huge = openpi_msgpack.packb({"pad": np.zeros(4 * small, np.uint8)})
        with pytest.raises(websockets.ConnectionClosed) as info:
            _roundtrip(ws, huge)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        assert client.infer({**obs, "noise": noise})["actions"].shape == (H, A)


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=16),
)
_tree = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)
_array_header = st.fixed_dictionaries(
    {
        b"__ndarray__": st.booleans(),
        b"data": st.binary(max_size=64),
        b"dtype": st.one_of(
            st.sampled_from(_DTYPES + ["|O", "<c16", "|V4", "x"]), st.text(max_size=4)
        ),
        b"shape": st.lists(st.integers(-3, 20), max_size=4),
    }
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.one_of(
        st.binary(max_size=256),
        _tree.map(lambda t: msgpack.packb(t, use_bin_type=True)),
        st.dictionaries(
            st.sampled_from(["state", "noise", "obs", "method"]), _array_header, max_size=3
        ).map(msgpack.packb),
        st.dictionaries(
            st.sampled_from(["state", "noise", "method", "obs", "x"]),
            st.one_of(_tree, st.sampled_from(["infer", "infer_batch", "get_prefix_feature"])),
            max_size=4,
        ).map(lambda t: msgpack.packb(t, use_bin_type=True)),
    )
)
def test_fuzzed_requests_never_break_the_server(server, payload):
    ws, _ = _connect(server)
    try:
        reply = _roundtrip(ws, payload)
        if isinstance(reply, str):
            assert reply.startswith("dsrl-server error [") and "Traceback" not in reply
        else:
            assert "actions" in openpi_msgpack.unpackb(reply) or "prefix_feature" in (
                openpi_msgpack.unpackb(reply)
            )
        # Same connection still answers a valid request.
        ok = _roundtrip(ws, openpi_msgpack.packb({**_obs(), "noise": _noise(0)}))
        assert not isinstance(ok, str)
    finally:
        ws.close()


def test_8_clients_x_50_requests_none_lost(server, policy):
    obs = _obs(9)
    noises = {(c, r): _noise(1000 * c + r) for c in range(8) for r in range(50)}
    expected = {k: _expected(policy, obs, n) for k, n in noises.items()}
    failures: list[str] = []
    received = []
    lock = threading.Lock()

    def client_thread(c: int) -> None:
        try:
            client = WebsocketClientPolicy("127.0.0.1", server.port)
            for r in range(50):
                out = client.infer({**obs, "noise": noises[(c, r)]})
                if not np.allclose(out["actions"], expected[(c, r)], atol=1e-6):
                    failures.append(f"client {c} request {r}: reply does not match its noise")
                with lock:
                    received.append((c, r))
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"client {c}: {e!r}")

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[:5]
    assert sorted(received) == sorted(noises)


def test_slow_inference_does_not_block_health_or_other_connections():
    slow = NoiseAffinePolicy(delay_s=1.5)
    slow.sample_actions({"state": np.zeros((1, S), np.float32)}, np.zeros((1, H, D), np.float32))
    with PolicyServer(slow, port=0).running() as srv:
        ws, _ = _connect(srv)
        ws.send(openpi_msgpack.packb({**_obs(), "noise": _noise(0)}))
        time.sleep(0.2)  # the slow request is now inside the worker thread
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        ws2, meta = _connect(srv)  # a second client still gets its metadata at once
        err = _roundtrip(ws2, b"\xc1")  # and its bad request is answered without waiting
        elapsed = time.perf_counter() - t0
        assert meta["action_dim"] == A and "[bad_msgpack]" in err
        assert elapsed < 0.8, f"event loop blocked for {elapsed:.2f}s by a slow inference"
        assert not isinstance(ws.recv(timeout=10), str)
        ws.close()
        ws2.close()


def test_api_key_enforced(policy, monkeypatch):
    with PolicyServer(policy, port=0, api_key="s3cret").running() as srv:
        obs = {**_obs(), "noise": _noise(0)}
        for bad in (None, "wrong"):
            with pytest.raises(websockets.InvalidStatus) as info:
                WebsocketClientPolicy("127.0.0.1", srv.port, api_key=bad)
            assert info.value.response.status_code == 401
            assert b"API key" in info.value.response.body
        # openpi's client header ...
        assert WebsocketClientPolicy("127.0.0.1", srv.port, api_key="s3cret").infer(obs)
        # ... or a query parameter.
        ws = websockets.sync.client.connect(
            f"ws://127.0.0.1:{srv.port}/?api_key=s3cret", compression=None, proxy=None, legacy=True
        )
        assert "noise_shape" in msgpack_numpy.unpackb(ws.recv(timeout=5))
        ws.close()
        # Health checks stay open so load balancers need no secret.
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200


def test_rejects_objects_that_are_not_base_policies():
    with pytest.raises(TypeError, match="noise_shape"):
        PolicyServer(object())
