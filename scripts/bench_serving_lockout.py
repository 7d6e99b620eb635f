"""Can a well-behaved client always get in? Prints ONE JSON line (issue 25, items 3 and 4).

Starts `scripts/serve_policy.py` on 127.0.0.1 with an API key (1 s failure delay) and the default
connection cap (64), then, every client on 127.0.0.1 as behind the SSH tunnel the docs recommend:
  1. wrong_key_flood: a wrong key every 0.5 s (each on its own connection, for `--flood_s`)
     while a correct-key client opens `--handshakes` connections spread over the flood, each
     followed by one request: how many were served, how many refused (and with which status),
     handshake p50/max ms, and what the guesses got;
  2. idle_flood: `--idle` websocket connections that connect and stay silent (64: the cap full;
     the issue saw 63 idle ones plus a lingering one refuse a reconnecting client),
     then a RemotePolicy that (re)connects `--reconnects` times, each time making one request:
     how many were served, and the server's eviction / refusal counters.
Targets: every correct-key handshake and every reconnect served.

Usage: python scripts/bench_serving_lockout.py [--policy flow_random]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time

import numpy as np
from bench_serving import ABUSE_KEY, _ws, batched, make_observation, make_policy, start_server

from dsrl.base_policies.remote import RemotePolicy


def _wrong_key_flood(port: int, handshakes: int, flood_s: float, obs: dict, noise) -> dict:
    import websockets

    guesses: dict[str, int] = {}
    stop = threading.Event()

    def guess() -> None:
        try:
            _ws(port, key="wrong").close()
            outcome = "accepted"
        except websockets.InvalidStatus as e:
            outcome = f"http_{e.response.status_code}"
        except Exception as e:  # noqa: BLE001 - tallied
            outcome = type(e).__name__
        guesses[outcome] = guesses.get(outcome, 0) + 1

    def flood() -> None:
        threads = []
        while not stop.is_set():
            threads.append(threading.Thread(target=guess))
            threads[-1].start()
            time.sleep(0.5)
        for t in threads:
            t.join(timeout=30)

    flooder = threading.Thread(target=flood)
    flooder.start()
    served, refused, times = 0, {}, []
    for _ in range(handshakes):
        time.sleep(flood_s / handshakes)
        t0 = time.monotonic()
        try:
            with RemotePolicy("127.0.0.1", port, api_key=ABUSE_KEY, max_attempts=1) as rp:
                times.append((time.monotonic() - t0) * 1000)
                rp.sample_actions(obs, noise)
            served += 1
        except Exception as e:  # noqa: BLE001 - tallied
            kind = str(e)[:80]
            refused[kind] = refused.get(kind, 0) + 1
    stop.set()
    flooder.join(timeout=60)
    return {
        "handshakes": handshakes,
        "served": served,
        "refused": refused,
        "handshake_p50_ms": round(statistics.median(times), 1) if times else None,
        "handshake_max_ms": round(max(times), 1) if times else None,
        "guesses": guesses,
    }


def _idle_flood(port: int, idle: int, reconnects: int, obs: dict, noise) -> dict:
    held = []
    for _ in range(idle):
        try:
            held.append(_ws(port))
        except Exception:  # noqa: BLE001 - the cap may already refuse some
            break
    time.sleep(1.5)
    served, failures = 0, []
    for _ in range(reconnects):
        try:
            with RemotePolicy("127.0.0.1", port, api_key=ABUSE_KEY, max_attempts=1) as rp:
                rp.sample_actions(obs, noise)
            served += 1
        except Exception as e:  # noqa: BLE001 - reported
            failures.append(str(e)[:120])
    for ws in held:
        ws.close()
    return {"idle_held": len(held), "reconnects": reconnects, "served": served,
            "failures": failures[:3]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--policy", choices=["pi0_tiny", "flow_random"], default="flow_random")
    p.add_argument("--handshakes", type=int, default=20)
    p.add_argument("--flood_s", type=float, default=8.0)
    p.add_argument("--idle", type=int, default=64)
    p.add_argument("--reconnects", type=int, default=5)
    args = p.parse_args()
    flags = ["--api_key", ABUSE_KEY, "--auth_failure_delay_s", "1", "--max_batch", "1"]
    proc, port = start_server(args.policy, flags)
    local = make_policy(args.policy)
    obs = batched(make_observation(args.policy, local, np.random.default_rng(0)))
    noise = np.zeros((1, *local.noise_shape), np.float32)
    try:
        result = {"policy": args.policy}
        flood = _wrong_key_flood(port, args.handshakes, args.flood_s, obs, noise)
        result["wrong_key_flood"] = flood
        result["idle_flood"] = _idle_flood(port, args.idle, args.reconnects, obs, noise)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/stats", headers={"Authorization": f"Api-Key {ABUSE_KEY}"})
        result["server_stats"] = json.loads(conn.getresponse().read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
