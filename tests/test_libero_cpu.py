"""The LIBERO CPU proof: the pick-and-place env, its scripted demonstrator and the shipped base
policy. (The learning test on the real simulator is not here yet: no DSRL run has lifted the
shipped policy so far; see the README section "DSRL on real LIBERO, on a CPU".)"""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsrl.base_policies.flow_mlp import LIBERO_ASSET_DIR, FlowMLPPolicy  # noqa: E402
from dsrl.envs.libero_scripted import POLICY_STATE_DIM, ScriptedPickPlace  # noqa: E402

# The shipped policy's params.npz, as made by scripts/pretrain_flow_mlp_libero.py (README). A new
# policy changes every figure in the README: re-measure them when this changes.
SHIPPED_SHA256 = "48b5bdb98016528714bbebef70b63d6093dfe6ef787f20f8d35d7b563170d88e"


def test_shipped_libero_policy_loads_and_a_damaged_checkpoint_is_refused(tmp_path):
    recorded = (LIBERO_ASSET_DIR / "params.sha256").read_text().split()[0]
    assert recorded == SHIPPED_SHA256
    policy = FlowMLPPolicy.load_libero()
    assert policy.noise_shape == (16, 8) and policy.action_dim == 7
    assert policy.config.state_dim == POLICY_STATE_DIM
    assert policy.config.shared_noise  # one noise vector per chunk: the one 'repeat' steers
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
