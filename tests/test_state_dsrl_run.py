"""State-based DSRL through the ordinary launcher: the Gym / Robomimic presets carry the
authors' settings, and a short Hopper run (flow_mlp base policy, MLP-only DSRL-NA) trains and
writes its metrics."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest

from dsrl.base_policies.flow_mlp import FlowMLPConfig, FlowMLPPolicy, init_params
from dsrl.training import cli
from dsrl.utils.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "preset, width, magnitude, utd, per_transition, gamma",
    [
        ("robomimic_can", 2048, 1.5, 20, 5, 0.99),
        ("robomimic_lift", 2048, 1.5, 30, 8, 0.99),
        ("robomimic_square", 2048, 1.5, 20, 5, 0.999),
        ("gym_hopper", 128, 1.5, 20, 3, 0.99),
        ("gym_walker2d", 2048, 2.5, 20, 3, 0.99),
        ("gym_halfcheetah", 1024, 1.5, 20, 3, 0.99),
    ],
)
def test_state_presets_have_the_release_values(
    preset, width, magnitude, utd, per_transition, gamma
):
    config, _ = cli.parse_sim(["--env", preset])
    learner = config.learner_config()
    assert config.agent.algorithm == "dsrl_na"
    assert tuple(learner.hidden_dims) == (width,) * 3 and learner.activation == "tanh"
    assert learner.critic_layer_norm and learner.actor_layer_norm
    assert (learner.num_qs, learner.critic_reduction, learner.backup_entropy) == (2, "min", True)
    assert float(learner.target_entropy) == 0.0
    assert (learner.utd, learner.noise_critic_grad_steps) == (utd, 10)
    assert (config.steering.noise_mode, config.steering.query_freq) == ("full", 4)
    assert config.steering.action_magnitude == magnitude
    assert config.loop.batch_size == 256 and config.loop.multi_grad_step == per_transition
    # gamma once per 4-step chunk, as the release applies it
    assert math.isclose(config.loop.discount**4, gamma)


@pytest.mark.slow  # ~90 s on the shared 2-core machine (compiles of the NA update and acting)
def test_hopper_run_through_the_launcher_trains_and_writes_metrics(tmp_path, capsys):
    policy_dir = tmp_path / "hopper_flow"
    cfg = FlowMLPConfig(horizon=4, action_dim=3, noise_dim=3, state_dim=11, hidden_dims=(16,))
    FlowMLPPolicy(cfg, init_params(cfg, 0)).save(policy_dir)
    argv = [
        "--env", "gym_hopper", "--logdir", str(tmp_path / "runs"), "--no_progress",
        f"--config.base_policy.checkpoint={policy_dir}", "--config.env.mode=inline",
        "--config.env.num_envs=1", "--config.env.kwargs.max_episode_steps=40",
        "--hidden_dims", "16", "--batch_size", "8", "--start_online_updates", "10",
        "--multi_grad_step", "1", "--max_steps", "8", "--eval_interval", "8",
        "--eval_episodes", "1", "--config.replay.capacity=1000",
    ]  # fmt: skip
    assert cli.main_sim(argv) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = read_metrics(run_dir)
    trained = [r for r in rows if "training/noise_critic_loss" in r]
    assert trained and all(math.isfinite(r["training/critic_loss"]) for r in trained)
    evals = [r for r in rows if "evaluation_mode/avg_return" in r]
    assert evals[-1]["step"] == 8 and evals[-1]["evaluation_mode/avg_num_queries"] >= 1
    # Locomotion has no success: the closing table and its plot are average returns.
    out = capsys.readouterr().out
    steered = evals[-1]["evaluation_mode/avg_return"]
    assert f"{'DSRL, deterministic (actor mode)':<36} {steered:.1f}" in out
    assert "avg return" in out and "success" not in out.split("[dsrl] done")[-1]
    assert (run_dir / "return_vs_env_steps.png").stat().st_size > 1000


def test_run_scripts_need_a_base_policy():
    env = {k: v for k, v in os.environ.items() if k != "BASE_POLICY"}
    for script in ("run_gym.sh", "run_robomimic.sh"):
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, env=env
        )
        assert out.returncode == 2 and "BASE_POLICY" in out.stderr
