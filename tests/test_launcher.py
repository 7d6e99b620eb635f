"""examples/launch_train_sim.py and dsrl.training.cli: presets, reference flag names, --config
overrides, clear errors before any work, the run directory's life cycle, and scripts/plot_run.py
on a real run directory."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsrl.training import cli
from dsrl.training.build import build_run, make_agent, make_base_policy, make_steering
from dsrl.training.config import CONFIG_VERSION
from dsrl.training.config_io import load_config, write_config_file
from dsrl.training.flags import ConfigError
from dsrl.utils.logging import RunLogger

ROOT = Path(__file__).resolve().parents[1]


def test_libero_preset_has_the_reference_values():
    config, _ = cli.parse_sim(["--env", "libero"])
    loop, steering = config.loop, config.steering
    assert (loop.batch_size, loop.discount, loop.max_steps) == (256, 0.999, 500_000)
    assert (loop.eval_interval, loop.log_interval, loop.eval_episodes) == (10_000, 500, 10)
    assert (loop.multi_grad_step, loop.start_online_updates, config.env.image_size) == (
        20,
        500,
        64,
    )
    assert (steering.action_magnitude, steering.query_freq) == (1.0, 20)
    learner = config.learner_config()
    assert tuple(learner.hidden_dims) == (128, 128, 128) and learner.num_qs == 10
    assert (config.env.kwargs["suite"], config.env.kwargs["task_id"]) == ("libero_90", 57)
    assert config.base_policy.checkpoint == "gs://openpi-assets/checkpoints/pi0_libero"


def test_band_pi0_preset_is_the_pi0_preset_with_the_four_changes_that_lifted_it():
    """`--env libero_pi0_cpu_band` differs from `libero_pi0_cpu` in the base policy, the agent's
    observation, whole chunks, held exploration, 16-query returns, the evaluation interval and
    the step budget, and in nothing else (docs/finetune_pi0.md, "Held exploration, ...")."""
    band, _ = cli.parse_sim(["--env", "libero_pi0_cpu_band"])
    pi0, _ = cli.parse_sim(["--env", "libero_pi0_cpu"])
    assert band.base_policy.checkpoint == "libero_cpu_band"
    assert band.env.kwargs["agent_obs"] == "robot_state" and "agent_obs" not in pi0.env.kwargs
    assert band.env.kwargs == {**pi0.env.kwargs, "agent_obs": "robot_state"}
    assert (band.steering.query_freq, pi0.steering.query_freq) == (16, 8)
    assert band.loop.hold_exploration and not pi0.loop.hold_exploration
    assert (band.loop.n_step, band.loop.eval_interval, band.loop.max_steps) == (16, 2_000, 8_000)
    changed = {"hold_exploration", "n_step", "eval_interval", "max_steps"}
    for field in dataclasses.fields(band.loop):
        if field.name not in changed:
            assert getattr(band.loop, field.name) == getattr(pi0.loop, field.name), field.name
    assert band.learner_config() == pi0.learner_config()


def test_aloha_preset_has_the_reference_values():
    config, _ = cli.parse_sim(["--env", "aloha_cube"])
    loop = config.loop
    assert (loop.max_steps, loop.multi_grad_step, loop.start_online_updates) == (
        3_000_000,
        20,
        1000,
    )
    assert (
        config.steering.action_magnitude,
        config.steering.query_freq,
        config.learner_config().target_entropy,
    ) == (2.0, 50, 0.0)
    assert config.base_policy.checkpoint.endswith("pi0_aloha_sim")


def test_reference_flags_and_config_overrides_beat_the_preset():
    config, _ = cli.parse_sim(
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
            "--config.agent.color_jitter=false",
        ]
    )  # fmt: skip
    learner = config.learner_config()
    assert config.loop.batch_size == 64 and config.loop.max_steps == 1_000_000
    assert tuple(learner.hidden_dims) == (256, 256, 256)
    assert learner.target_entropy == 0.0 and learner.num_qs == 2
    assert config.steering.query_freq == 10 and config.steering.noise_mode == "full"
    assert config.base_policy.remote == "gpu-box:8000"
    assert learner.encoder_sharing == "shared" and config.env.num_envs == 4
    assert config.loop.eval_base_every_eval is True
    assert tuple(learner.cnn_strides) == (2, 2, 2, 2)
    # A learner option the preset does not set is still read with the learner's type.
    assert learner.color_jitter is False
    # Several --hidden_dims values are taken as given.
    config, _ = cli.parse_sim(["--env", "demo", "--hidden_dims", "32", "64"])
    assert tuple(config.learner_config().hidden_dims) == (32, 64)


def test_today_paths_and_legacy_flat_keys_reach_the_same_field():
    new, _ = cli.parse_sim(["--config.env.num_envs=3", "--config.loop.seed=7"])
    old, _ = cli.parse_sim(["--config.num_envs=3", "--config.seed=7"])
    flag, _ = cli.parse_sim(["--num_envs", "3", "--seed", "7"])
    assert new == old == flag and new.env.num_envs == 3 and new.loop.seed == 7
    # How K gradient steps run is the execution section, whatever the spelling.
    a, _ = cli.parse_sim(["--config.agent.update_mode=loop", "--config.agent.scan_length=5"])
    b, _ = cli.parse_sim(["--config.execution.mode=loop", "--config.execution.scan_length=5"])
    assert a == b and (a.execution.mode, a.execution.scan_length) == ("loop", 5)


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
        (["--config.agent.hiden_dims=3"], "unknown learner option(s) ['hiden_dims']"),
        (["--config.loop.no_such=1"], "unknown config key 'loop.no_such'"),
    ],
)
def test_bad_flags_give_clear_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as excinfo:
        cli.main_sim(["--env", "demo", *argv])
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_learner_option_names_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown learner option\(s\) \['hiden_dims'\].*hidden_dims"
    ):
        load_config("demo", overrides=[("agent.hiden_dims", "3")])
    good = load_config("demo", flags={"action_magnitude": "2.5"})
    assert good.steering.action_magnitude == 2.5
    assert tuple(good.learner_config().hidden_dims) == (64, 64)
    # The learner's discount is the loop's: one value, set once.
    na = load_config("demo", flags={"algorithm": "dsrl_na", "discount": "0.9"})
    if "discount" in {f.name for f in dataclasses.fields(type(na.learner_config()))}:
        assert na.learner_config().discount == 0.9


def test_algorithm_flag_switches_a_release_preset_to_the_other_learner():
    """The release presets are DSRL-NA with its noise-critic options; `--algorithm pixel_sac`
    runs DSRL-SAC with the preset's shared settings (networks, lr, magnitude) instead of failing
    on the NA-only options. The same options given explicitly are still refused."""
    na = load_config("robomimic_can")
    sac = load_config("robomimic_can", flags={"algorithm": "pixel_sac"})
    assert na.agent.algorithm == "dsrl_na" and sac.agent.algorithm == "pixel_sac"
    assert tuple(sac.learner_config().hidden_dims) == tuple(na.learner_config().hidden_dims)
    assert sac.learner_config().critic_reduction == na.learner_config().critic_reduction
    assert sac.steering == na.steering and sac.loop == na.loop
    with pytest.raises(ValueError, match=r"utd is an option of dsrl_na only"):
        load_config(
            "robomimic_can", flags={"algorithm": "pixel_sac"}, overrides=[("agent.utd", "5")]
        )


def test_dsrl_na_is_built_with_the_steering():
    from dsrl.agents.noise_aliasing import NoiseAliasingLearner
    from dsrl.envs.demo import DemoEnv

    config, _ = cli.parse_sim(
        ["--env", "demo", "--algorithm", "dsrl_na", "--resize_image", "16", "--hidden_dims", "16"]
    )
    steering = make_steering(config, make_base_policy(config))
    agent = make_agent(config, DemoEnv(image_size=16).spec.observation_spec, steering)
    assert isinstance(agent, NoiseAliasingLearner)
    assert agent.transition_spec().action_chunks
    # The latent bound is the steering's; the learner receives it.
    assert agent.action_magnitude == steering.action_magnitude == config.steering.action_magnitude


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
def test_run_scripts_pass_the_preset_values_through_the_launcher(script, env):
    """The shell scripts' flags parse and agree with the presets (so neither drifts)."""
    text = (ROOT / "scripts" / script).read_text()
    body = text.split("examples/launch_train_sim.py", 1)[1].split('"$@"', 1)[0]
    argv = [t for t in body.replace("\\\n", " ").split() if t != "\\"]
    argv = ["/tmp/logs" if t == '"$LOGDIR"' else t for t in argv]
    from_script, _ = cli.parse_sim(argv)
    preset, _ = cli.parse_sim(["--env", env])
    for key in ("batch_size", "discount", "max_steps", "multi_grad_step",
                "start_online_updates", "eval_interval", "seed"):  # fmt: skip
        assert getattr(from_script.loop, key) == getattr(preset.loop, key), key
    assert from_script.steering == preset.steering
    assert from_script.learner_config().hidden_dims == preset.learner_config().hidden_dims


