"""The prepared GPU check and its set-up switch, on CPU.

scripts/gpu_check.py runs end to end in a real subprocess in its `--small` mode (tiny random Pi0,
small learner batch, a short loop of the LIBERO preset on the demo_pi0 env with two env
workers): one JSON line, every field there and finite, a failing section reported while the
others still run, a section killed at the global deadline. The offline mode (`gpu_check.sh
--bare --out DIR`) installs a real wheel with pip and no index and leaves its JSON and log in
DIR. scripts/setup_env.sh's CUDA switch runs on a copy of the real requirement files with a
stand-in `python` that records the pip calls instead of installing.
(scripts/rehearse_gpu_check.sh is the full offline rehearsal: it needs the package index.)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
FRACTIONS = ("env_frac", "pi0_frac", "update_frac", "agent_frac", "io_frac", "other_frac")


def _gpu_check(*args: str, timeout: float, shell: bool = False, wheels: Path | None = None) -> dict:
    """Runs the check in a subprocess; `shell`: through scripts/gpu_check.sh with the set-up
    skipped (this interpreter's environment first on PATH; `wheels`: `--bare` with that folder
    of carried wheels), else gpu_check.py directly."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", MUJOCO_GL="egl", PYTHONPATH=str(ROOT))
    if shell:
        env["DSRL_SKIP_SETUP"] = "1"
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        cmd = ["bash", str(ROOT / "scripts" / "gpu_check.sh")]
        if wheels is not None:
            env["DSRL_WHEELS"] = str(wheels)
            env["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple"  # nothing answers there
            cmd.append("--bare")
    else:
        cmd = [sys.executable, str(SCRIPT)]
    proc = subprocess.run(
        [*cmd, "--small", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout[-3000:]  # ONE JSON line, nothing else on stdout
    return json.loads(lines[0])


def _positive(section: dict, *keys: str) -> None:
    for key in keys:
        value = section[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


@pytest.mark.slow
def test_small_check_runs_every_section_end_to_end():
    report = _gpu_check(timeout=900)
    assert report["errors"] == [], {s: report[s].get("error") for s in report["errors"]}
    assert report["mode"] == "small" and report["platform"] == "cpu"
    assert report["versions"]["jax"] == report["pi0"]["jax_version"]  # the machine's stack
    assert report["sections"] == ["pi0", "learner", "loop"]
    assert report["wall_s"] <= report["deadline_s"]

    pi0 = report["pi0"]
    assert pi0["backend"] == "cpu" and pi0["variant"] == "tiny" and pi0["num_steps"] == 10
    assert pi0["param_dtypes"] == ["bfloat16"] and pi0["dtype"] == "bfloat16"
    _positive(
        pi0, "param_count", "init_s", "batch1_ms", "batch1_compile_s", "batch8_ms",
        "batch8_ms_per_chunk", "batch8_compile_s", "multi16_ms", "multi16_compile_s",
        "multi16_vs_one", "peak_rss_mb",
    )  # fmt: skip
    assert pi0["batch8_ms_per_chunk"] == pytest.approx(pi0["batch8_ms"] / 8, rel=1e-2)
    assert pi0["multi16_vs_one"] == pytest.approx(pi0["multi16_ms"] / pi0["batch1_ms"], rel=1e-2)
    # The CPU has no device memory statistics: the key is there and says so with null.
    assert "peak_device_bytes" in pi0 and pi0["peak_device_bytes"] is None
    # The targets are judged on a GPU only.
    assert report["targets"]["batch1_ok"] is None and report["targets"]["multi16_ok"] is None
    assert report["targets"]["batch1_ms_max"] == 20.0

    learner = report["learner"]
    assert learner["update_mode"] == "scan" and learner["backend"] == "cpu"
    assert learner["critic_loss_finite"] is True and learner["num_compiles"] == 1
    _positive(learner, "updates_per_s", "compile_s", "update_gflop")

    loop = report["loop"]
    assert loop["num_envs"] == 2 and loop["pi0_variant"] == "tiny"
    # Every env ran one 10-step episode per round, 3 rounds: all of them reached metrics.jsonl.
    assert loop["env_steps"] == 3 * loop["num_envs"] * loop["episode_steps"] == 60
    assert loop["training_rows"] >= 3 and loop["steady_from_row"] == 1
    _positive(loop, "env_steps_per_s", "updates_per_s", "steady_s", "run_env_steps_per_s")
    _positive(loop, "env_frac", "pi0_frac", "update_frac")
    for key in FRACTIONS:
        assert 0.0 <= loop[key] <= 1.0, (key, loop[key])
    assert sum(loop[key] for key in FRACTIONS) == pytest.approx(1.0, abs=5e-3)


def _probe_wheel(folder: Path) -> Path:
    """A real (minimal) wheel, as scripts/gpu_wheels.sh leaves them in .whl/."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dsrl_probe-0.1-py3-none-any.whl"
    files = {
        "dsrl_probe.py": "VALUE = 1\n",
        "dsrl_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: dsrl-probe\nVersion: 0.1\n",
        "dsrl_probe-0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + "dsrl_probe-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in {**files, "dsrl_probe-0.1.dist-info/RECORD": record}.items():
            z.writestr(name, text)
    return path


@pytest.mark.slow
def test_a_failing_section_is_reported_and_the_next_one_still_runs(tmp_path):
    # Through the offline one-command wrapper: the carried wheel installed with pip and no index,
    # the JSON and the log left in --out.
    wheel = _probe_wheel(tmp_path / "wheels")
    out = tmp_path / "out"
    report = _gpu_check(
        "--section", "learner,pi0", "--learner_args=--update_mode bogus", "--out", str(out),
        timeout=300, shell=True, wheels=wheel.parent,
    )  # fmt: skip
    assert json.loads((out / "gpu_check.json").read_text()) == report
    log = (out / "gpu_check.log").read_text()
    assert f"carried wheels: {wheel.name}" in log and json.dumps(report) in log
    assert "invalid choice: 'bogus'" in (out / "sections" / "learner.stderr").read_text()
    assert report["sections"] == ["learner", "pi0"] and report["errors"] == ["learner"]
    learner = report["learner"]
    assert learner["error"].startswith("exited with status 2")
    assert "invalid choice: 'bogus'" in learner["error"] and "bogus" in learner["log_tail"]
    assert "updates_per_s" not in learner
    pi0 = report["pi0"]
    assert "error" not in pi0
    _positive(pi0, "batch1_ms", "batch8_ms", "multi16_ms", "multi16_vs_one")


@pytest.mark.slow
def test_the_global_deadline_kills_a_running_section():
    report = _gpu_check("--section", "learner", "--deadline_s", "8", timeout=120)
    assert report["errors"] == ["learner"]
    assert report["learner"]["error"].startswith("killed at its time limit of 8 s")
    assert report["wall_s"] < 40  # the learner alone takes about 45 s here


def test_bare_mode_needs_its_wheels_and_an_output_folder(tmp_path):
    script = ROOT / "scripts" / "gpu_check.sh"
    env = dict(os.environ, DSRL_WHEELS=str(tmp_path / "empty"))
    proc = subprocess.run(["bash", str(script), "--bare"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--bare needs --out DIR" in proc.stderr
    proc = subprocess.run(
        ["bash", str(script), "--bare", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "scripts/gpu_wheels.sh" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _value(config, *paths: str):
    """config's value at the first of `paths` it has: the launcher's config is being reshaped
    (flat ConfigDict keys -> RunConfig sections), and the commands must parse under either."""
    for path in paths:
        node = config
        try:
            for part in path.split("."):
                node = node[part] if isinstance(node, Mapping) else getattr(node, part)
        except (AttributeError, KeyError, TypeError):
            continue
        return node
    raise AssertionError(f"the launcher's config has none of {paths}")


@pytest.mark.parametrize("small", [False, True])
def test_section_commands_are_what_the_launcher_and_bench_learner_accept(tmp_path, small):
    """The GPU mode cannot run here: its command lines are checked against the real parsers."""
    from dsrl.training import cli

    gpu_check = _load(SCRIPT, "gpu_check")
    args = gpu_check.parse_args(["--small"] if small else [])
    cmd = gpu_check.loop_command(args, tmp_path / "runs")
    assert cmd[1].endswith("launch_train_sim.py")
    config, _ = cli.parse_sim(cmd[2:])  # what examples/launch_train_sim.py runs

    def value(*paths):
        return _value(config, *paths)

    # The LIBERO preset on the demo task in LIBERO's layout: no simulator assets to carry.
    assert value("env.name", "env") == "demo_pi0"
    assert value("log.prefix") == "dsrl_pi0_libero"
    assert value("env.num_envs", "num_envs") == (2 if small else 8)
    bp = (value("base_policy.checkpoint"), value("base_policy.variant"), value("base_policy.dtype"))
    assert bp == ("random", "tiny" if small else "full", "bfloat16")
    assert value("loop.eval_episodes", "eval_episodes") == 0
    assert value("log.wandb_mode", "wandb_mode") == "disabled"
    kwargs = value("env.kwargs", "env_kwargs")
    assert kwargs["max_episode_steps"] == args.episode_steps
    # What each env worker builds from these kwargs: a real demo_pi0 env, one episode long.
    from dsrl.training import build

    env = build.agent_env_fn(config)()
    assert env.spec.name == "demo_pi0" and env.spec.max_episode_steps == args.episode_steps
    assert env.spec.observation_spec["pixels"][0] == (64, 64, 3)
    plan = gpu_check.loop_plan(args)
    assert value("loop.max_steps", "max_steps") == args.rounds * plan["grad_steps_per_round"]
    # Updates start after the first round.
    assert (
        value("loop.start_online_updates", "start_online_updates") < plan["transitions_per_round"]
    )
    if not small:  # the LIBERO preset's learner and chunking
        assert value("steering.query_freq", "query_freq") == 20
        assert value("loop.multi_grad_step", "multi_grad_step") == 20
        assert value("loop.batch_size", "batch_size") == 256
        assert value("env.image_size", "resize_image") == 64

    learner_cmd = gpu_check.learner_command(args)
    assert learner_cmd[2:4] == ["--update_mode", "scan"]
    usage = subprocess.run(
        [*learner_cmd[:2], "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert usage.returncode == 0, usage.stderr[-2000:]
    for flag in learner_cmd[2:]:
        if flag.startswith("--"):
            assert flag in usage.stdout, flag
    assert "scan" in usage.stdout


# --------------------------------------------------------------------------------------------
# scripts/setup_env.sh --cuda / DSRL_CUDA=12


@pytest.fixture
def setup_copy(tmp_path):
    """A copy of the repo's set-up files, a venv whose `python` only records its arguments."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup_env.sh", root / "scripts" / "setup_env.sh")
    # A script that sources it the way test.sh and demo.sh do, with arguments of its own.
    (root / "scripts" / "wrapper.sh").write_text(
        '#!/usr/bin/env bash\nset -euo pipefail\nsource "$(dirname "$0")/setup_env.sh"\n'
    )
    for name in ("requirements.txt", "requirements-nodeps.txt", "setup.py"):
        shutil.copy(ROOT / name, root / name)
    shutil.copy(ROOT / "requirements-cuda12.txt", root / "requirements-cuda12.txt")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    python.chmod(0o755)
    return root, venv, calls


def _setup(root: Path, venv: Path, *args: str, cuda: str | None = None, source: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "DSRL_CUDA"}
    env["DSRL_VENV"] = str(venv)
    if cuda is not None:
        env["DSRL_CUDA"] = cuda
    script = root / "scripts" / ("wrapper.sh" if source else "setup_env.sh")
    cmd = ["bash", str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def _new_calls(calls: Path, seen: list[str]) -> list[str]:
    lines = calls.read_text().splitlines()
    new = lines[len(seen) :]
    seen[:] = lines
    return new


def test_cuda_switch_installs_the_pinned_cuda_set_once_and_leaves_the_cpu_path_alone(setup_copy):
    root, venv, calls = setup_copy
    seen: list[str] = []
    cuda_reqs = f"-m pip install -q -r {root}/requirements-cuda12.txt"

    # The CPU default: the four CPU install steps, nothing CUDA.
    assert _setup(root, venv).returncode == 0
    first = _new_calls(calls, seen)
    assert len(first) == 4 and f"-m pip install -q -r {root}/requirements.txt" in first
    assert not any("requirements-cuda" in c for c in first)
    assert _setup(root, venv, "-m", "not slow", source=True).returncode == 0
    assert _new_calls(calls, seen) == []  # installed: a no-op, and test.sh's args are not ours

    # The switch (both spellings) installs requirements-cuda12.txt once, on top.
    proc = _setup(root, venv, cuda="12")
    assert proc.returncode == 0, proc.stderr
    assert _new_calls(calls, seen) == [cuda_reqs]
    assert (venv / ".dsrl-installed-cuda12").is_file()
    assert _setup(root, venv, "--cuda").returncode == 0
    assert _setup(root, venv).returncode == 0  # the CPU path after it: untouched, no calls
    assert _new_calls(calls, seen) == []

    # A new CPU pin re-runs the CPU step, and then the CUDA step at the next switched run.
    with open(root / "requirements.txt", "a") as f:
        f.write("# changed\n")
    assert _setup(root, venv).returncode == 0
    assert len(_new_calls(calls, seen)) == 4
    assert _setup(root, venv, "--cuda").returncode == 0
    assert _new_calls(calls, seen) == [cuda_reqs]


def test_cuda_switch_refuses_a_mismatched_pin_and_unknown_values(setup_copy):
    root, venv, calls = setup_copy
    reqs = root / "requirements-cuda12.txt"
    reqs.write_text(re.sub(r"jax-cuda12-pjrt==\S+", "jax-cuda12-pjrt==0.0.1", reqs.read_text()))
    proc = _setup(root, venv, cuda="12")
    assert proc.returncode == 1
    assert "jax-cuda12-pjrt==0.0.1" in proc.stderr and "jax==" in proc.stderr
    assert not (venv / ".dsrl-installed-cuda12").exists()
    assert not any("requirements-cuda" in c for c in calls.read_text().splitlines())

    proc = _setup(root, venv, cuda="11")
    assert proc.returncode == 2 and "DSRL_CUDA=12" in proc.stderr
    proc = _setup(root, venv, "--gpu")
    assert proc.returncode == 2 and "--cuda" in proc.stderr
