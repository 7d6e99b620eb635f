"""Suite-wide test ordering, and the release of compiled JAX code between test files.

dm_control (Aloha) renders garbage once robosuite (LIBERO) has created its EGL context in the same
process, and AlohaEnv refuses to start there. Tests that build Aloha envs in-process therefore run
before every other test, whatever order the files are given in.

XLA:CPU maps each compiled executable into about 7 memory regions, and JAX's caches keep the
executable alive for as long as the jitted function lives, which for module-level functions and
their many configurations here is the whole pytest process. Over the whole suite that reached
65,039 mappings against the kernel's `vm.max_map_count` of 65,530: the next compile could not map
its code, and XLA's failure path then crashed the process inside the C++ unwinder (SIGSEGV in
libgcc_s, or SIGABRT) instead of raising. So the compiled code is released after each test file.
Without that, test_pixel_sac.py alone adds about 8,000 mappings; with it, the process is back to
about 850 after each file.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if "test_env_aloha" in item.nodeid else 1)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """After each test file, drop JAX's compilation caches so their executables are unmapped."""
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def damaged_copy(tmp_path):
    """copy(asset_dir, filename) -> a copy of `asset_dir` under tmp_path with one byte of
    `filename` flipped (mid-file): what a truncated download or a bad disk leaves behind."""
    import shutil

    def copy(asset_dir, filename: str):
        damaged = tmp_path / "damaged"
        shutil.copytree(asset_dir, damaged)
        data = bytearray((damaged / filename).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (damaged / filename).write_bytes(bytes(data))
        return damaged

    return copy
