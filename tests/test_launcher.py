"""examples/launch_train_sim.py: presets, reference flag names, --config overrides, clear errors,
and scripts/plot_run.py on a real run directory."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from dsrl.utils.logging import RunLogger

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def launcher():
    spec = importlib.util.spec_from_file_location(
        "launch_train_sim", ROOT / "examples" / "launch_train_sim.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["launch_train_sim"] = module
    spec.loader.exec_module(module)
    return module


def test_libero_preset_has_the_reference_values(launcher):
    config, _ = launcher.parse_config(["--env", "libero"])
    assert (config.batch_size, config.discount, config.max_steps) == (256, 0.999, 500_000)
    assert (config.eval_interval, config.log_interval, config.eval_episodes) == (10_000, 500, 10)
    assert (config.multi_grad_step, config.start_online_updates, config.resize_image) == (
        20,
        500,
        64,
    )
    assert (config.action_magnitude, config.query_freq) == (1.0, 20)
    assert tuple(config.agent.hidden_dims) == (128, 128, 128) and config.agent.num_qs == 10
    assert (config.env_kwargs.suite, config.env_kwargs.task_id) == ("libero_90", 57)
    assert config.base_policy.checkpoint == "gs://openpi-assets/checkpoints/pi0_libero"


def test_aloha_preset_has_the_reference_values(launcher):
    config, _ = launcher.parse_config(["--env", "aloha_cube"])
    assert (config.max_steps, config.multi_grad_step, config.start_online_updates) == (
        3_000_000,
        20,
        1000,
    )
    assert (config.action_magnitude, config.query_freq, config.agent.target_entropy) == (
        2.0,
        50,
        0.0,
    )
    assert config.base_policy.checkpoint.endswith("pi0_aloha_sim")


def test_reference_flags_and_config_overrides_beat_the_preset(launcher):
    config, _ = launcher.parse_config(
        [
            "--env", "libero",
            "--batch_size", "64",
            "--max_steps", "1e6",
            "--hidden_dims", "256",
            "--target_entropy", "0.0",
            "--num_qs", "2",
            "--query_freq", "10",
            "--noise_mode", "full",
            "--pi0_remote", "gpu-box:8000",
            "--launch_group_id", "ignored",
            "--config.agent.encoder_sharing=shared",
            "--config.num_envs", "4",
            "--config.eval_base_every_eval=true",
            "--config.agent.cnn_strides=2,2,2,2",
        ]
    )  # fmt: skip
    assert config.batch_size == 64 and config.max_steps == 1_000_000
    assert tuple(config.agent.hidden_dims) == (256, 256, 256)
    assert config.agent.target_entropy == 0.0 and config.agent.num_qs == 2
    assert config.query_freq == 10 and config.noise_mode == "full"
    assert config.base_policy.remote == "gpu-box:8000"
    assert config.agent.encoder_sharing == "shared" and config.num_envs == 4
    assert config.eval_base_every_eval is True
    assert tuple(config.agent.cnn_strides) == (2, 2, 2, 2)
    # Several --hidden_dims values are taken as given.
    config, _ = launcher.parse_config(["--env", "demo", "--hidden_dims", "32", "64"])
    assert tuple(config.agent.hidden_dims) == (32, 64)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--query_freq", "0"], "positive integer"),
        (["--discount", "1.5"], "discount must be in"),
        (["--max_steps", "lots"], "expected an integer"),
        (["--noise_mode", "gaussian"], "invalid choice"),
        (["--target_entropy", "high"], "target_entropy must be 'auto' or a number"),
        (["--pi0_remote", "localhost"], "host:port"),
        (["--config.no_such_key=1"], "unknown config key 'no_such_key'"),
        (["--config.batch_size=big"], "--config.batch_size: expected an integer"),
        (["--config.num_envs=0"], "num_envs must be > 0"),
        (["--bogus"], "unrecognised argument"),
        (["--resume", "/nonexistent/run"], "no config.json"),
    ],
)
def test_bad_flags_give_clear_errors(launcher, capsys, argv, message):
    with pytest.raises(SystemExit) as excinfo:
        launcher.main(["--env", "demo", *argv])
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_learner_option_names_the_valid_ones(launcher):
    from dsrl.agents.pixel_sac.learner import PixelSACLearner

    config, _ = launcher.parse_config(["--env", "demo", "--config.agent.hiden_dims=3"])
    with pytest.raises(
        ValueError, match=r"unknown learner option\(s\) \['hiden_dims'\].*hidden_dims"
    ):
        launcher.agent_config(config, PixelSACLearner.default_config())
    good = launcher.agent_config(
        launcher.parse_config(["--env", "demo", "--action_magnitude", "2.5"])[0],
        PixelSACLearner.default_config(),
    )
    assert good.action_magnitude == 2.5 and tuple(good.hidden_dims) == (64, 64)


def test_dsrl_na_is_selected_lazily(launcher):
    config, _ = launcher.parse_config(
        ["--env", "demo", "--algorithm", "dsrl_na", "--resize_image", "16", "--hidden_dims", "16"]
    )
    try:
        from dsrl.agents.noise_aliasing import NoiseAliasingLearner
    except ImportError:
        with pytest.raises(ValueError, match="--algorithm pixel_sac"):
            launcher.make_agent(config, {"pixels": ((16, 16, 3), "uint8")}, 2)
        return
    from dsrl.envs.demo import DemoEnv
    from dsrl.envs.steering import make_noise_param

    policy = launcher.make_base_policy(config)
    noise_param = make_noise_param("repeat", policy.noise_shape, config.action_magnitude)
    spec = DemoEnv(image_size=16).spec
    agent = launcher.make_agent(config, spec.observation_spec, 2, policy, noise_param)
    assert isinstance(agent, NoiseAliasingLearner)


def test_plot_run_draws_success_vs_env_steps(tmp_path):
    with RunLogger(tmp_path, {}, project="t", wandb_mode="disabled") as logger:
        logger.log(
            {
                "evaluation_base_iid/success_rate": 0.5,
                "evaluation_mode/success_rate": 0.4,
                "evaluation/success_rate": 0.45,
                "env_steps": 0,
            },
            step=0,
        )
        for step, rate in [(100, 0.7), (200, 1.0)]:
            logger.log(
                {
                    "evaluation_mode/success_rate": rate,
                    "evaluation/success_rate": rate - 0.1,
                    "env_steps": 5 * step,
                },
                step=step,
            )
    out = tmp_path / "plot.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot_run.py"), str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from dsrl.training.plots import success_curves
    from dsrl.utils.logging import read_metrics

    curves = success_curves(read_metrics(tmp_path))
    assert curves["evaluation_mode/success_rate"] == ([0.0, 500.0, 1000.0], [0.4, 0.7, 1.0])
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot_run.py"), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr


@pytest.mark.parametrize("script, env", [("run_libero.sh", "libero"), ("run_aloha.sh", "aloha")])
def test_run_scripts_pass_the_preset_values_through_the_launcher(launcher, script, env):
    """The shell scripts' flags parse and agree with the presets (so neither drifts)."""
    text = (ROOT / "scripts" / script).read_text()
    body = text.split("examples/launch_train_sim.py", 1)[1].split('"$@"', 1)[0]
    argv = [t for t in body.replace("\\\n", " ").split() if t != "\\"]
    argv = ["/tmp/logs" if t == '"$LOGDIR"' else t for t in argv]
    from_script, _ = launcher.parse_config(argv)
    preset, _ = launcher.parse_config(["--env", env])
    for key in ("batch_size", "discount", "max_steps", "multi_grad_step", "query_freq",
                "action_magnitude", "start_online_updates", "eval_interval", "seed"):  # fmt: skip
        assert from_script[key] == preset[key], key
    assert tuple(from_script.agent.hidden_dims) == tuple(preset.agent.hidden_dims)
