"""Huge-page malloc restart (dsrl.utils.hugepages): the environment it builds, the real re-exec,
and its effect on page faults for the large buffers XLA:CPU's convolutions allocate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dsrl.utils import hugepages

GLIBC_OK = (2, 36)


def test_environment_adds_the_tunable_and_keeps_everything_else():
    env = hugepages.hugepage_environment({"PATH": "/bin", "X": "1"}, "madvise", GLIBC_OK)
    assert env == {"PATH": "/bin", "X": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_environment_appends_to_existing_tunables():
    env = hugepages.hugepage_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", GLIBC_OK
    )
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
    ("environ", "mode", "glibc"),
    [
        ({"DSRL_HUGEPAGE_MALLOC": "0"}, "madvise", GLIBC_OK),  # opted out
        ({"DSRL_HUGEPAGE_MALLOC": "off"}, "madvise", GLIBC_OK),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC_OK),  # user's choice kept
        ({}, "always", GLIBC_OK),  # every mapping is huge already
        ({}, "never", GLIBC_OK),  # cannot be helped
        ({}, None, GLIBC_OK),  # no THP support visible
        ({}, "madvise", (2, 34)),  # glibc before the tunable existed
        ({}, "madvise", None),  # musl, macOS, Windows
    ],
)
def test_no_restart_when_it_would_change_nothing(environ, mode, glibc):
    assert hugepages.hugepage_environment(environ, mode, glibc) is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(path) == "madvise"
    assert hugepages.thp_mode(tmp_path / "missing") is None


# The module's own decision, for a caller that has neither opted out nor set the tunable.
needs_thp = pytest.mark.skipif(
    hugepages.hugepage_environment({}, hugepages.thp_mode(), hugepages.glibc_version()) is None,
    reason="needs Linux, glibc >= 2.35 and THP mode 'madvise'",
)

# Restarts itself, then reports its environment, arguments and the page faults of writing and
# freeing a 256 MiB buffer five times (what XLA:CPU's Eigen convolutions do on every call).
_CHILD = textwrap.dedent(
    """
    import ctypes, json, os, resource, sys
    from dsrl.utils.hugepages import restart_with_hugepages
    restart_with_hugepages()
    libc = ctypes.CDLL(None)  # plain malloc, as Eigen uses (numpy madvises its own buffers)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 256 * 1024 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES", ""), "argv": sys.argv[1:],
                      "faults": faults}))
    """
)


def _run_child(tmp_path, **env_overrides) -> dict:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(env_overrides)
    out = subprocess.run(
        [sys.executable, str(script), "--flag", "a b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_thp
def test_restart_sets_the_tunable_keeps_arguments_and_cuts_page_faults(tmp_path):
    on = _run_child(tmp_path)
    off = _run_child(tmp_path, DSRL_HUGEPAGE_MALLOC="0")
    assert on["tunables"] == "glibc.malloc.hugetlb=1"
    assert on["argv"] == ["--flag", "a b"]
    assert off["tunables"] == ""
    # 5 x 256 MiB in 4 KiB pages is ~330,000 faults; in 2 MiB pages a few hundred.
    assert off["faults"] > 100_000
    assert on["faults"] < off["faults"] / 4, (on, off)
