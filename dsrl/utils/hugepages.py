"""Transparent huge pages for glibc malloc, which XLA:CPU's convolutions need to run at speed.

XLA:CPU runs convolutions through Eigen, whose threaded contraction packs its whole left operand
into one freshly malloc'd buffer per call: 180-280 MB for each conv layer of the reference
encoder at batch 256. glibc serves allocations that large with a new mmap every time and hands
them back on free, so every call page-faults its buffer in again, 4 KiB at a time: about 128,000
page faults and 0.25 CPU-seconds of kernel time per LIBERO-preset gradient step on the 2-core
dev box. With glibc's `glibc.malloc.hugetlb=1` tunable malloc asks for transparent huge pages
(2 MiB) on those mappings: faults fall to about 5,000 per step and `scripts/bench_learner.py`
runs 7-27 % more updates/s than with the tunable off (paired runs on the dev box).

The tunable is read when the process starts, so `restart_with_hugepages()` re-executes the
current command once with it added to `GLIBC_TUNABLES`. dsrl's command-line entry points call it
first thing; nothing else does (importing dsrl never restarts anything). It does nothing when
`DSRL_HUGEPAGE_MALLOC=0`, off Linux / glibc < 2.35, when the kernel's THP mode is not `madvise`
(`always` needs no help, `never` cannot be helped), or when the tunable is already set.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Mapping
from pathlib import Path

OPT_OUT_VAR = "DSRL_HUGEPAGE_MALLOC"
TUNABLE_NAME = "glibc.malloc.hugetlb"
TUNABLE = f"{TUNABLE_NAME}=1"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)  # first glibc with glibc.malloc.hugetlb


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), None if unknown."""
    try:
        match = re.search(r"\[(\w+)\]", path.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the running glibc, None on another C library or platform."""
    if not sys.platform.startswith("linux"):
        return None
    lib, version = platform.libc_ver()
    if lib != "glibc" or not version:
        return None
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None


def hugepage_environment(
    environ: Mapping[str, str],
    mode: str | None,
    glibc: tuple[int, ...] | None,
) -> dict[str, str] | None:
    """The environment to restart under, or None when a restart would change nothing."""
    if environ.get(OPT_OUT_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if glibc is None or glibc < MIN_GLIBC or mode != "madvise":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE_NAME in tunables:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return env


def restart_with_hugepages() -> None:
    """Re-execute this process (same interpreter, flags and arguments) with huge-page malloc, when
    that helps; returns normally otherwise. Call it before any other work: the process is
    replaced, so nothing done before the call survives."""
    env = hugepage_environment(os.environ, thp_mode(), glibc_version())
    if env is None:
        return
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
