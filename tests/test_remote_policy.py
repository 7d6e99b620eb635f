"""RemotePolicy: the BasePolicy contract over a real websocket server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from websockets.asyncio.server import serve

from dsrl.base_policies.base import BasePolicy
from dsrl.base_policies.remote import RemotePolicy, RemotePolicyError, parse_address
from dsrl.serving import PolicyServer, msgpack_numpy

H, D, A, S = 5, 32, 4, 3


class StatePolicy:
    """Batched JAX policy: actions depend on noise and on the state."""

    noise_shape = (H, D)
    action_dim = A

    def __init__(self):
        self.w = jax.random.normal(jax.random.key(1), (D, A))
        self._fn = jax.jit(lambda n, s: n @ self.w + s[:, None, :1])

    def sample_actions(self, observation, noise):
        return np.asarray(self._fn(jnp.asarray(noise), jnp.asarray(observation["state"])))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(b: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = {
        "state": rng.standard_normal((b, S)).astype(np.float32),
        "prompt": ["do it"] * b,
    }
    return obs, rng.standard_normal((b, H, D)).astype(np.float32)


def test_remote_policy_matches_local_policy_batched():
    local = StatePolicy()
    with PolicyServer(local, port=0).running() as srv, RemotePolicy("127.0.0.1", srv.port) as rp:
        assert isinstance(rp, BasePolicy)
        assert rp.noise_shape == (H, D) and rp.action_dim == A
        obs, noise = _batch(3)
        out = rp.sample_actions(obs, noise)
        assert out.shape == (3, H, A) and out.dtype == np.float32
        np.testing.assert_allclose(out, local.sample_actions(obs, noise), atol=1e-6)
        # Same noise, same actions; single-observation `infer` agrees with the batch.
        np.testing.assert_array_equal(rp.sample_actions(obs, noise), out)
        single = rp.infer({"state": obs["state"][1], "prompt": "do it"}, noise[1])
        np.testing.assert_allclose(single["actions"], out[1], atol=1e-6)
        with pytest.raises(ValueError, match="noise has shape"):
            rp.sample_actions(obs, noise[:, :2])


def test_server_error_reply_is_raised_not_retried():
    with PolicyServer(StatePolicy(), port=0).running() as srv:
        rp = RemotePolicy("127.0.0.1", srv.port, max_attempts=3, backoff_s=0.01)
        obs, noise = _batch(2)
        with pytest.raises(RemotePolicyError, match="rejected the request.*inference_failed"):
            rp.sample_actions({"other": obs["state"]}, noise)
        assert rp.connections == 1
        # The connection is still usable afterwards.
        assert rp.sample_actions(obs, noise).shape == (2, H, A)
        rp.close()


def test_reconnects_after_server_restart():
    port = _free_port()
    local = StatePolicy()
    obs, noise = _batch(2, seed=3)
    first = PolicyServer(local, port=port).start()
    rp = RemotePolicy("127.0.0.1", port, max_attempts=8, backoff_s=0.1, max_backoff_s=0.5)
    before = rp.sample_actions(obs, noise)
    first.stop()

    restarted: list[PolicyServer] = []

    def restart_later() -> None:
        time.sleep(0.6)
        restarted.append(PolicyServer(local, port=port).start())

    t = threading.Thread(target=restart_later)
    t.start()
    try:
        after = rp.sample_actions(obs, noise)  # fails, backs off, reconnects, re-sends
        np.testing.assert_array_equal(after, before)
        assert rp.connections == 2
    finally:
        t.join()
        rp.close()
        for s in restarted:
            s.stop()


def test_clear_error_after_n_failures():
    port = _free_port()
    t0 = time.perf_counter()
    with pytest.raises(RemotePolicyError, match=rf"127.0.0.1:{port} unreachable after 3 attempts"):
        RemotePolicy("127.0.0.1", port, max_attempts=3, backoff_s=0.05)
    assert time.perf_counter() - t0 < 5


def test_wrong_api_key_is_a_clear_error():
    with PolicyServer(StatePolicy(), port=0, api_key="k").running() as srv:
        with pytest.raises(RemotePolicyError, match="API key"):
            RemotePolicy("127.0.0.1", srv.port, api_key="nope")
        assert RemotePolicy("127.0.0.1", srv.port, api_key="k").action_dim == A


def test_plain_openpi_server_is_refused():
    """A server that announces no noise_shape (upstream openpi) would silently drop the noise."""
    ready = threading.Event()
    state: dict = {}

    async def handler(ws):
        await ws.send(msgpack_numpy.packb({}))
        await ws.wait_closed()

    async def main():
        async with serve(handler, "127.0.0.1", 0) as server:
            state["port"] = server.sockets[0].getsockname()[1]
            state["stop"] = asyncio.get_running_loop().create_future()
            state["loop"] = asyncio.get_running_loop()
            ready.set()
            await state["stop"]

    t = threading.Thread(target=lambda: asyncio.run(main()))
    t.start()
    ready.wait(5)
    try:
        with pytest.raises(RemotePolicyError, match="not a dsrl policy server"):
            RemotePolicy("127.0.0.1", state["port"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set_result, None)
        t.join(5)


def test_parse_address():
    assert parse_address("gpu-box:8000") == ("gpu-box", 8000)
    for bad in ("gpu-box", ":80", "host:port"):
        with pytest.raises(ValueError, match="host:port"):
            parse_address(bad)


def test_serve_policy_script_subprocess():
    """scripts/serve_policy.py binds loopback, prints its port, and serves RemotePolicy."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "serve_policy.py"
    root = str(script.parents[1])  # this checkout's dsrl, not the one the venv has installed
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
    env.pop("DSRL_SERVER_API_KEY", None)
    cmd = [sys.executable, str(script), "--policy", "flow_random", "--port", "0", "--seed", "3"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving FlowMLPPolicy on ws://127.0.0.1:"), line
        with RemotePolicy("127.0.0.1", int(line.rsplit(":", 1)[1])) as rp:
            from dsrl.base_policies.flow_mlp import FlowMLPConfig, FlowMLPPolicy, init_params

            cfg = FlowMLPConfig()
            local = FlowMLPPolicy(cfg, init_params(cfg, 3))
            obs = {cfg.state_key: np.ones((2, cfg.state_dim), np.float32)}
            noise = (
                np.random.default_rng(0).standard_normal((2, *cfg.noise_shape)).astype(np.float32)
            )
            np.testing.assert_allclose(
                rp.sample_actions(obs, noise), local.sample_actions(obs, noise), atol=1e-5
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
