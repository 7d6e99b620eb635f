"""Suite-wide test ordering.

dm_control (Aloha) renders garbage once robosuite (LIBERO) has created its EGL context in the same
process, and AlohaEnv refuses to start there. Tests that build Aloha envs in-process therefore run
before every other test, whatever order the files are given in.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if "test_env_aloha" in item.nodeid else 1)
