"""Ctrl-C (SIGINT) and SIGTERM on a real training process (the simulation launcher on the demo
task): the warm-up's replay buffer is checkpointed, one line says where, the exit status is
130 / 143 without a traceback; a second signal exits at once and the run still resumes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Launcher:
    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(
            [sys.executable, "examples/launch_train_sim.py", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text):
                return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        self.proc.kill()
        raise AssertionError(f"no {pattern!r} in:\n{self.text[-3000:]}")

    def finish(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code


@pytest.mark.slow  # ~60 s on the shared 2-core machine: three launcher processes
def test_ctrl_c_in_warm_up_keeps_the_buffer_and_a_second_signal_quits_at_once(tmp_path):
    # The warm-up never ends (start_online_updates far above what is collected).
    args = [
        "--env", "demo", "--start_online_updates", "1000000", "--max_steps", "100",
        "--eval_episodes", "0", "--wandb_mode", "disabled", "--logdir", str(tmp_path),
        "--config.replay.capacity=2000000",
    ]  # fmt: skip
    run = Launcher(args)
    run.wait_for(r"warm-up:.*env_steps=[1-9]")  # a few episodes collected
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.text
    assert "Traceback" not in run.text
    stopped = re.search(r"stopped by SIGINT at 0 gradient steps, (\d+) env steps, (\d+) transitions: "
                        r"checkpoint step 0 saved in (\S+);", run.text)  # fmt: skip
    assert stopped, run.text
    transitions = int(stopped.group(2))
    assert transitions > 0
    run_dir = Path(stopped.group(3)).parent

    # The resumed run has the buffer; two signals at once: the second exits at once, with its
    # own status (pending signals arrive lowest number first: SIGINT, then SIGTERM -> 143) ...
    run = Launcher(["--resume", str(run_dir)])
    resumed = run.wait_for(r"resumed .* buffer (\d+)")
    assert int(resumed.group(1)) == transitions
    run.wait_for(r"warm-up:")  # the loop (and its signal handlers) runs
    run.proc.send_signal(signal.SIGTERM)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() in (130, 143), run.text
    assert "again: exiting now" in run.text and "Traceback" not in run.text
    assert "stopped by" not in run.text  # it did not wait to save

    # ... and the run still resumes from an intact checkpoint.
    run = Launcher(["--resume", str(run_dir)])
    resumed = run.wait_for(r"resumed .* buffer (\d+)")
    assert int(resumed.group(1)) >= transitions
    run.wait_for(r"warm-up:")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.text
    assert "stopped by SIGTERM" in run.text


@pytest.mark.slow  # ~26 s: one launcher process
@pytest.mark.parametrize("max_steps", [64])
def test_max_steps_is_exact(tmp_path, max_steps):
    """The last update block is shortened: 64 gradient steps with blocks of 20, not 80."""
    args = [
        "--env", "demo", "--max_steps", str(max_steps), "--multi_grad_step", "20",
        "--start_online_updates", "8", "--eval_episodes", "0", "--wandb_mode", "disabled",
        "--logdir", str(tmp_path), "--batch_size", "8", "--no_progress",
    ]  # fmt: skip
    run = Launcher(args)
    assert run.finish(300) == 0, run.text
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == max_steps
    from dsrl.utils.logging import read_metrics

    assert max(r["step"] for r in read_metrics(run_dir)) == max_steps
