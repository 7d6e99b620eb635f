"""The shipped small Pi0 (dsrl/assets/pi0_libero_cpu, made by scripts/make_pi0_libero.py from
scripted demonstrations in LeRobot's layout): it loads through the hash check, its images reach
the actions, and damaged or extra files are refused. No learning test yet: DSRL has not lifted it
(docs/finetune_pi0.md, "Steering it")."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsrl.base_policies.pi0 import shipped  # noqa: E402
from dsrl.envs.libero_scripted import PI0_STATE_DIM  # noqa: E402


def _observation(batch: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "agentview_image": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=(batch, PI0_STATE_DIM)).astype(np.float32),
        "prompt": "pick up the chocolate pudding and place it in the basket",
    }


def test_shipped_pi0_loads_and_damaged_or_extra_files_are_refused(tmp_path):
    config = shipped.read_config(shipped.LIBERO_CPU_DIR)
    assert config["variant"] == "mini" and config["robot"] == "libero_no_delta"
    size = sum(p.stat().st_size for p in shipped.LIBERO_CPU_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 2**20
    policy = shipped.load()
    assert policy.noise_shape == (16, 16) and policy.robot.action_dim == 7
    # Its norm stats cover exactly the state LiberoPickPlaceEnv(pi0_state=True) returns.
    assert len(policy.norm_stats["state"].mean) == PI0_STATE_DIM
    noise = np.zeros((2, *policy.noise_shape), np.float32)
    chunk = policy.sample_actions(_observation(2), noise)
    assert chunk.shape == (2, 16, 7) and np.all(np.isfinite(chunk))
    # The images and the prompt reach the actions (they go through the real prefix).
    other = _observation(2)
    other["agentview_image"] = 255 - other["agentview_image"]
    assert not np.allclose(policy.sample_actions(other, noise), chunk)

    damaged = tmp_path / "pi0"
    shutil.copytree(shipped.LIBERO_CPU_DIR, damaged)
    norm = damaged / "assets" / "libero_cpu" / "norm_stats.json"
    stats = json.loads(norm.read_text())
    stats["norm_stats"]["state"]["mean"][0] += 1.0
    norm.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match="norm_stats.json does not match its sha256"):
        shipped.load(damaged)
    shutil.copy(shipped.LIBERO_CPU_DIR / "assets" / "libero_cpu" / "norm_stats.json", norm)
    shipped.verify_sha256sums(damaged)  # restored
    (damaged / "params" / "stray.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not in .*SHA256SUMS"):
        shipped.load(damaged)
