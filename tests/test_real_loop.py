"""The real-robot path: DROID env adapter, operator keyboard, and the loop end to end against a
simulated DROID RobotEnv (backed by the demo task) with a policy server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import pty
import termios
import threading

import numpy as np
import pytest

from dsrl.envs.droid import (
    DroidConfig,
    DroidEnv,
    SimulatedRobotEnv,
    extract_observation,
    make_robot_env,
)
from dsrl.envs.keyboard import ScriptedKeyboard, TerminalKeyboard
from dsrl.training.cli import main_real

IDS = {"left_camera_id": "111", "right_camera_id": "222", "wrist_camera_id": "333"}


def _env(answers=(), polls=(), **overrides) -> tuple[DroidEnv, SimulatedRobotEnv, ScriptedKeyboard]:
    cfg = DroidConfig(**IDS, image_size=32, control_hz=0, max_episode_steps=12, **overrides)
    robot = SimulatedRobotEnv(cfg.camera_ids())
    keyboard = ScriptedKeyboard(answers, polls)
    return DroidEnv(cfg, robot=robot, keyboard=keyboard), robot, keyboard


def test_observation_layout_and_colour_order():
    env, robot, keyboard = _env(answers=["\n"])
    obs = env.reset()
    assert "reset the scene" in keyboard.prompts[0]
    assert obs["pixels"].shape == (32, 32, 9) and obs["pixels"].dtype == np.uint8
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert env.spec.observation_spec["pixels"][0] == (32, 32, 9) and env.spec.action_dim == 8
    for key in ("observation/exterior_image_1_left", "observation/wrist_image_left"):
        assert obs[key].shape == (224, 224, 3) and obs[key].dtype == np.uint8
    assert obs["observation/joint_position"].shape == (7,)
    assert obs["observation/gripper_position"].shape == (1,)
    # BGR(A) from the ZED is turned into RGB, alpha dropped.
    raw = robot.get_observation()
    ext = extract_observation(raw, DroidConfig(**IDS).camera_ids())
    np.testing.assert_array_equal(ext["wrist"], raw["image"]["333_left"][..., 2::-1])


def test_operator_stop_then_success_label():
    env, robot, keyboard = _env(answers=["\n", "1"], polls=[None, None, "q"])
    env.reset()
    results = [env.step(np.zeros(8)) for _ in range(3)]
    obs, reward, terminated, truncated, info = results[-1]
    assert [r[2] or r[3] for r in results] == [False, False, True]
    assert info == {"success": True, "stopped_by_operator": True}
    assert reward == 1.0 and terminated and not truncated
    assert "Success?" in keyboard.prompts[-1]


def test_time_limit_failure_label_and_action_processing():
    env, robot, _ = _env(answers=["\n", "x", "0"])  # a stray key is ignored at the prompt
    env.reset()
    outs = [env.step(np.array([2.0, -3.0, 0, 0, 0, 0, 0, 0.7])) for _ in range(12)]
    assert not any(o[2] or o[3] for o in outs[:-1])
    _, reward, terminated, truncated, info = outs[-1]
    assert truncated and not terminated and reward == 0.0 and not info["success"]
    sent = robot.actions[-1]
    np.testing.assert_array_equal(sent[:2], [1.0, -1.0])  # clipped to RobotEnv's range
    assert sent[-1] == 1.0  # gripper binarised at 0.5


def test_rate_limit_keeps_control_hz():
    now = [0.0]
    sleeps: list[float] = []

    def sleep(dt):
        sleeps.append(dt)
        now[0] += dt

    cfg = DroidConfig(**IDS, image_size=16, control_hz=10.0, max_episode_steps=50)
    env = DroidEnv(
        cfg,
        robot=SimulatedRobotEnv(cfg.camera_ids()),
        keyboard=ScriptedKeyboard(["\n"]),
        clock=lambda: now[0],
        sleep=sleep,
    )
    env.reset()
    for _ in range(4):
        env.step(np.zeros(8))
        now[0] += 0.03  # the policy / agent take 30 ms between steps
    assert sleeps == pytest.approx([0.07, 0.07, 0.07])


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="camera id.*wrist"):
        DroidConfig(left_camera_id="1", right_camera_id="2").camera_ids()
    env, _, _ = _env(answers=["\n"])
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(8))
    env.reset()
    with pytest.raises(ValueError, match="8 finite numbers"):
        env.step(np.zeros(7))
    with pytest.raises(KeyError, match=r"wrist camera \(id '999'\)"):
        extract_observation(SimulatedRobotEnv({"a": "1"}).get_observation(), {"wrist": "999"})
    cfg = DroidConfig(**IDS, image_size=16, control_hz=0, prefix_feature_dim=4)
    env = DroidEnv(
        cfg,
        robot=SimulatedRobotEnv(cfg.camera_ids()),
        keyboard=ScriptedKeyboard(["\n"]),
        prefix_feature_fn=lambda obs: np.zeros(5),
    )
    with pytest.raises(ValueError, match="prefix_feature_dim=4"):
        env.reset()


@pytest.mark.skipif(importlib.util.find_spec("droid") is not None, reason="droid is installed")
def test_missing_droid_says_how_to_install():
    with pytest.raises(ImportError, match="git clone https://github.com/droid-dataset/droid"):
        make_robot_env()


def test_terminal_keyboard_over_a_pty_restores_the_terminal():
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "r")
    before = termios.tcgetattr(slave)
    prompts: list[str] = []
    kb = TerminalKeyboard(stream, printer=prompts.append)
    try:
        assert kb.poll() is None  # nothing typed: does not block
        os.write(master, b"q")
        assert kb.poll() == "q"  # one key, no Enter needed (cbreak)
        os.write(master, b"zz")  # typed during the episode: must not answer the prompt
        threading.Timer(0.2, lambda: os.write(master, b"x1")).start()
        assert kb.wait(("1", "0"), "Success?") == "1"
        assert prompts == ["Success?"]
    finally:
        kb.close()
        assert termios.tcgetattr(slave) == before
        stream.close()
        os.close(master)


def test_terminal_keyboard_refuses_a_pipe():
    r, w = os.pipe()
    with os.fdopen(r) as stream, pytest.raises(RuntimeError, match="interactive terminal"):
        TerminalKeyboard(stream)
    os.close(w)


# ------------------------------------------------------------------------------ end to end


class DroidKeyedPolicy:
    """A Pi0-DROID stand-in on openpi's DROID keys: (10, 32) noise -> (10, 8) actions."""

    noise_shape = (10, 32)
    action_dim = 8

    def sample_actions(self, observation, noise):
        joints = np.asarray(observation["observation/joint_position"], np.float32)
        assert np.asarray(observation["observation/exterior_image_1_left"]).shape[1:] == (
            224,
            224,
            3,
        )
        return np.tanh(0.5 * noise[..., :8] + joints[:, None, :1]).astype(np.float32)


