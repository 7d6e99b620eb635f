"""scripts/bench_learner.py runs end to end and prints the one JSON line its figures come from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_learner_prints_its_figures_with_the_paired_conv_comparison():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "DSRL_HUGEPAGE_MALLOC": "0"}
    cmd = [sys.executable, "scripts/bench_learner.py", "--image_size", "32", "--batch_size", "8"]
    cmd += ["--steps", "2", "--paired_plain_conv", "2"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out.stdout
    figures = json.loads(lines[0])
    assert figures["num_compiles"] == 1
    assert figures["critic_loss_finite"] is True
    assert figures["fast_conv_grad"] is True and figures["hugepage_malloc"] is False
    assert figures["updates_per_s"] > 0 and figures["matmul_gflops"] > 0
    assert figures["update_gflop"] > 0 and 0 < figures["ratio"] < 1.5
    assert figures["plain_conv_updates_per_s"] > 0 and figures["fast_conv_speedup_paired"] > 0


@pytest.mark.slow  # compiles the 3 x 2048 networks (~1 min on the shared 2-core machine)
def test_bench_learner_state_mode_runs_the_mlp_only_learner_in_one_compile():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "DSRL_HUGEPAGE_MALLOC": "0"}
    cmd = [sys.executable, "scripts/bench_learner.py", "--observation", "state"]
    cmd += ["--batch_size", "8", "--steps", "2"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][0])
    assert figures["observation"] == "state" and figures["num_compiles"] == 1
    assert figures["critic_loss_finite"] is True and figures["update_gflop"] > 0
