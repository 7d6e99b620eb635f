"""The reference's three run scripts' flag lines (nakamotoo/dsrl_pi0 examples/scripts/run_*.sh),
unchanged, on our launchers with a tiny random Pi0 substituted for the real checkpoint, and the
reference's learner flags (`--cnn_features ... --num_cameras`, `--add_states 0`) doing what they
say or saying that they do nothing."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from dsrl.envs.keyboard import ScriptedKeyboard
from dsrl.training import cli
from dsrl.training.cli import notices
from dsrl.training.flags import ConfigError

# The flag lines as the reference's scripts pass them (examples/scripts/run_libero.sh,
# run_aloha.sh, run_real.sh at 7f48937).
REFERENCE = {
    "libero": "--algorithm pixel_sac --env libero --prefix dsrl_pi0_libero --wandb_project "
    "DSRL_pi0_Libero --batch_size 256 --discount 0.999 --seed 0 --max_steps 500000 "
    "--eval_interval 10000 --log_interval 500 --eval_episodes 10 --multi_grad_step 20 "
    "--start_online_updates 500 --resize_image 64 --action_magnitude 1.0 --query_freq 20 "
    "--hidden_dims 128",
    "aloha": "--env aloha_cube --prefix dsrl_pi0_aloha --wandb_project DSRL_pi0_Aloha "
    "--batch_size 256 --discount 0.999 --seed 0 --max_steps 3000000 --eval_interval 10000 "
    "--log_interval 500 --eval_episodes 10 --multi_grad_step 20 --start_online_updates 1000 "
    "--resize_image 64 --action_magnitude 2.0 --query_freq 50 --hidden_dims 128 "
    "--target_entropy 0.0",
    "real": "--env franka_droid --prefix dsrl_pi0_real --wandb_project DSRL_pi0_FrankaDroid "
    "--batch_size 256 --discount 0.99 --seed 0 --max_steps 500000 --eval_interval 2000 "
    "--log_interval 100 --multi_grad_step 30 --resize_image 128 --action_magnitude 2.5 "
    "--query_freq 10 --hidden_dims 1024 --num_qs 2",
}
# The substitution: a tiny random Pi0 (no checkpoint files) with the reference's chunk length.
TINY_PI0 = ["--pi0_checkpoint", "random", "--pi0_variant", "tiny", "--wandb_mode", "disabled"]
HORIZON_50 = ["--config.base_policy.action_horizon=50"]
IDS = ["--left_camera_id", "111", "--right_camera_id", "222", "--wrist_camera_id", "333"]


@pytest.mark.parametrize("script", ["libero", "aloha", "real"])
def test_reference_flag_lines_parse_unchanged(script):
    parse = cli.parse_real if script == "real" else cli.parse_sim
    config, _ = parse(shlex.split(REFERENCE[script]) + TINY_PI0 + HORIZON_50)
    preset, _ = parse([])
    preset_for = {"libero": "libero", "aloha": "aloha", "real": None}[script]
    if preset_for:
        preset, _ = parse(["--env", preset_for])
    assert config.steering == preset.steering
    assert config.loop.batch_size == 256 and config.loop.max_steps == preset.loop.max_steps
    assert config.learner_config() == preset.learner_config()
    assert (config.base_policy.variant, config.base_policy.action_horizon) == ("tiny", 50)


@pytest.mark.slow
@pytest.mark.parametrize("script, action_dim", [("libero", 7), ("aloha", 14)])
def test_sim_flag_lines_build_a_run_with_a_tiny_50_step_pi0(tmp_path, script, action_dim):
    """The whole run is built (a real LIBERO / Aloha worker, a tiny Pi0 with the reference's
    50-step chunk so --query_freq 20 / 50 fits, the reference's learner) and Pi0 is queried."""
    pytest.importorskip({"libero": "libero", "aloha": "gym_aloha"}[script])
    argv = shlex.split(REFERENCE[script]) + TINY_PI0 + HORIZON_50 + ["--logdir", str(tmp_path)]
    run, _ = cli.start(cli.sim_parser(), argv, preset="demo")
    with run:
        assert run.steering.base_policy.noise_shape == (50, 32)
        assert run.config.learner_config().num_qs == 10
        from dsrl.training.rollout import stack_observations

        obs = stack_observations(run.vec_env.reset([0]))
        noise = np.zeros((1, 50, 32), np.float32)
        chunk = run.steering.base_policy.sample_actions(obs, noise)
        assert chunk.shape == (1, 50, action_dim)
    assert (run.run_dir / "config.json").is_file()


@pytest.mark.slow
def test_real_flag_line_builds_on_the_simulated_robot(tmp_path, capsys):
    argv = shlex.split(REFERENCE["real"]) + TINY_PI0 + ["--robot", "sim", *IDS]
    kb = ScriptedKeyboard(answers=[])
    run, _ = cli.start(
        cli.real_parser(), [*argv, "--logdir", str(tmp_path)], preset="real", keyboard=kb
    )
    with run:
        assert run.config.env.name == "droid" and run.config.loop.eval_interval == 2000
        assert run.vec_env.spec.observation_spec["pixels"][0] == (128, 128, 9)
    # The real preset does not evaluate (robot time): --eval_interval says it does nothing.
    assert "--eval_interval does nothing" in capsys.readouterr().out


def test_action_horizon_on_a_base_policy_without_one_is_rejected(capsys):
    with pytest.raises(ConfigError, match="local Pi0 only"):
        cli.parse_sim(["--env", "demo", *HORIZON_50])
    with pytest.raises(ConfigError, match="policy server"):
        cli.parse_sim(["--env", "libero", "--pi0_remote", "127.0.0.1:8000", *HORIZON_50])
    with pytest.raises(SystemExit):
        cli.main_sim(["--env", "demo", *HORIZON_50])
    assert "remove --config.base_policy.action_horizon" in capsys.readouterr().err


def test_encoder_flags_reach_the_learner(capsys):
    argv = ["--env", "demo", "--cnn_features", "8", "8", "8", "--cnn_strides", "2", "1", "1",
            "--cnn_padding", "SAME", "--latent_dim", "24", "--dropout_rate", "0.1",
            "--aug_next", "0", "--use_spatial_softmax", "1", "--softmax_temperature", "-1",
            "--use_bottleneck", "1", "--num_cameras", "1"]  # fmt: skip
    config, args = cli.parse_sim(argv)
    learner = config.learner_config()
    assert learner.cnn_features == (8, 8, 8) and learner.cnn_strides == (2, 1, 1)
    assert (learner.cnn_padding, learner.bottleneck_dim, learner.dropout_rate) == ("SAME", 24, 0.1)
    assert (learner.aug_next, learner.encoder_pooling) == (False, "spatial_softmax")
    assert learner.softmax_temperature == -1.0 and config.env.num_cameras == 1
    assert notices(config, args) == []
    # The reference's learnable temperature (-1) builds a learned spatial-softmax temperature.
    from dsrl.training.build import make_agent, make_base_policy, make_steering

    steering = make_steering(config, make_base_policy(config))
    spec = {"pixels": ((32, 32, 3), np.uint8), "state": ((4,), np.float32)}
    agent = make_agent(config, spec, steering)
    assert "log_temperature" in str(agent.critic.params)

    ignored, args = cli.parse_sim(
        ["--env", "demo", "--encoder_norm", "group", "--softmax_temperature", "2", "--suffix", "x"]
    )
    lines = notices(ignored, args)
    assert len(lines) == 3 and all("does nothing" in line for line in lines)
    with pytest.raises(SystemExit):
        cli.main_sim(["--env", "demo", "--use_bottleneck", "0"])
    assert "--use_bottleneck 0 is not supported" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main_sim(["--env", "demo", "--num_cameras", "3", "--logdir", "/tmp/unused_dsrl_runs"])
    assert "--num_cameras 3 expects 9 pixel channels" in capsys.readouterr().err
    # A state-based env without its state would leave the agent nothing to read.
    with pytest.raises(SystemExit):
        cli.main_sim(["--env", "gym_hopper_cpu", "--add_states", "0", "--logdir", "/tmp/unused_dsrl_runs"])  # fmt: skip
    assert "--add_states 0 drops the agent's state" in capsys.readouterr().err


def test_add_states_0_drops_the_agent_state_but_not_the_base_policys(tmp_path):
    argv = ["--env", "demo", "--add_states", "0", "--logdir", str(tmp_path),
            "--wandb_mode", "disabled"]  # fmt: skip
    run, _ = cli.start(cli.sim_parser(), argv, preset="demo")
    with run:
        assert run.vec_env.spec.observation_spec["state"][0] == (0,)
        assert run.agent.observation_spec == (("pixels", (32, 32, 3)), ("state", (0,)))
        from dsrl.training.rollout import stack_observations

        obs = stack_observations(run.vec_env.reset([0, 1, 2, 3, 4, 5, 6, 7]))
        assert obs["state"].shape == (8, 0) and obs["policy_state"].shape[1] > 0
        latents, _ = run.agent.sample_latents({"pixels": obs["pixels"], "state": obs["state"]})
        assert latents.shape == (8, run.steering.latent_dim)
