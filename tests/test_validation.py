"""Bad loop and learner values end the launcher with one line naming the flag and the fix,
before any work (no run directory is left); a run directory has one writer at a time; a resumed
run's config.json and algorithm are checked before its checkpoints are touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsrl.training import validation
from dsrl.training.build import build_run
from dsrl.training.cli import main_sim
from dsrl.training.config_io import load_config, write_config_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed -1: a seed must be an integer in [0, 4294967295]"),
        (["--hidden_dims", ""], "--hidden_dims is empty: give one layer width per layer"),
        (["--hidden_dims", "64", "x"], "--hidden_dims '64 x': layer widths must be integers"),
        (["--critic_lr", "1e30"], "--critic_lr 1e+30: a learning rate must be in (0, 1]"),
        (["--actor_lr", "5"], "--actor_lr 5: a learning rate must be in (0, 1]"),
        (["--actor_lr", "nan"], "actor_lr must be a finite number > 0, got nan; set it with"),
        (["--batch_size", "1e12"], "--batch_size 1000000000000: one sampled batch needs"),
        (
            ["--num_envs", "100000", "--config.env.mode=subprocess"],
            "--num_envs 100000: 100000 subprocess envs need at least",
        ),
    ],
)
def test_bad_values_are_one_line_before_any_work(capsys, tmp_path, argv, message):
    logdir = tmp_path / "logs"
    with pytest.raises(SystemExit) as info:
        main_sim(["--env", "demo", "--logdir", str(logdir), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not logdir.exists() or not any(logdir.iterdir())  # no run directory left


def test_memory_estimates_use_the_transition_size():
    config = load_config("demo", flags={"batch_size": "4096"})
    example = {"observations": {"pixels": np.zeros((10, 10, 3), np.uint8)}, "x": np.zeros(1000)}
    assert validation.transition_bytes(example) == 8300
    # 4096 x 8300 B x 4 copies = 130 MiB: refused with 100 MiB, accepted with 10 GiB.
    with pytest.raises(validation.InvalidValueError, match="--batch_size 4096"):
        validation.check_memory(config, example, available=100 * 2**20)
    assert validation.check_memory(config, example, available=10 * 2**30) == []
    big_replay = load_config("demo", overrides=[("replay.capacity", "10000000")])
    with pytest.raises(validation.InvalidValueError, match="--config.replay.capacity=10000000"):
        validation.check_memory(big_replay, example, available=10 * 2**30)


def _saved_run(tmp_path: Path, **change) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config_file(run_dir, load_config("demo"))
    tree = json.loads((run_dir / "config.json").read_text())
    for section, values in change.items():
        tree[section].update(values)
    (run_dir / "config.json").write_text(json.dumps(tree))
    return run_dir


def test_resume_with_another_algorithm_names_the_mismatch(capsys, tmp_path):
    run_dir = _saved_run(tmp_path)
    with pytest.raises(SystemExit):
        main_sim(["--resume", str(run_dir), "--algorithm", "dsrl_na"])
    err = capsys.readouterr().err
    assert "--algorithm dsrl_na" in err and "trained with --algorithm pixel_sac" in err
    assert "drop --algorithm" in err and "skipped" not in err


def test_wrong_type_in_config_json_names_the_file(capsys, tmp_path):
    run_dir = _saved_run(tmp_path, loop={"batch_size": "big"})
    with pytest.raises(SystemExit):
        main_sim(["--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert f"{run_dir / 'config.json'}: loop.batch_size must be an integer" in err


# The first launcher, reduced to what matters here (building a whole run would cost ~15 s):
# the lock `build_run` takes, held by another live process.
HOLD_RUN = """
import sys, time
from dsrl.utils.run_lock import RunDirLock

lock = RunDirLock(sys.argv[1]).acquire()
print("built", flush=True)
time.sleep(600)
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_RUN, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout.readline().strip() == "built"
    return holder


def test_second_launcher_on_a_run_directory_is_refused(capsys, tmp_path):
    run_dir = _saved_run(tmp_path)
    first = _hold(run_dir)
    try:
        before = sorted(p.name for p in run_dir.iterdir())
        with pytest.raises(SystemExit) as info:
            main_sim(["--resume", str(run_dir)])
        assert info.value.code == 1
        err = capsys.readouterr().err
        assert f"is in use by another run (PID {first.pid} on host" in err
        assert "stop that run first" in err and err.count("\n") == 1
        assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.slow  # ~20 s on a shared 2-core machine: one whole run is built
def test_a_run_directory_whose_launcher_was_killed_is_taken_over(tmp_path):
    run_dir = _saved_run(tmp_path)
    first = _hold(run_dir)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    lines = []
    with build_run(load_config(resume=run_dir), run_dir, log=lines.append) as run:
        assert run.run_dir == run_dir
    assert any(f"PID {first.pid}" in line and "taking the run directory over" for line in lines)
