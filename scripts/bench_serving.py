"""Benchmark the policy server: wire overhead, concurrency, robustness. Prints ONE JSON line.

Starts `scripts/serve_policy.py` as a subprocess on 127.0.0.1 (a free port), then
  1. latency: median of `--requests` sequential calls with a 3-camera 224x224 uint8 observation,
     in-process `policy.sample_actions` vs `RemotePolicy.sample_actions` (and the unmodified
     openpi client); `overhead_ms` = remote minus in-process;
  2. concurrency: `--clients` x `--per_client` requests at once, each with its own noise; a reply
     counts as lost if it never arrives or does not equal the in-process actions for its noise;
  3. robustness: `--malformed` malformed frames (garbage, bad dtypes/shapes, NaN, unknown
     methods, bad array headers); each must get an error reply; then the server must still be
     alive and answer /healthz and a valid request.
Targets: overhead_ms <= 5, lost == 0, server_crashes == 0.

The policy (`--policy`, echoed in the output) is a random `Pi0Config.tiny()` Pi0 behind the real
Pi0Policy pipeline (DROID transforms, tokenizer, norm stats; default), or a seeded random flow MLP
of the demo's size (`flow_random`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsrl.base_policies.remote import RemotePolicy  # noqa: E402
from dsrl.serving import msgpack_numpy  # noqa: E402

CAMERAS = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")


def start_server(policy: str) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, str(REPO / "scripts" / "serve_policy.py"), "--port", "0"]
    cmd += ["--policy", policy, "--seed", "0"]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    line = proc.stdout.readline()
    if "ws://" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def make_policy(name: str):
    """The same seeded policy the server builds for `--policy <name> --seed 0`."""
    if name == "pi0_tiny":
        sys.path.insert(0, str(REPO / "scripts"))  # a sibling script, imported by name
        from serve_policy import build_tiny_pi0

        return build_tiny_pi0("droid", 0)
    from dsrl.base_policies.flow_mlp import FlowMLPConfig, FlowMLPPolicy, init_params

    config = FlowMLPConfig()
    return FlowMLPPolicy(config, init_params(config, 0))


def make_observation(name: str, policy, rng: np.random.Generator) -> dict:
    """One unbatched DROID-style observation: 3 cameras at 224x224 uint8, state, prompt."""
    obs = {
        f"observation/{cam}": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for cam in CAMERAS
    }
    obs["observation/joint_position"] = rng.standard_normal(7).astype(np.float32)
    obs["observation/gripper_position"] = rng.uniform(0, 1, 1).astype(np.float32)
    obs["prompt"] = "pick up the spoon"
    if name != "pi0_tiny":
        key, dim = policy.config.state_key, policy.config.state_dim
        obs[key] = rng.standard_normal(dim).astype(np.float32)
    return obs


def batched(obs: dict) -> dict:
    return {k: [v] if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()}


def paired_ms(fns, n: int) -> list[list[float]]:
    """Call the functions in turn `n` times; per-call ms for each. Interleaving makes every
    function see the same machine load (this box is shared), so their differences are fair."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, out in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000.0)
    return times


