"""Checkpoint faults: real orbax steps damaged on disk the ways a run really gets damaged (a
full disk truncating a file, a bad sector flipping bytes, a half-copied run directory, NaN that
reached the buffer). Every case must resume from the newest intact step and delete nothing."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.data.replay_buffer import ReplayBuffer
from dsrl.utils.checkpoints import (
    CheckpointDamagedError,
    CheckpointDiskFullError,
    CheckpointMismatchError,
    NoIntactCheckpointError,
    NonFiniteStateError,
    RunCheckpointer,
)

MANIFEST = "dsrl_checksums.json"


def make_state(step: int) -> dict:
    key = jax.random.key(step)
    return {
        "agent": {
            "params": {"kernel": jax.random.normal(key, (8, 16)), "bias": jnp.full((16,), step)},
            "log_alpha": jnp.asarray(-0.1 * step, jnp.float32),
            "rng": key,
        },
        "counters": {"grad_steps": step, "env_steps": 10 * step},
    }


def make_buffer(n: int) -> ReplayBuffer:
    example = {
        "observations": {"pixels": np.zeros((4, 4, 3), np.uint8), "state": np.zeros(2, np.float32)},
        "latents": np.zeros(2, np.float32),
        "rewards": np.float32(0),
    }
    buffer = ReplayBuffer(example, capacity=64, seed=1)
    for i in range(n):
        buffer.insert(
            {
                "observations": {
                    "pixels": np.full((4, 4, 3), i, np.uint8),
                    "state": np.full(2, i, np.float32),
                },
                "latents": np.full(2, -i, np.float32),
                "rewards": np.float32(-1),
            }
        )
    buffer.end_trajectory()
    return buffer


def template() -> dict:
    return make_state(0)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run with intact steps 10 and 20 (buffer of 10 and 20 transitions)."""
    checkpointer = RunCheckpointer(tmp_path)
    for step in (10, 20):
        checkpointer.save(step, make_state(step), make_buffer(step))
    checkpointer.close()
    return tmp_path


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / str(step)


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def assert_restores_step(run_dir: Path, step: int) -> None:
    restored = RunCheckpointer(run_dir).restore(template())
    assert restored is not None
    state, buffer = restored
    assert state["counters"]["grad_steps"] == step
    np.testing.assert_array_equal(state["agent"]["params"]["bias"], np.full(16, step))
    np.testing.assert_array_equal(
        jax.random.key_data(state["agent"]["rng"]), jax.random.key_data(jax.random.key(step))
    )
    assert len(buffer) == step
    np.testing.assert_array_equal(buffer.get(np.arange(step))["latents"][:, 0], -np.arange(step))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bytes(path: Path, offset_from_end: int = 8, count: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def largest_array_file(step: Path) -> Path:
    return max(
        (p for p in (step / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
        key=lambda p: p.stat().st_size,
    )


# Each damage case names what a user would see and the file it hits; the damage is applied to
# the newest step (20), and the run must come back at step 10.
DAMAGE = {
    "truncated buffer file": lambda s: truncate(s / "replay_buffer" / "leaf_000.npy"),
    "truncated buffer metadata": lambda s: truncate(s / "replay_buffer" / "replay_buffer.json"),
    "truncated state metadata": lambda s: truncate(s / "state_meta" / "metadata"),
    "corrupt state metadata": lambda s: (s / "state_meta" / "metadata").write_text("{not json"),
    "flipped bytes in an array file": lambda s: flip_bytes(largest_array_file(s)),
    "flipped bytes in a buffer array": lambda s: flip_bytes(s / "replay_buffer" / "leaf_000.npy"),
    "emptied step directory": lambda s: [shutil.rmtree(s), s.mkdir()],
    "deleted buffer file": lambda s: (s / "replay_buffer" / "leaf_001.npy").unlink(),
}


# Flipped bytes that still decode to finite numbers are found only by the checksums; the other
# damage is found without a manifest too (a step written before checksums existed).
CASES = [(name, True) for name in DAMAGE] + [
    (name, False) for name in DAMAGE if not name.startswith("flipped bytes")
]


@pytest.mark.parametrize(
    ("damage", "verified"),
    CASES,
    ids=[f"{name.replace(' ', '_')}-{'manifest' if v else 'no_manifest'}" for name, v in CASES],
)
def test_damaged_newest_step_falls_back_to_the_older_intact_one(run_dir, damage, verified, caplog):
    newest = step_dir(run_dir, 20)
    if not verified:
        for step in (10, 20):
            (step_dir(run_dir, step) / MANIFEST).unlink()
    DAMAGE[damage](newest)
    damaged_files = tree_bytes(newest)
    with caplog.at_level(logging.WARNING, logger="dsrl.utils.checkpoints"):
        assert_restores_step(run_dir, 10)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "step 20" in messages and "skipped" in messages
    # Nothing is deleted or repaired behind the user's back.
    assert tree_bytes(newest) == damaged_files


def test_checksum_failure_names_the_file(run_dir, caplog):
    flip_bytes(step_dir(run_dir, 20) / "replay_buffer" / "leaf_002.npy")
    with caplog.at_level(logging.WARNING, logger="dsrl.utils.checkpoints"):
        assert_restores_step(run_dir, 10)
    assert "leaf_002.npy does not match its sha256" in caplog.text
    with pytest.raises(CheckpointDamagedError, match="leaf_002.npy does not match its sha256"):
        RunCheckpointer(run_dir).restore(template(), step=20)


def test_nan_in_a_manifest_less_buffer_is_refused_on_restore(run_dir, caplog):
    """NaN rewards on disk (saved before saves were checked): restoring them would train into
    NaN. No step has a manifest; the rewards file is rewritten in place, same size."""
    for step in (10, 20):
        (step_dir(run_dir, step) / MANIFEST).unlink()
    newest = step_dir(run_dir, 20)
    # Leaves in sorted order: actions, observations/pixels, observations/state, rewards.
    rewards_file = newest / "replay_buffer" / "leaf_003.npy"
    rewards = np.load(rewards_file)
    assert rewards.shape == (20,)
    rewards[5] = np.nan
    np.save(rewards_file, rewards)
    with caplog.at_level(logging.WARNING, logger="dsrl.utils.checkpoints"):
        assert_restores_step(run_dir, 10)
    assert "replay buffer field 'rewards' (1 transitions, first at slot 5)" in caplog.text
    assert "restored step 10 unverified" in caplog.text


def test_manifest_less_steps_still_restore_unverified(run_dir, caplog):
    """Checkpoints written before checksums existed have no manifest: with no verified step, the
    newest loads after its arrays pass the checks, saying so."""
    for step in (10, 20):
        (step_dir(run_dir, step) / MANIFEST).unlink()
    checkpointer = RunCheckpointer(run_dir)
    assert checkpointer.verify(20) is False
    with caplog.at_level(logging.WARNING, logger="dsrl.utils.checkpoints"):
        assert_restores_step(run_dir, 20)
    assert "restored step 20 unverified" in caplog.text
    assert "shapes, dtypes, finite values" in caplog.text


@pytest.mark.parametrize("manifest", ["deleted", "truncated"])
def test_verified_older_step_beats_an_unverified_newest_one(run_dir, caplog, manifest):
    """The newest step lost its manifest and its replay buffer has flipped bytes (finite, so no
    check of the values could tell): the older verified step is restored, the newest is named
    and left on disk."""
    newest = step_dir(run_dir, 20)
    if manifest == "deleted":
        (newest / MANIFEST).unlink()
    else:
        (newest / MANIFEST).write_text('{"format_version": 1, "fi')
    actions_file = newest / "replay_buffer" / "leaf_000.npy"
    data = bytearray(actions_file.read_bytes())
    data[-8:] = bytes(8)  # two float32 actions become 0.0: finite, wrong
    actions_file.write_bytes(bytes(data))
    before = tree_bytes(run_dir)
    with caplog.at_level(logging.WARNING):
        assert_restores_step(run_dir, 10)
    assert "Checkpoint step 20" in caplog.text and "no readable checksum manifest" in caplog.text
    assert "step 10 is the newest verified one" in caplog.text
    assert tree_bytes(run_dir) == before


def test_every_step_damaged_is_one_clear_error_and_nothing_is_deleted(run_dir):
    truncate(step_dir(run_dir, 20) / "replay_buffer" / "leaf_000.npy")
    (step_dir(run_dir, 10) / "state_meta" / "metadata").write_text("")
    before = tree_bytes(run_dir)
    with pytest.raises(NoIntactCheckpointError) as err:
        RunCheckpointer(run_dir).restore(template())
    message = str(err.value)
    assert "step 20:" in message and "step 10:" in message and "fresh run directory" in message
    assert tree_bytes(run_dir) == before


def test_config_mismatch_is_not_mistaken_for_damage(run_dir):
    other = make_state(0)
    other["agent"]["params"]["kernel"] = jnp.zeros((8, 32))
    with pytest.raises(CheckpointMismatchError, match="different config"):
        RunCheckpointer(run_dir).restore(other)


@pytest.mark.parametrize("where", ["agent", "buffer"])
def test_non_finite_state_is_never_saved_and_the_last_good_step_is_kept(run_dir, where):
    checkpointer = RunCheckpointer(run_dir, max_to_keep=1)
    state, buffer = make_state(30), make_buffer(30)
    if where == "agent":
        state["agent"]["params"]["kernel"] = (
            state["agent"]["params"]["kernel"].at[2, 3].set(jnp.nan)
        )
        expected = r"\['agent'\]\['params'\]\['kernel'\]"
    else:
        buffer.insert(
            {
                "observations": {
                    "pixels": np.zeros((4, 4, 3), np.uint8),
                    "state": np.zeros(2, np.float32),
                },
                "latents": np.zeros(2, np.float32),
                "rewards": np.float32(np.inf),
            }
        )
        expected = r"replay buffer field 'rewards' \(1 transitions, first at slot 30\)"
    before = tree_bytes(run_dir)
    with pytest.raises(NonFiniteStateError, match=expected + ".*step 20 stays the latest"):
        checkpointer.save(30, state, buffer)
    assert checkpointer.all_steps() == [10, 20]
    assert tree_bytes(run_dir) == before
    assert_restores_step(run_dir, 20)


def test_old_steps_are_deleted_only_after_the_new_one_is_verified(tmp_path):
    checkpointer = RunCheckpointer(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        checkpointer.save(step, make_state(step), make_buffer(step))
        assert checkpointer.verify(step) is True
    assert checkpointer.all_steps() == [2, 3]
    # A save that fails half-way (an unsavable leaf, found after the finiteness check) leaves
    # the kept steps alone.
    with pytest.raises(TypeError):
        checkpointer.save(4, {"bad": object()}, make_buffer(4))
    assert checkpointer.all_steps() == [2, 3]
    keep_one = RunCheckpointer(tmp_path, max_to_keep=1)
    keep_one.save(5, make_state(5), make_buffer(5))
    assert keep_one.all_steps() == [5]
    with pytest.raises(ValueError, match="max_to_keep"):
        RunCheckpointer(tmp_path, max_to_keep=0)


def test_resaving_a_step_keeps_the_old_copy_until_the_new_one_is_verified(tmp_path):
    checkpointer = RunCheckpointer(tmp_path, max_to_keep=1)
    checkpointer.save(20, make_state(20), make_buffer(20))
    checkpointer.save(20, make_state(20), make_buffer(20))  # the normal replace path
    assert checkpointer.all_steps() == [20]
    assert not list((tmp_path / "checkpoints").glob("*.dsrl-replaced"))
    # A crash mid-replace: the old copy is aside, the new one is incomplete (no manifest).
    old = step_dir(tmp_path, 20)
    os.rename(old, old.with_name("20.dsrl-replaced"))
    old.mkdir()
    (old / "half_written").write_bytes(b"\0" * 10)
    assert_restores_step(tmp_path, 20)  # opening the run puts the old copy back
    assert not list((tmp_path / "checkpoints").glob("*.dsrl-replaced"))
    assert RunCheckpointer(tmp_path).verify(20) is True


def test_a_damaged_step_newer_than_the_resumed_one_does_not_block_saving(run_dir):
    """After resuming from 10 past a damaged 20, the run saves 15 and 20 again as it goes."""
    truncate(step_dir(run_dir, 20) / "state_meta" / "metadata")
    checkpointer = RunCheckpointer(run_dir)
    state, _ = checkpointer.restore(template())
    assert state["counters"]["grad_steps"] == 10
    checkpointer.save(15, make_state(15), make_buffer(15))
    # max_to_keep=2 counts the new step and the one before it; the damaged 20 is left alone.
    assert checkpointer.all_steps() == [10, 15, 20]
    assert_restores_step(run_dir, 15)
    checkpointer.save(20, make_state(20), make_buffer(20))
    assert_restores_step(run_dir, 20)
    manifest = json.loads((step_dir(run_dir, 20) / MANIFEST).read_text())
    assert "replay_buffer/leaf_000.npy" in manifest["files"]


# ---------------------------------------------------------------------------------------------
# Through the training loop: a real run, real checkpoints, real damage, then a resume.


def _loop_parts(tmp_path, fault_dir=None):
    from fault_loop_parts import demo_steering, replay_buffer, small_learner
    from faulty_demo_env import FaultyDemoEnv

    from dsrl.envs.demo import DemoEnv
    from dsrl.envs.vector import VectorEnv
    from dsrl.training import loop

    if fault_dir is None:
        env_fn = functools.partial(DemoEnv, image_size=16)
    else:
        env_fn = functools.partial(FaultyDemoEnv, str(fault_dir), image_size=16)
    venv = VectorEnv([env_fn] * 2, mode="inline")
    steering = demo_steering()
    agent = small_learner(venv.spec, steering)
    buffer = replay_buffer(venv.spec, steering)
    config = loop.LoopConfig(
        seed=3,
        max_steps=24,
        batch_size=8,
        multi_grad_step=1,
        update_block=4,
        start_online_updates=20,
        eval_interval=1000,
        eval_episodes=0,
        log_interval=1000,
        checkpoint_interval=8,
        progress=False,
    )
    return venv, steering, agent, buffer, config


def test_run_resumes_from_the_newest_intact_step_after_damage(tmp_path):
    from dsrl.training import loop

    venv, steering, agent, buffer, config = _loop_parts(tmp_path)
    checkpointer = RunCheckpointer(tmp_path, max_to_keep=3)
    first = loop.train(
        env=venv,
        steering=steering,
        agent=agent,
        buffer=buffer,
        config=config,
        checkpointer=checkpointer,
    )
    assert checkpointer.all_steps() == [8, 16, 24]
    truncate(step_dir(tmp_path, 24) / "replay_buffer" / "leaf_000.npy")
    (step_dir(tmp_path, 16) / "state_meta" / "metadata").write_text("{")
    agent_template = _loop_parts(tmp_path)[2]
    restored_agent, state, buffer = loop.restore(
        RunCheckpointer(tmp_path, max_to_keep=3), agent_template
    )
    assert state.grad_steps == 8 and len(buffer) == state.num_online_samples
    resumed = loop.train(
        env=venv,
        steering=steering,
        agent=restored_agent,
        buffer=buffer,
        config=config,
        state=state,
        checkpointer=RunCheckpointer(tmp_path, max_to_keep=3),
    )
    venv.close()
    # The resumed run reaches the same end, and its final save replaced the damaged step 24.
    assert resumed.state == first.state
    assert RunCheckpointer(tmp_path).verify(24) is True


def test_nan_from_the_env_stops_the_run_before_a_bad_checkpoint_is_saved(tmp_path):
    from dsrl.training import loop

    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "NAN@7.fault").touch()  # an episode of the 4th collection round ends in NaN
    venv, steering, agent, buffer, config = _loop_parts(tmp_path, faults)
    run_dir = tmp_path / "run"
    config = dataclasses.replace(config, max_steps=400)
    with pytest.raises(NonFiniteStateError, match="next_observations/state") as err:
        loop.train(
            env=venv,
            steering=steering,
            agent=agent,
            buffer=buffer,
            config=config,
            checkpointer=RunCheckpointer(run_dir, max_to_keep=1),
        )
    venv.close()
    assert not list(faults.glob("*.fault"))
    refused_step = int(str(err.value).split("checkpoint step ")[1].split()[0])
    checkpointer = RunCheckpointer(run_dir)
    (kept,) = checkpointer.all_steps()  # max_to_keep=1: the last good one, not deleted
    assert 0 < kept < refused_step and checkpointer.verify(kept)
    _, state, restored_buffer = loop.restore(checkpointer, _loop_parts(tmp_path)[2])
    assert state.grad_steps == kept and not restored_buffer.non_finite_fields()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a real full disk (needs root and mount rights, e.g. not in every CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_is_one_clear_error_and_the_last_step_is_kept(small_disk, caplog):
    checkpointer = RunCheckpointer(small_disk)
    checkpointer.save(10, make_state(10), make_buffer(10))
    big = ReplayBuffer({"pixels": np.zeros((64, 64, 3), np.uint8)}, capacity=200, seed=0)
    for i in range(200):
        big.insert({"pixels": np.full((64, 64, 3), i, np.uint8)})
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointDiskFullError) as err:
        checkpointer.save(20, make_state(20), big)
    message = str(err.value)
    assert "\n" not in message and "the disk is full" in message
    assert "step 10 stays the latest" in message and "--resume" in message
    assert not caplog.records, "orbax's traceback was logged as well"
    # Nothing half-written is left to fill the disk further; step 10 restores.
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == ["10"]
    assert_restores_step(small_disk, 10)
