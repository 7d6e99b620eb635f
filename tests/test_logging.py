"""RunLogger, make_run_dir, read_metrics and Timer."""

from __future__ import annotations

import json
import math
import re
import warnings

import imageio.v2 as imageio
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.utils.logging import RunLogger, Timer, make_run_dir, read_metrics


def test_make_run_dir_names_prefix_time_and_seed(tmp_path):
    first = make_run_dir(tmp_path / "logs", "dsrl_demo", seed=3)
    second = make_run_dir(tmp_path / "logs", "dsrl_demo", seed=3)
    assert first.is_dir() and second.is_dir() and first != second
    assert re.fullmatch(r"dsrl_demo_\d{8}_\d{6}_s3", first.name)
    with pytest.raises(ValueError, match="prefix"):
        make_run_dir(tmp_path, "a/b", seed=0)


def test_jsonl_records_have_exactly_the_logged_keys(tmp_path):
    logged = [
        {"training/critic_loss": np.float32(0.25), "training/temperature": jnp.asarray(1.0)},
        {"evaluation/success_rate": 0.5, "env_steps": np.int64(400), "replay_buffer_size": 20},
        {"training/critic_loss": float("nan")},
    ]
    with RunLogger(tmp_path, {"seed": 0, "env": "demo"}, "dsrl_test", wandb_mode="disabled") as log:
        for step, metrics in enumerate(logged):
            log.log(metrics, step=10 * step)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 10, 20]
    for record, metrics in zip(records, logged, strict=True):
        assert set(record) - {"step"} == set(metrics)
    assert records[0]["training/critic_loss"] == 0.25
    assert records[1]["env_steps"] == 400 and isinstance(records[1]["env_steps"], int)
    assert math.isnan(records[2]["training/critic_loss"])
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 0, "env": "demo"}
    assert not (tmp_path / "wandb").exists()


def test_a_resumed_run_appends_and_a_truncated_last_line_is_skipped(tmp_path):
    with RunLogger(tmp_path, {}, "dsrl_test", wandb_mode="disabled") as log:
        log.log({"a": 1.0}, step=1)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "a": ')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path / "missing")


def test_bad_metrics_are_rejected_clearly(tmp_path):
    with RunLogger(tmp_path, {}, "dsrl_test", wandb_mode="disabled") as log:
        with pytest.raises(TypeError, match="'q_values' must be a scalar.*mean/max"):
            log.log({"q_values": np.zeros(3)}, step=0)
        with pytest.raises(KeyError, match="reserved"):
            log.log({"step": 1}, step=0)
        with pytest.raises(ValueError, match=r"uint8 frames of shape \(T, H, W, 3\)"):
            log.log_video("eval_video/0", np.zeros((2, 8, 8, 3), np.float32), step=0)
    with pytest.raises(ValueError, match="wandb_mode"):
        RunLogger(tmp_path, {}, "dsrl_test", wandb_mode="offlne")


def test_log_video_writes_a_playable_mp4(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 15, 17, 3), dtype=np.uint8)  # odd sizes get padded
    with RunLogger(tmp_path, {}, "dsrl_test", wandb_mode="disabled") as log:
        path = log.log_video("eval_video/0", frames, step=40, fps=10)
    assert path == tmp_path / "videos" / "eval_video_0_40.mp4"
    # Iterate: the ffmpeg reader reports an unknown (huge) length, so list() would fail.
    decoded = np.stack([frame for frame in imageio.get_reader(path)])
    assert decoded.shape == (6, 16, 18, 3)


def test_log_video_does_not_fork_the_jax_process(tmp_path):
    """JAX warns at every os.fork() once it has started ("... will likely lead to a deadlock");
    the video writer starts ffmpeg without forking, so a run writing videos prints nothing."""
    import jax.numpy as jnp

    jnp.ones(3).block_until_ready()  # JAX's threads are running
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    with (
        RunLogger(tmp_path, {}, "dsrl_test", wandb_mode="disabled") as log,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        path = log.log_video("eval_video/0", frames, step=1, fps=5)
    assert [str(w.message) for w in caught if "fork" in str(w.message)] == []
    assert path.stat().st_size > 0


def test_wandb_offline_run_lives_in_the_run_dir(tmp_path, monkeypatch):
    # Keep W&B from reading a user's settings or reaching for the network.
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    logger = RunLogger(tmp_path / "run", {"lr": 3e-4}, "dsrl_test", wandb_mode="offline")
    try:
        logger.log({"training/actor_loss": 1.5}, step=1)
        logger.log_video("eval_video/0", np.zeros((3, 8, 8, 3), np.uint8), step=1, fps=5)
    finally:
        logger.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))
    assert read_metrics(tmp_path / "run") == [{"step": 1, "training/actor_loss": 1.5}]


def test_timer_accumulates_seconds_and_fractions():
    timer = Timer()
    timer.add("env", 3.0)
    timer.add("update", 1.0)
    timer.add("env", 1.0)
    with timer("base_policy"):
        pass
    with timer.section("custom"):
        pass
    assert timer.seconds["env"] == 4.0
    fractions = timer.fractions()
    assert set(fractions) == {"env", "base_policy", "update", "other", "custom"}
    assert fractions["env"] == pytest.approx(4.0 / timer.total)
    assert sum(fractions.values()) == pytest.approx(1.0)
    metrics = timer.metrics()
    assert metrics["time/update_seconds"] == 1.0
    assert metrics["time/env_fraction"] == pytest.approx(fractions["env"])
    timer.reset()
    assert timer.total == 0.0 and timer.fractions()["env"] == 0.0
    with pytest.raises(ValueError, match="seconds"):
        timer.add("env", -1.0)