def malformed_frames(n: int, obs: dict, noise: np.ndarray, rng: np.random.Generator) -> list:
    pack = msgpack_numpy.packb
    small = {"observation/joint_position": obs["observation/joint_position"]}

    def header(data, dtype, shape):
        return msgpack.packb(
            {"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}}
        )

    makers = [
        lambda: rng.bytes(int(rng.integers(1, 200))),
        lambda: "text frame",
        lambda: pack([1, 2, 3]),
        lambda: pack({**small, "noise": noise[: int(rng.integers(1, noise.shape[0]))]}),
        lambda: pack({**small, "noise": noise.astype(np.int16)}),
        lambda: pack({**small, "noise": np.full_like(noise, np.nan)}),
        lambda: pack({**small, "noise": np.full_like(noise, -np.inf)}),
        lambda: pack({"method": "nope", "obs": small}),
        lambda: pack({"method": "get_prefix_rep", "obs": small}),
        lambda: pack({"method": "infer"}),
        lambda: header(b"abc", "<f4", [3]),
        lambda: header(b"\0" * 8, "|O", [1]),
        lambda: header(b"", "<f4", [-2]),
        lambda: msgpack.packb({7: 1}),
        lambda: pack({"wrong": np.zeros(3, np.float32), "noise": noise}),
    ]
    return [makers[i % len(makers)]() for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--policy", choices=["pi0_tiny", "flow_random"], default="pi0_tiny")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per_client", type=int, default=50)
    p.add_argument("--malformed", type=int, default=1000)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    proc, port = start_server(args.policy)  # compiles in parallel with the local copy
    local = make_policy(args.policy)
    obs = make_observation(args.policy, local, rng)
    noise = rng.standard_normal(local.noise_shape).astype(np.float32)
    result: dict = {"policy": args.policy}
    try:
        remote = RemotePolicy("127.0.0.1", port)
        bobs, bnoise = batched(obs), noise[None]
        for _ in range(5):  # compile both sides
            local.sample_actions(bobs, bnoise)
            remote.sample_actions(bobs, bnoise)
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        client = WebsocketClientPolicy("127.0.0.1", port)
        client.infer({**obs, "noise": noise})
        local_t, remote_t, openpi_t = paired_ms(
            [
                lambda: local.sample_actions(bobs, bnoise),
                lambda: remote.sample_actions(bobs, bnoise),
                lambda: client.infer({**obs, "noise": noise}),
            ],
            args.requests,
        )
        med = statistics.median
        result.update(
            in_process_ms=round(med(local_t), 3),
            remote_ms=round(med(remote_t), 3),
            openpi_client_ms=round(med(openpi_t), 3),
            # Median of per-pair differences: robust to load spikes hitting one side.
            overhead_ms=round(med([r - loc for r, loc in zip(remote_t, local_t, strict=True)]), 3),
            request_bytes=len(
                msgpack_numpy.packb({"method": "infer_batch", "obs": bobs, "noise": bnoise})
            ),
        )

        # Concurrency: every reply must arrive and match its own noise.
        total = args.clients * args.per_client
        noises = rng.standard_normal((total, *local.noise_shape)).astype(np.float32)
        expected = np.concatenate(
            [local.sample_actions(batched(obs), noises[i : i + 1]) for i in range(total)]
        )
        ok = np.zeros(total, bool)

        def run_client(c: int) -> None:
            try:
                rp = RemotePolicy("127.0.0.1", port)
                for r in range(args.per_client):
                    i = c * args.per_client + r
                    out = rp.sample_actions(batched(obs), noises[i : i + 1])
                    ok[i] = np.allclose(out[0], expected[i], atol=1e-5)
                rp.close()
            except Exception as e:  # noqa: BLE001 - counted as lost
                print(f"client {c}: {e!r}", file=sys.stderr)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=run_client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        result.update(
            requests=total, lost=int(total - ok.sum()), concurrent_rps=round(total / elapsed, 1)
        )

        # Robustness: malformed frames on one connection, each must be answered with an error.
        import websockets.sync.client

        ws = websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}", compression=None, max_size=None, proxy=None, legacy=True
        )
        ws.recv(timeout=10)
        answered = 0
        for frame in malformed_frames(args.malformed, obs, noise, rng):
            ws.send(frame)
            reply = ws.recv(timeout=30)
            answered += isinstance(reply, str) and reply.startswith("dsrl-server error [")
        ws.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        healthy = conn.getresponse().status == 200
        still_serves = np.allclose(
            remote.sample_actions(bobs, bnoise), local.sample_actions(bobs, bnoise)
        )
        result.update(
            malformed_sent=args.malformed,
            malformed_answered=answered,
            server_crashes=int(proc.poll() is not None or not healthy or not still_serves),
        )
        remote.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
