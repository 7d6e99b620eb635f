"""A launcher with a local Ray leaves no Ray process or file behind, however it ends: SIGKILLed
(its watchdog stops the session) or closed normally. Real Ray, real processes (~15 s each)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from dsrl.utils.ray_session import session_processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LAUNCHER = """
import sys, time
from dsrl.envs import ray_workers

if __name__ == "__main__":
    assert ray_workers.ensure_ray(num_cpus=1)
    import ray

    @ray.remote(num_cpus=1)
    def one():
        return 1

    assert ray.get(one.remote()) == 1  # a worker process exists too
    print(ray_workers._LOCAL_SESSION.temp_dir, flush=True)
    if sys.argv[1] == "clean":
        ray_workers.shutdown_local_ray()
        print("closed", flush=True)
    else:
        time.sleep(600)
"""


def _start(tmp_path, how: str) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, str(script), how], stdout=subprocess.PIPE, text=True, env=env
    )
    temp_dir = proc.stdout.readline().strip()
    assert temp_dir and Path(temp_dir).is_dir(), "the launcher did not start Ray"
    return proc, temp_dir


def _wait_until_gone(temp_dir: str, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := session_processes(temp_dir)) or Path(temp_dir).exists():
        if time.monotonic() > deadline:
            return left or [-1]
        time.sleep(0.2)
    return []


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listening_addresses(pids: list[int]) -> list[str]:
    """The local addresses of the TCP sockets these processes listen on (from /proc/net/tcp*)."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
            addresses.append(_format_ip(words))
    return addresses


def _format_ip(packed: bytes) -> str:
    import ipaddress

    ip = ipaddress.ip_address(packed)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


@pytest.mark.slow
def test_sigkilled_launcher_leaves_no_ray_process_or_file(tmp_path):
    proc, temp_dir = _start(tmp_path, "wait")
    try:
        pids = session_processes(temp_dir)
        names = b" ".join(Path(f"/proc/{p}/cmdline").read_bytes() for p in pids)
        # The agents rename themselves; they are found by the session files they hold open.
        assert b"DashboardAgent" in names and b"RuntimeEnvAgent" in names
        # Nothing of a local Ray is reachable from another machine.
        listening = _listening_addresses([proc.pid, *pids])
        assert listening, "found no listening socket of the Ray session"
        exposed = [a for a in listening if a not in LOOPBACK]
        assert not exposed, f"a local Ray listens beyond loopback: {sorted(set(exposed))}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    left = _wait_until_gone(temp_dir)
    assert left == [], f"left behind: {left}, {temp_dir} exists: {Path(temp_dir).exists()}"


@pytest.mark.slow
def test_normal_shutdown_leaves_no_ray_process_or_file_and_spares_the_launcher(tmp_path):
    proc, temp_dir = _start(tmp_path, "clean")
    assert proc.stdout.readline().strip() == "closed"
    assert proc.poll() is None or proc.returncode == 0  # the watchdog did not stop it
    assert proc.wait(timeout=60) == 0
    assert _wait_until_gone(temp_dir, timeout_s=10) == []