# ------------------------------------------------------------------- bad input, run directory


def _launch(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "launch_train_sim.py"), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_bad_launcher_input_fails_in_one_line_before_any_work(tmp_path):
    """Each bad value: exit status 2, one error line naming the value and how to fix it, no
    traceback, and no run directory (nothing was started)."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    logdir = tmp_path / "runs"
    cases = [
        (["--max_steps", "-1"], ["max_steps", "-1", "budget"]),
        (["--checkpoint_interval", "0"], ["checkpoint_interval", "0", "-1"]),
        (["--action_magnitude", "inf"], ["action_magnitude", "inf", "--action_magnitude"]),
        (["--eval_episodes", "-3"], ["eval_episodes", "-3", "0 to turn control evaluation off"]),
        (["--logdir", str(not_a_dir / "runs")], [str(not_a_dir), "not a directory", "writable"]),
    ]
    for argv, words in cases:
        args = ["--env", "demo", "--logdir", str(logdir), "--no_progress", *argv]
        result = _launch(*args)
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "usage:" not in result.stderr  # the error line alone, not the whole usage
        for word in words:
            assert word in errors[0], (word, errors[0])
        assert not logdir.exists() or not any(logdir.iterdir()), argv


def test_a_launch_that_fails_while_building_leaves_no_run_directory(tmp_path):
    logdir = tmp_path / "runs"
    missing = tmp_path / "no_such_policy.npz"
    result = _launch(
        "--env", "demo", "--logdir", str(logdir), "--no_progress",
        f"--config.base_policy.checkpoint={missing}",
    )  # fmt: skip
    assert result.returncode == 2 and str(missing) in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert logdir.is_dir() and not any(logdir.iterdir())


def test_corrupt_or_newer_config_json_is_named_in_the_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"env": {"name": "demo"')
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON"):
        load_config(resume=run_dir)
    (run_dir / "config.json").write_text('{"version": 99, "env": {"name": "demo"}}')
    with pytest.raises(ConfigError, match="config version 99; this dsrl reads"):
        load_config(resume=run_dir)
    (run_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as excinfo:
        cli.main_sim(["--resume", str(run_dir)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert str(run_dir / "config.json") in err and "not a config mapping" in err


def test_a_version_1_config_json_reads_as_todays_config(tmp_path):
    """A run directory written before the sectioned config (flat keys, learner execution keys
    under agent, noise_kwargs) resumes with the same values."""
    flat = {
        "env": "demo", "env_kwargs": {}, "env_mode": "inline", "num_envs": 8,
        "resize_image": 32,
        "base_policy": {"kind": "flow_mlp", "checkpoint": "", "remote": ""},
        "noise_mode": "repeat", "noise_kwargs": {"num_basis": 2}, "action_magnitude": 1.5,
        "query_freq": 8, "algorithm": "pixel_sac",
        "agent": {"hidden_dims": [64, 64], "num_qs": 2, "target_entropy": "auto",
                  "cnn_features": [16, 16], "cnn_strides": [2, 2], "latent_dim": 32,
                  "actor_lr": 3e-4, "color_jitter": False, "update_mode": "loop"},
        "seed": 0, "batch_size": 128, "discount": 0.99, "max_steps": 1500,
        "max_env_steps": -1, "multi_grad_step": 4, "update_block": 32,
        "start_online_updates": 200, "eval_interval": 250, "eval_episodes": 32,
        "eval_base_every_eval": False, "num_video_episodes": 2, "video_fps": 10,
        "log_interval": 250, "checkpoint_interval": -1, "replay_buffer_capacity": 50000,
        "store_action_chunks": False, "prefix": "dsrl_demo", "wandb_project": "DSRL_demo",
        "wandb_mode": "disabled", "logdir": "runs",
    }  # fmt: skip
    run_dir = tmp_path / "old_run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(flat))
    old = load_config(resume=run_dir)
    today = load_config(  # the old run's values where today's demo preset differs
        "demo",
        overrides=[
            ("execution.mode", "loop"),
            ("steering.num_basis", "2"),
            ("loop.checkpoint_interval", "-1"),
        ],
    )
    assert old == today
    # Written back, it is today's layout with its version.
    write_config_file(run_dir, old)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["version"] == CONFIG_VERSION and saved["env"]["num_envs"] == 8
    assert load_config(resume=run_dir) == today


def _tiny_demo(logdir: Path, *extra: str) -> list[str]:
    return [
        "--env", "demo", "--logdir", str(logdir), "--no_progress", "--wandb_mode", "disabled",
        "--resize_image", "16", "--num_envs", "2", "--batch_size", "8",
        "--start_online_updates", "20", "--multi_grad_step", "1", "--update_block", "4",
        "--eval_episodes", "0", "--hidden_dims", "16", "--config.agent.cnn_features=8",
        "--config.agent.cnn_strides=2", "--config.agent.bottleneck_dim=8", *extra,
    ]  # fmt: skip


def test_a_failed_resume_leaves_config_json_and_the_run_as_they_were(tmp_path, capsys):
    """A resume with a bad override, or with one that cannot restore (another image size), fails
    with a clear error and does not touch config.json; the plain resume then still works, and
    only then is config.json rewritten (with the values given again)."""
    argv = _tiny_demo(tmp_path, "--max_steps", "8", "--checkpoint_interval", "4")
    assert cli.main_sim(argv) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    saved = (run_dir / "config.json").read_bytes()
    assert json.loads(saved)["version"] == CONFIG_VERSION
    capsys.readouterr()
    for bad, message in [
        (["--config.agent.hiden_dims=3"], "unknown learner option(s) ['hiden_dims']"),
        (["--resize_image", "32"], "different config"),
        (["--env", "libero"], "does not match the resumed run's env 'demo'"),
    ]:
        with pytest.raises(SystemExit) as excinfo:
            cli.main_sim(["--resume", str(run_dir), "--no_progress", *bad])
        assert excinfo.value.code == 2
        assert message in capsys.readouterr().err, bad
        assert (run_dir / "config.json").read_bytes() == saved, bad
    assert cli.main_sim(["--resume", str(run_dir), "--no_progress", "--max_steps", "12"]) == 0
    assert "resumed" in capsys.readouterr().out
    assert load_config(resume=run_dir).loop.max_steps == 12
    steps = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(steps) == 12


@pytest.mark.slow
def test_a_run_directory_written_before_the_run_config_resumes(tmp_path, capsys):
    """tests/data/run_v1_demo is a tiny demo run written by the code before RunConfig (flat
    config.json without a version, the learner's `latent_dim`, a replay buffer of format 1 with
    "actions"), stopped at gradient step 8. It resumes to step 12 and is then today's layout."""
    run_dir = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "data" / "run_v1_demo", run_dir)
    assert "version" not in json.loads((run_dir / "config.json").read_text())
    assert cli.main_sim(["--resume", str(run_dir), "--max_steps", "12", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert f"resumed {run_dir} at gradient step 8, 184 env steps, buffer 27" in out
    config = load_config(resume=run_dir)
    assert json.loads((run_dir / "config.json").read_text())["version"] == CONFIG_VERSION
    assert config.env.image_size == 16 and config.learner_config().bottleneck_dim == 8
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and rows[-1]["replay_buffer_size"] >= 27


def test_run_real_sh_flags_parse_to_the_real_preset(tmp_path):
    """scripts/run_real.sh, run by bash, hands the real launcher flags that agree with the real
    preset (a stand-in `python` on PATH records the command line instead of starting a robot)."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nshift\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "ROBOT": "droid",
           "POLICY_SERVER": "127.0.0.1:8000", "LEFT_CAMERA_ID": "1", "RIGHT_CAMERA_ID": "2",
           "WRIST_CAMERA_ID": "3"}  # fmt: skip

    def script_args(*args: str, robot: str = "droid") -> list[str]:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "run_real.sh"), *args],
            env={**env, "ROBOT": robot}, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout.splitlines()

    from_script, _ = cli.parse_real(script_args("--seed", "3"))
    preset, _ = cli.parse_real([])
    assert from_script.loop == dataclasses.replace(preset.loop, seed=3)  # "$@" wins
    assert from_script.steering == preset.steering
    assert from_script.learner_config() == preset.learner_config()
    assert (from_script.env.robot, from_script.base_policy.remote) == ("droid", "127.0.0.1:8000")
    assert str(from_script.env.kwargs["wrist_camera_id"]) == "3"
    # ROBOT=sim: the rehearsal's CPU-sized learner, and "$@" still wins over it.
    rehearsal, _ = cli.parse_real(script_args("--batch_size", "64", robot="sim"))
    assert rehearsal.env.robot == "sim" and rehearsal.loop.batch_size == 64
    assert rehearsal.learner_config().hidden_dims == (256, 256, 256)
    assert rehearsal.loop.first_update_grad_steps == 60 and rehearsal.env.image_size == 64
    assert rehearsal.steering == preset.steering
    # --resume passes only the connection and the given flags: the run keeps its config.json.
    resumed = script_args("--resume", "runs/x", "--max_steps", "80", robot="sim")
    assert "--batch_size" not in resumed and "--max_steps" in resumed and "--robot" in resumed


def test_worker_deadlines_and_checkpoints_kept_come_from_the_run_config(tmp_path):
    """env.*_timeout_s, env.max_worker_failures and log.checkpoints_to_keep reach the env workers
    and the checkpointer of a built run; a value that cannot work is refused before any work."""
    overrides = [
        ("env.mode", "inline"),
        ("env.num_envs", "1"),
        ("env.step_timeout_s", "7.5"),
        ("env.max_worker_failures", "5"),
        ("log.checkpoints_to_keep", "4"),
        ("log.logdir", str(tmp_path)),
        ("log.wandb_mode", "disabled"),
    ]
    config = load_config("demo", overrides=overrides)
    with build_run(config, log=lambda *_: None) as run:
        assert run.vec_env.step_timeout_s == 7.5
        assert run.vec_env.max_worker_failures == 5
        assert run.checkpointer.max_to_keep == 4
    for key, value in (("env.step_timeout_s", "0"), ("log.checkpoints_to_keep", "0")):
        with pytest.raises(ConfigError, match=key):
            load_config("demo", overrides=[(key, value)])