@pytest.mark.slow
def test_real_loop_end_to_end_with_resume(tmp_path):
    pytest.importorskip(
        "dsrl.envs.vector", reason="VectorEnv (dsrl/envs/vector.py) not written yet"
    )
    from dsrl.serving import PolicyServer
    from dsrl.utils.logging import read_metrics

    with PolicyServer(DroidKeyedPolicy(), port=0).running() as server:
        argv = [
            "--robot", "sim", "--pi0_remote", f"127.0.0.1:{server.port}",
            *[f"--{k}={v}" for k, v in IDS.items()],
            "--max_episode_steps", "20", "--resize_image", "32", "--hidden_dims", "32",
            "--batch_size", "1", "--multi_grad_step", "2", "--update_block", "2",
            "--max_steps", "10", "--log_interval", "2", "--checkpoint_interval", "4",
            "--wandb_mode", "disabled", "--logdir", str(tmp_path), "--no_progress",
            "--config.first_update_grad_steps=4", "--config.env_kwargs.control_hz=0",
        ]  # fmt: skip
        # Episode 1: operator presses q at step 3 and labels success; episode 2 runs out its
        # 20 steps and is labelled a failure.
        kb = ScriptedKeyboard(answers=["\n", "1", "\n", "0"], polls=[None, None, "q"])
        assert main_real(argv, keyboard=kb) == 0
        (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
        assert sum("Success?" in p for p in kb.prompts) == 2
        rows = read_metrics(run_dir)
        last = [r for r in rows if "num_online_trajs" in r][-1]
        assert last["num_online_trajs"] == 2 and last["num_online_samples"] == 3
        assert last["env_steps"] == 23
        assert any("training/critic_loss" in r for r in rows) or any(
            k.startswith("training/") for r in rows for k in r
        )

        # Resume from the run directory: counters and buffer continue.
        kb2 = ScriptedKeyboard(answers=["\n", "1"])
        assert (
            main_real(
                ["--resume", str(run_dir), "--max_steps", "14", "--no_progress"], keyboard=kb2
            )
            == 0
        )
        rows = read_metrics(run_dir)
        last = [r for r in rows if "num_online_trajs" in r][-1]
        assert last["num_online_trajs"] == 3 and last["env_steps"] == 43
        assert "episode 3" in kb2.prompts[0]


def test_real_launcher_rejects_in_update_dsrl_na_on_a_policy_server_before_training(
    tmp_path, capsys
):
    """DSRL-NA's in-update path (--num_aliases 0) runs the base policy inside its jitted update; a
    policy server cannot be run there. The real launcher says so (the learner's own message,
    naming stored aliases and DSRL-SAC as the ways out) before any episode, closes the keyboard
    and leaves no run directory. (By default DSRL-NA stores aliases with such a policy.)"""
    from dsrl.serving import PolicyServer

    with PolicyServer(DroidKeyedPolicy(), port=0).running() as server:
        kb = ScriptedKeyboard(answers=["\n", "1"])
        argv = [
            "--robot", "sim", "--pi0_remote", f"127.0.0.1:{server.port}", "--algorithm",
            "dsrl_na", "--num_aliases", "0", *[f"--{k}={v}" for k, v in IDS.items()],
            "--resize_image", "32",
            "--hidden_dims", "16", "--wandb_mode", "disabled", "--logdir", str(tmp_path),
            "--no_progress", "--config.env_kwargs.control_hz=0",
        ]  # fmt: skip
        with pytest.raises(SystemExit) as excinfo:
            main_real(argv, keyboard=kb)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "pure-JAX sampler" in err and "--algorithm pixel_sac" in err
    assert "--num_aliases 16" in err
    assert kb.prompts == []  # no episode was started
    assert list(tmp_path.iterdir()) == []
