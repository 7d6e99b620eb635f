"""scripts/bench_scaleout.py runs end to end on both backends and prints its one JSON line
(figures are not checked: speed belongs to the benchmark, not to a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]


def test_bench_scaleout_prints_both_backends_and_the_two_device_learner():
    cmd = [sys.executable, "scripts/bench_scaleout.py", "--workers", "1", "--rounds", "1"]
    cmd += ["--policy_latency_ms", "1", "--learner_devices", "1,2", "--learner_blocks", "1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "DSRL_HUGEPAGE_MALLOC": "0"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out.stdout
    figures = json.loads(lines[0])
    for backend in ("subprocess", "ray"):
        row = figures["loop"][backend]["1"]
        assert row["steps_per_s"] > 0 and row["env_steps"] > 0
        assert row["bound"] in ("base_policy", "cores", "env")
    assert figures["ray_over_subprocess"]["1"] > 0
    learner = figures["learner"]
    assert "error" not in learner, learner["error"]  # the learner child's last stderr line
    assert learner["local_devices"] == 2  # the forced host devices reached the child
    assert learner["updates_per_s_1_devices"] > 0 and learner["speedup_2_devices"] > 0
