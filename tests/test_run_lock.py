"""The run-directory lock with real processes: a second holder is refused naming the first's PID
and host; a SIGKILLed holder's lock is taken over, by exactly one of two racing takers."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dsrl.utils.run_lock import LOCK_FILE, RunDirLock, RunDirLockedError

_HOLD = """
import sys, time
from dsrl.utils.run_lock import RunDirLock
lock = RunDirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""

_TAKE = """
import sys
from dsrl.utils.run_lock import RunDirLock, RunDirLockedError
try:
    lock = RunDirLock(sys.argv[1]).acquire()
except RunDirLockedError:
    print("refused", flush=True)
    sys.exit(0)
print("took", lock.took_over_from(), flush=True)
sys.stdin.read()  # hold until the test closes stdin
"""


def _holder(run_dir, seconds=60.0):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run_dir), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_pid_and_host(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunDirLockedError) as info:
            RunDirLock(tmp_path).acquire()
        message = str(info.value)
        assert f"PID {proc.pid} on host {socket.gethostname()}" in message
        assert "\n" not in message and "stop that run first" in message
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_sigkilled_run_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = RunDirLock(tmp_path).acquire()
    try:
        assert lock.held
        assert f"PID {proc.pid}" in lock.took_over_from()
        # The file now names this process, for the next refusal.
        with pytest.raises(RunDirLockedError, match=f"PID {os.getpid()} "):
            RunDirLock(tmp_path).acquire()
    finally:
        lock.release()
    # A clean release leaves nothing to report as a dead holder.
    with RunDirLock(tmp_path) as again:
        assert again.took_over_from() is None


def test_two_racing_takers_of_a_stale_lock_one_wins(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_FILE).read_text()  # the dead holder's PID is still in the file
    for _ in range(3):
        takers = [
            subprocess.Popen(
                [sys.executable, "-c", _TAKE, str(tmp_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 60
        outcomes = [t.stdout.readline().split()[0] for t in takers]
        assert time.monotonic() < deadline
        assert sorted(outcomes) == ["refused", "took"]
        for t in takers:
            t.stdin.close()
            t.wait()
