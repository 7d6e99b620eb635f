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

`--abuse` runs the server-hardening benchmark instead (issue 16). The server runs with an API
key, a connection cap of 32, a 3 s idle and handshake timeout; a separate process probes
`/healthz` every 10 ms and a correct client (RemotePolicy) sends requests and checks every reply
against the in-process policy, both for the whole run, while these cases run one after another:
60 MB frame of nils, 40 MB map of 4M keys (both over twice the 16 MB limit), the same at 15 MB
(under it), many small lists, deep nesting, a 10 MB string, a 30 MB text frame, frames over the
size limits, batches over max_batch and of every uncompiled size,
NaN / inf / 3e38 values, 1,000 websocket connections held idle and 300 silent TCP connections,
and 8 threads guessing API keys (plus a right-key client from another address meanwhile).
The bench process itself (the attacker and the correct client) runs at nice 10, the server and
the prober at normal priority. It prints per case /healthz p50/p99/max (ms) and the server's peak
RSS, then crashes, lost correct
requests, RSS at start and end and compilations while serving.
Targets: crashes 0, lost_correct_requests 0, healthz p99 <= 100 ms in every case, rss_end_mb -
rss_start_mb <= 100, compiles_while_serving 0.

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


def start_server(policy: str, extra: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, str(REPO / "scripts" / "serve_policy.py"), "--port", "0"]
    cmd += ["--policy", policy, "--seed", "0", *(extra or [])]
    # PYTHONPATH: the server runs this checkout's dsrl, not whichever one the venv has installed
    # (an editable install of another worktree would otherwise be benchmarked instead).
    env = {
        **os.environ,
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
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


# ------------------------------------------------------------------------------------- abuse

ABUSE_KEY = "bench-abuse-key"
ABUSE_FLAGS = [
    "--api_key", ABUSE_KEY, "--max_connections", "32", "--idle_timeout_s", "3",
    "--open_timeout_s", "3", "--auth_failure_delay_s", "1",
]  # fmt: skip


def _probe_health(port: int, stop, out) -> None:
    """Child process: GET /healthz every 10 ms; sends back (start, latency_ms or -1) pairs. A
    process of its own, so the bench's own work cannot delay the probes."""
    samples = []
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError:
            ok = False
        samples.append((t0, (time.monotonic() - t0) * 1000.0 if ok else -1.0))
        time.sleep(0.01)
    out.send(samples)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, _rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.02)


def _ws(port: int, key: str | None = ABUSE_KEY, source: str | None = None):
    import socket

    import websockets.sync.client

    sock = None
    if source is not None:
        sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    headers = {"Authorization": f"Api-Key {key}"} if key else None
    ws = websockets.sync.client.connect(
        f"ws://127.0.0.1:{port}",
        compression=None,
        max_size=None,
        proxy=None,
        legacy=True,
        additional_headers=headers,
        open_timeout=30,
        sock=sock,
    )
    ws.recv(timeout=30)
    return ws


def _send_frames(port: int, frames: list) -> dict:
    """Each frame on one connection; tally the replies' error kinds (or how it ended)."""
    import websockets

    kinds: dict[str, int] = {}
    ws = _ws(port)
    for frame in frames:
        try:
            ws.send(frame)
            reply = ws.recv(timeout=120)
            kind = reply.split("]")[0].split("[")[-1] if isinstance(reply, str) else "actions"
        except websockets.ConnectionClosed as e:
            kind = f"closed_{e.rcvd.code if e.rcvd else 'none'}"
            ws = _ws(port)
        kinds[kind] = kinds.get(kind, 0) + 1
    ws.close()
    return kinds


def _flood(port: int, n_ws: int, n_tcp: int) -> dict:
    """n_ws websocket clients connect at once and stay silent; n_tcp TCP sockets never even
    send a handshake. Returns how each ended (refused at the cap, closed for idleness, ...)."""
    import asyncio
    import socket

    import websockets
    from websockets.asyncio.client import connect

    async def one_ws() -> str:
        try:
            ws = await connect(
                f"ws://127.0.0.1:{port}",
                additional_headers={"Authorization": f"Api-Key {ABUSE_KEY}"},
                compression=None,
                proxy=None,
                open_timeout=60,
            )
        except websockets.InvalidStatus as e:
            return f"http_{e.response.status_code}"
        except Exception as e:  # noqa: BLE001 - tallied
            return type(e).__name__
        try:
            await ws.recv()  # metadata
            await asyncio.wait_for(ws.recv(), 60)
            return "got_a_message"
        except websockets.ConnectionClosed as e:
            return f"closed_{e.rcvd.code if e.rcvd else 'none'}"
        except TimeoutError:
            return "still_open_after_60s"
        finally:
            await ws.close()

    async def one_tcp() -> str:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            data = await asyncio.wait_for(loop.sock_recv(sock, 1), 60)
            return "tcp_closed" if data == b"" else "tcp_got_data"
        except TimeoutError:
            return "tcp_still_open_after_60s"
        except OSError as e:
            return f"tcp_{type(e).__name__}"
        finally:
            sock.close()

    async def run() -> list[str]:
        return await asyncio.gather(
            *[one_ws() for _ in range(n_ws)], *[one_tcp() for _ in range(n_tcp)]
        )

    tally: dict[str, int] = {}
    for outcome in asyncio.run(run()):
        tally[outcome] = tally.get(outcome, 0) + 1
    return tally


