"""The LIBERO CPU proof: the pick-and-place env, its scripted demonstrator, the shipped base
policy, and DSRL lifting that policy on the real simulator (slow)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsrl.base_policies.flow_mlp import LIBERO_ASSET_DIR, FlowMLPPolicy  # noqa: E402
from dsrl.envs.libero_scripted import POLICY_STATE_DIM, ScriptedPickPlace  # noqa: E402
from dsrl.utils.logging import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_libero_policy_loads_and_a_damaged_checkpoint_is_refused(tmp_path):
    policy = FlowMLPPolicy.load_libero()
    assert policy.noise_shape == (16, 8) and policy.action_dim == 7
    assert policy.config.state_dim == POLICY_STATE_DIM
    chunk = policy.sample_actions(
        {"policy_state": np.zeros((2, POLICY_STATE_DIM), np.float32)},
        np.zeros((2, *policy.noise_shape), np.float32),
    )
    assert chunk.shape == (2, 16, 7) and np.all(np.isfinite(chunk))
    damaged = tmp_path / "policy"
    shutil.copytree(LIBERO_ASSET_DIR, damaged)
    data = bytearray((damaged / "params.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "params.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        FlowMLPPolicy.load(damaged)


@pytest.mark.slow
def test_scripted_demonstrator_places_the_pudding_from_suite_initial_states():
    """The demonstrator behind the demos succeeds from the suite's fixed initial states (all 50
    were measured; 3 here to stay short), and the env keeps LIBERO's agent observations."""
    from dsrl.envs import make_env

    env = make_env("libero_pick_place", init_state=0, camera_size=64, max_episode_steps=160)
    try:
        assert env.spec.observation_spec["pixels"][0] == (64, 64, 3)
        assert env.spec.observation_spec["state"][0] == (8,)
        for index in (0, 17, 49):
            env.init_state = index
            obs = env.reset(seed=index)
            assert obs["policy_state"].shape == (POLICY_STATE_DIM,)
            assert obs["pixels"].std() > 5  # a real rendered image
            demonstrator = ScriptedPickPlace()
            terminated = truncated = False
            while not (terminated or truncated):
                action = demonstrator.act(obs["policy_state"])
                obs, _, terminated, truncated, _ = env.step(action, render=False)
            assert terminated, f"initial state {index}: no success within 160 steps"
    finally:
        env.close()


def _load_launcher():
    path = ROOT / "examples" / "launch_train_sim.py"
    spec = importlib.util.spec_from_file_location("launch_train_sim_libero_cpu", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# The shortest budget of scripts/run_libero_cpu.sh that lifts the policy, on fixed seeds.
CI_FLAGS = [
    "--max_steps",
    "4000",
    "--eval_interval",
    "4000",
    "--eval_episodes",
    "24",
    "--config.loop.num_video_episodes=0",
    "--config.loop.checkpoint_interval=-1",
]


@pytest.mark.slow
def test_dsrl_lifts_the_libero_policy_on_the_real_simulator(tmp_path, capsys):
    """LEARNING on real LIBERO: the libero_cpu preset with a short budget (~8 minutes on 2
    cores). The steered deterministic policy must clearly beat the base policy with i.i.d.
    noise on the same fixed evaluation layouts."""
    launcher = _load_launcher()
    start = time.perf_counter()
    argv = ["--env", "libero_cpu", "--logdir", str(tmp_path), "--no_progress", *CI_FLAGS]
    assert launcher.main(argv) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "DSRL, deterministic (actor mode)" in out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    records = read_metrics(run_dir)
    base = [
        r["evaluation_base_iid/success_rate"]
        for r in records
        if "evaluation_base_iid/success_rate" in r
    ]
    steered = [
        r["evaluation_mode/success_rate"] for r in records if "evaluation_mode/success_rate" in r
    ]
    assert base[0] <= 0.6, base
    assert steered[-1] >= base[0] + 0.3, (base, steered)
    assert (run_dir / "success_vs_env_steps.png").stat().st_size > 0
    assert elapsed < 900, f"the CI budget took {elapsed:.0f} s"
