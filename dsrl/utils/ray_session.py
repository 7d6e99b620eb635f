"""A local Ray that leaves nothing behind, however its launcher ends.

`ray.shutdown()` stops a local Ray's daemons when the launcher exits normally. A launcher that
is SIGKILLed (or OOM-killed) never runs it, and some of Ray's daemons (DashboardAgent,
RuntimeEnvAgent) then live on, re-parented to PID 1, one of them listening on the node's
address, with the session's files under Ray's temp directory.

So a local Ray started by dsrl gets:
  * its own temp directory (`dsrl-ray-*` under the system temp dir), so that "this session's
    processes and files" is well defined: every Ray daemon of the session names that directory
    on its command line, and no other Ray on the machine does;
  * no dashboard UI, and loopback only: node IP 127.0.0.1, with Ray's single-machine mode
    (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, what Ray does by default on macOS and Windows).
    Without that mode Ray 2.60 on Linux replaces a node IP of 127.0.0.1 with the machine's
    address and its C++ servers (GCS, raylet, every worker's gRPC server) bind all interfaces;
    with it, every listening socket of the session is on 127.0.0.1 (tests/test_ray_session.py);
  * a watchdog: a small process in its own session that reads a pipe whose only write end the
    launcher holds. The kernel closes that end when the launcher dies, however it dies, and the
    watchdog then stops every process naming the temp directory and deletes the directory. A
    normal shutdown closes the pipe after `ray.shutdown()`, and the watchdog just tidies up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PREFIX = "dsrl-ray-"


_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_ray_kwargs(temp_dir: str) -> dict:
    """ray.init keyword arguments for a local Ray without dashboard UI, on loopback only, keeping
    its files in `temp_dir`. Puts this process (and the daemons it starts, which inherit the
    environment) in Ray's single-machine mode first."""
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    # Ray reads the variable when it is first imported; an imported Ray gets the same value.
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
    return {"include_dashboard": False, "_temp_dir": temp_dir, "_node_ip_address": "127.0.0.1"}


def _names(entry: Path, needle: str) -> bool:
    """Whether process `entry` (/proc/<pid>) names `needle` on its command line or holds a file
    under it open: Ray's agents rename themselves (`ray::DashboardAgent`) but keep their log
    files in the session directory open."""
    try:
        if needle.encode() in (entry / "cmdline").read_bytes():
            return True
        for fd in (entry / "fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(needle):
                    return True
    except OSError:
        pass
    return False


def session_processes(temp_dir: str, spare: int | None = None) -> list[int]:
    """PIDs of this session's processes (see `_names`), except this process, the watchdog and
    `spare` (the launcher: a normal shutdown must not stop it)."""
    needle = temp_dir.rstrip("/") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), spare):
            continue
        try:
            if b"dsrl.utils.ray_session" in (entry / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        if _names(entry, needle):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_session(temp_dir: str, grace_s: float = 3.0, spare: int | None = None) -> list[int]:
    """Stops every process of the session in `temp_dir` (SIGTERM, then SIGKILL after `grace_s`)
    and deletes the directory; returns the PIDs it signalled."""
    pids = session_processes(temp_dir, spare)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(_alive(p) for p in pids):
            break
    shutil.rmtree(temp_dir, ignore_errors=True)
    return pids


class RaySessionGuard:
    """Owns a local Ray session's temp directory and its watchdog (see the module docstring).
    Create it before `ray.init(**guard.init_kwargs())`; call `close()` after `ray.shutdown()`."""

    def __init__(self):
        # Short: Ray's unix socket paths live under it and must stay under 108 bytes.
        self.temp_dir = tempfile.mkdtemp(
            prefix=_PREFIX, dir="/tmp" if os.path.isdir("/tmp") else None
        )
        read_end, self._write_end = os.pipe()  # both close-on-exec: only the watchdog gets one
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "dsrl.utils.ray_session", self.temp_dir, str(os.getpid())],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to the launcher's group must not stop it
                env={**os.environ, "PYTHONPATH": _import_path()},
            )
        finally:
            os.close(read_end)

    def init_kwargs(self) -> dict:
        return local_ray_kwargs(self.temp_dir)

    def close(self, timeout_s: float = 30.0) -> None:
        """Lets the watchdog stop what is left of the session and delete its directory."""
        if self._write_end is None:
            return
        os.close(self._write_end)
        self._write_end = None
        try:
            self.watchdog.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
            self.watchdog.wait()
            stop_session(self.temp_dir, spare=os.getpid())


def _import_path() -> str:
    """PYTHONPATH under which the watchdog imports this same dsrl (installed or not)."""
    root = str(Path(__file__).resolve().parents[2])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.pathsep.join(dict.fromkeys(paths))


def _watch(temp_dir: str, launcher: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):  # EOF: the launcher closed its end, or died
        pass
    stop_session(temp_dir, spare=launcher)


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]))