def _guess_keys(port: int, threads: int, duration_s: float) -> dict:
    import websockets

    tally: dict[str, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + duration_s

    def attacker(i: int) -> None:
        n = 0
        while time.monotonic() < end:
            n += 1
            try:
                _ws(port, key=f"guess-{i}-{n}").close()
                outcome = "accepted"
            except websockets.InvalidStatus as e:
                outcome = f"http_{e.response.status_code}"
            except Exception as e:  # noqa: BLE001 - tallied
                outcome = type(e).__name__
            with lock:
                tally[outcome] = tally.get(outcome, 0) + 1

    workers = [threading.Thread(target=attacker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    # Meanwhile a right-key client from another address connects and is served.
    time.sleep(duration_s / 3)
    t0 = time.monotonic()
    try:
        _ws(port, source="127.0.0.2").close()
        tally["other_address_right_key_ms"] = round((time.monotonic() - t0) * 1000, 1)
    except Exception as e:  # noqa: BLE001 - reported
        tally["other_address_failed"] = repr(e)[:200]
    for w in workers:
        w.join()
    tally["keys_checked_per_s"] = round(tally.get("http_401", 0) / duration_s, 2)
    return tally


def _abuse_cases(port: int, local, obs: dict, noise: np.ndarray, max_batch: int) -> list:
    pack = msgpack_numpy.packb

    def nils(n: int) -> bytes:
        return b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n

    def str_map(n: int) -> bytes:  # n distinct 8-char str keys -> nil: 10 bytes per entry
        return b"\xdf" + n.to_bytes(4, "big") + b"".join(b"\xa8%08d\xc0" % i for i in range(n))

    # 100k lists of 15 nils: no single container is big, the total (1.6M items) is.
    small_lists = b"\xdd" + (100_000).to_bytes(4, "big") + (b"\x9f" + b"\xc0" * 15) * 100_000
    bobs = batched(obs)

    def batch(b: int, **override) -> bytes:
        rows = {
            k: v * b if isinstance(v, list) else np.repeat(v, b, axis=0) for k, v in bobs.items()
        }
        rows.update(override)
        return pack({"method": "infer_batch", "obs": rows, "noise": np.repeat(noise[None], b, 0)})

    state_key = next(k for k, v in obs.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f")
    state = obs[state_key]
    return [
        # The frames are over twice the 16 MB limit: closed (1009) at the header. The
        # 15 MB ones are under it: read, then refused by the item limit before decoding.
        ("nil_frame_60mb", lambda: _send_frames(port, [nils(60_000_000)] * 3)),
        ("nil_frame_15mb", lambda: _send_frames(port, [nils(15_000_000)] * 3)),
        ("map_4m_keys_40mb", lambda: _send_frames(port, [str_map(4_000_000)] * 2)),
        ("map_1.5m_keys_15mb", lambda: _send_frames(port, [str_map(1_500_000)] * 2)),
        ("many_small_lists", lambda: _send_frames(port, [small_lists] * 5)),
        ("deep_nesting", lambda: _send_frames(port, [b"\x91" * 1_000_000 + b"\xc0"] * 3)),
        ("string_10mb", lambda: _send_frames(port, [pack({"x" * 10_000_000: 1})] * 2)),
        ("text_frame_30mb", lambda: _send_frames(port, ["t" * 30_000_000] * 2)),
        (
            "oversized_frames",
            lambda: _send_frames(port, [b"\x00" * 30_000_000, b"\x00" * 200_000_000]),
        ),
        (
            "batch_sizes",
            lambda: _send_frames(port, [batch(b) for b in range(1, max_batch + 3)]),
        ),
        (
            "non_finite",
            lambda: _send_frames(
                port,
                [
                    pack({**obs, state_key: np.full_like(state, np.nan), "noise": noise}),
                    pack({**obs, state_key: np.full_like(state, np.inf), "noise": noise}),
                    pack({**obs, state_key: np.full_like(state, 3e38), "noise": noise}),
                    pack({**obs, "noise": np.full_like(noise, 3e38)}),
                    pack({**obs, "noise": noise.astype(np.float64) * 1e300}),
                ],
            ),
        ),
        ("connection_flood", lambda: _flood(port, 1000, 300)),
        ("wrong_api_keys", lambda: _guess_keys(port, 8, 6.0)),
    ]


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 1)


def run_abuse(args: argparse.Namespace) -> dict:
    import multiprocessing

    rng = np.random.default_rng(0)
    proc, port = start_server(args.policy, ABUSE_FLAGS + ["--max_batch", str(args.max_batch)])
    local = make_policy(args.policy)
    obs = make_observation(args.policy, local, rng)
    noise = rng.standard_normal(local.noise_shape).astype(np.float32)
    noises = rng.standard_normal((16, *local.noise_shape)).astype(np.float32)
    expected = [local.sample_actions(batched(obs), n[None])[0] for n in noises]
    result: dict = {"mode": "abuse", "policy": args.policy, "max_batch": args.max_batch}
    ctx = multiprocessing.get_context("spawn")
    stop, (recv_end, send_end) = ctx.Event(), ctx.Pipe(duplex=False)
    prober = ctx.Process(target=_probe_health, args=(port, stop, send_end), daemon=True)
    correct = {"sent": 0, "ok": 0, "errors": []}
    done = threading.Event()

    def correct_client() -> None:
        rp = RemotePolicy("127.0.0.1", port, api_key=ABUSE_KEY, max_attempts=20)
        i = 0
        while not done.is_set():
            i += 1
            correct["sent"] += 1
            try:
                out = rp.sample_actions(batched(obs), noises[i % 16][None])
                if np.allclose(out[0], expected[i % 16], atol=1e-5):
                    correct["ok"] += 1
                else:
                    correct["errors"].append("wrong actions")
            except Exception as e:  # noqa: BLE001 - a lost request
                correct["errors"].append(repr(e)[:200])
            time.sleep(0.02)
        correct["reconnects"] = rp.connections - 1
        rp.close()

    sampler = _RssSampler(proc.pid)
    phases: list[tuple[str, float, float, float, object]] = []
    try:
        time.sleep(1.0)
        rss_start = _rss_mb(proc.pid)
        prober.start()
        # The abuse is generated here, on the server's own 2 cores; on a real deployment it comes
        # from other machines. Lower this process's priority (the server and the prober keep
        # theirs) so the figures measure the server, not the attacker competing for the CPU.
        os.nice(10)
        client = threading.Thread(target=correct_client, daemon=True)
        client.start()
        sampler.start()
        t0 = time.monotonic()
        time.sleep(2.0)
        phases.append(("baseline", t0, time.monotonic(), rss_start, {}))
        for name, case in _abuse_cases(port, local, obs, noise, args.max_batch):
            sampler.peak = 0.0
            t0 = time.monotonic()
            outcome = case()
            time.sleep(0.5)  # the tail of the case's effects
            phases.append((name, t0, time.monotonic(), sampler.peak, outcome))
            print(f"{name}: {outcome}", file=sys.stderr, flush=True)
        time.sleep(4.0)  # idle connections closed, memory settled
        done.set()
        client.join(timeout=60)
        stop.set()
        samples = recv_end.recv()
        prober.join(timeout=30)
        sampler.stop.set()
        rss_end = _rss_mb(proc.pid)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/stats", headers={"Authorization": f"Api-Key {ABUSE_KEY}"})
        stats = json.loads(conn.getresponse().read())
        alive = proc.poll() is None
    finally:
        done.set()
        stop.set()
        proc.terminate()
        proc.wait(timeout=30)

    cases = {}
    worst = 0.0
    for name, t0, t1, peak, outcome in phases:
        lat = [ms for start, ms in samples if t0 <= start < t1]
        good = sorted(ms for ms in lat if ms >= 0)
        entry = {
            "healthz_probes": len(lat),
            "healthz_failed": len(lat) - len(good),
            "healthz_p50_ms": _quantile(good, 0.5),
            "healthz_p99_ms": _quantile(good, 0.99),
            "healthz_max_ms": round(good[-1], 1) if good else None,
            "rss_peak_mb": round(peak, 1),
            "outcome": outcome,
        }
        worst = max(worst, entry["healthz_p99_ms"] or float("inf"))
        cases[name] = entry
    result.update(
        cases=cases,
        healthz_p99_ms_worst=worst,
        crashes=int(not alive),
        correct_requests=correct["sent"],
        lost_correct_requests=correct["sent"] - correct["ok"],
        lost_examples=correct["errors"][:3],
        correct_client_reconnects=correct.get("reconnects"),
        rss_start_mb=round(rss_start, 1),
        rss_end_mb=round(rss_end, 1),
        rss_delta_mb=round(rss_end - rss_start, 1),
        compiles_at_startup=stats["compiles_at_startup"],
        compiles_while_serving=stats["compiles_while_serving"],
        server_stats=stats,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--policy", choices=["pi0_tiny", "flow_random"], default="pi0_tiny")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per_client", type=int, default=50)
    p.add_argument("--malformed", type=int, default=1000)
    p.add_argument("--abuse", action="store_true", help="run the abuse benchmark instead")
    p.add_argument("--max_batch", type=int, default=16, help="server --max_batch (--abuse)")
    args = p.parse_args()
    if args.abuse:
        print(json.dumps(run_abuse(args)))
        return

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
