"""scripts/run_real.sh itself, as an operator runs it: in a terminal (a pseudo-terminal that is
the launcher's controlling terminal, so Ctrl-C is a real SIGINT from the tty driver), with
ROBOT=sim and a tiny Pi0 served by scripts/serve_policy.py on 127.0.0.1, keys typed at the
prompts; then stopped with Ctrl-C and with SIGTERM, and resumed."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# CPU-sized on top of run_real.sh's own rehearsal settings: 20-step episodes (2 queries of 10).
SMALL = [
    "--max_episode_steps", "20", "--config.env_kwargs.control_hz=0", "--batch_size", "8",
    "--hidden_dims", "32", "--resize_image", "32", "--multi_grad_step", "3",
    "--update_block", "4", "--config.first_update_grad_steps=4", "--wandb_mode", "disabled",
    "--checkpoint_interval", "1000",
]  # fmt: skip


@pytest.fixture(scope="module")
def policy_server():
    """A tiny Pi0 with DROID's transforms behind scripts/serve_policy.py (one batch size, so
    its start-up compiles once)."""
    proc = subprocess.Popen(
        [sys.executable, "scripts/serve_policy.py", "--policy", "pi0_tiny", "--robot", "droid",
         "--port", "0", "--batch_sizes", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        match = re.search(r"ws://([\d.]+):(\d+)", line)
        assert match, f"server did not start: {line!r}"
        yield f"{match.group(1)}:{match.group(2)}"
    finally:
        proc.terminate()
        proc.wait(30)


class Terminal:
    """run_real.sh on a pseudo-terminal that is its controlling terminal."""

    def __init__(self, server: str, logdir: Path, args: list[str]):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        env = dict(os.environ, ROBOT="sim", POLICY_SERVER=server, EXP=str(logdir))

        def controlling_tty():  # runs in the child before exec
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            ["bash", "scripts/run_real.sh", *args],
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=controlling_tty,  # noqa: PLW1509 - no threads in this process need it
        )
        os.close(slave)
        self.text = ""
        self.consumed = ""  # the output up to the end of the last expected match

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match:
        """Reads output until `pattern` appears after what earlier expects consumed."""
        start = len(self.consumed)
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.text, start)
            if match:
                self.consumed = self.text[: match.end()]
                return match
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {pattern!r} in the output:\n{self.text[-3000:]}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], min(timeout, 1.0))
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return False
            if not data:
                return False
            self.text += data.decode(errors="replace")
        return True

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while self._read(0.05) and select.select([self.master], [], [], 0)[0]:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError(f"run_real.sh did not exit:\n{self.text[-3000:]}")
        os.close(self.master)
        return self.proc.returncode


def _metrics(run_dir: Path) -> list[dict]:
    from dsrl.utils.logging import read_metrics

    return read_metrics(run_dir)


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_run_real_sh_rehearsal_labels_ctrl_c_sigterm_and_resume(policy_server, tmp_path):
    # 1. Episode 1 runs its 20 steps and is labelled a success; its 2 transitions owe
    # 4 + 2 x 3 = 10 gradient steps: blocks of 4, 4, then 2 (exactly max_steps 10).
    term = Terminal(policy_server, tmp_path, [*SMALL, "--max_steps", "10"])
    term.expect(r"episode 1: reset the scene, then press Enter")
    term.type(b"\n")
    term.expect(r"episode over \(20 steps\)\. Success\? press 1")
    term.type(b"1")
    assert term.wait() == 0, term.text
    assert "Traceback" not in term.text
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert _steps(run_dir) == [10]
    last = _metrics(run_dir)[-1]
    assert last["step"] == 10 and last["num_online_samples"] == 2 and last["env_steps"] == 20
    assert "training/critic_loss" in last

    # 2. Resume with a larger budget; Ctrl-C at the next scene-reset prompt stops the run there
    # (no Enter needed): one line says where the checkpoint is, exit 130, no traceback.
    term = Terminal(policy_server, tmp_path, ["--resume", str(run_dir), "--max_steps", "40"])
    term.expect(r"episode 2: reset the scene")
    term.type(b"\n")
    term.expect(r"Success\? press 1")
    term.type(b"0")
    term.expect(r"episode 3: reset the scene")
    term.type(b"\x03")  # Ctrl-C: the tty driver sends SIGINT
    assert term.wait() == 130, term.text
    assert "Traceback" not in term.text
    stopped = re.search(r"stopped by SIGINT at (\d+) gradient steps.*saved in (\S+?);", term.text)
    assert stopped, term.text
    # Episode 2's 2 transitions owed 6 steps: one block of 4 ran before episode 3's prompt.
    assert int(stopped.group(1)) == 14 and _steps(run_dir)[-1] == 14
    assert Path(stopped.group(2)) == run_dir / "checkpoints"

    # 3. Resume again; SIGTERM during episode 3's label prompt: the label is still taken, the
    # episode is kept, and the run checkpoints and exits 143.
    term = Terminal(policy_server, tmp_path, ["--resume", str(run_dir), "--max_steps", "40"])
    term.expect(r"episode 3: reset the scene")
    term.type(b"\n")
    term.expect(r"Success\? press 1")
    term.proc.send_signal(signal.SIGTERM)
    term.expect(r"SIGTERM: finishing the current chunk")
    term.type(b"1")
    assert term.wait() == 143, term.text
    assert "Traceback" not in term.text
    rows = [r for r in _metrics(run_dir) if "num_online_trajs" in r]
    assert rows[-1]["num_online_trajs"] == 3 and rows[-1]["env_steps"] == 60
