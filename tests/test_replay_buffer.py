"""ReplayBuffer: circular overwrite, trajectory bounds, seeded sampling, save/load, validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dsrl.data.replay_buffer import ReplayBuffer

PIXELS = (6, 5, 3)
STATE_DIM = 2
ACTION_DIM = 4


def make_transition(i: int) -> dict:
    """A transition whose every leaf encodes its insert number i."""
    obs = {
        "pixels": np.full(PIXELS, i % 256, np.uint8),
        "state": np.full(STATE_DIM, i, np.float32),
    }
    next_obs = {
        "pixels": np.full(PIXELS, (i + 1) % 256, np.uint8),
        "state": np.full(STATE_DIM, i + 1, np.float32),
    }
    return {
        "observations": obs,
        "actions": np.full(ACTION_DIM, i, np.float32),
        "rewards": np.float32(-1.0),
        "masks": np.float32(1.0),
        "discounts": np.float32(0.99),
        "next_observations": next_obs,
    }


def fill(buffer: ReplayBuffer, episode_lengths: list[int], start: int = 0) -> int:
    i = start
    for length in episode_lengths:
        for _ in range(length):
            buffer.insert(make_transition(i))
            i += 1
        buffer.end_trajectory()
    return i


def test_storage_dtypes_follow_the_example_and_pixels_stay_uint8():
    buffer = ReplayBuffer(make_transition(0), capacity=8, seed=0)
    fill(buffer, [4])
    batch = buffer.sample(4, num_batches=2)
    assert batch["observations"]["pixels"].dtype == np.uint8
    assert batch["observations"]["state"].dtype == np.float32
    assert batch["rewards"].dtype == np.float32
    # Python floats in the example are stored as float32, not numpy's float64 default.
    scalar = ReplayBuffer({"rewards": 0.0}, capacity=2, seed=0)
    scalar.insert({"rewards": 1.0})
    assert scalar.sample(1)["rewards"].dtype == np.float32


def test_wraparound_overwrites_oldest_first_and_never_grows():
    capacity = 5
    buffer = ReplayBuffer(make_transition(0), capacity=capacity, seed=0)
    for i in range(12):
        buffer.insert(make_transition(i))
        assert len(buffer) == min(i + 1, capacity)
    assert buffer.capacity == capacity
    assert buffer.num_inserted == 12
    # 12 inserts into 5 slots: slot s holds the newest i with i % 5 == s, i.e. 10, 11, 7, 8, 9.
    stored = buffer.get(np.arange(capacity))
    np.testing.assert_array_equal(stored["actions"][:, 0], [10, 11, 7, 8, 9])
    np.testing.assert_array_equal(stored["observations"]["pixels"][:, 0, 0, 0], [10, 11, 7, 8, 9])
    assert buffer.insert_index == 2
    # Sampling only ever returns the 5 newest transitions.
    values = set(buffer.sample(5, num_batches=50)["actions"][..., 0].ravel().tolist())
    assert values == {7.0, 8.0, 9.0, 10.0, 11.0}


def test_sample_before_wrap_only_returns_inserted_transitions():
    buffer = ReplayBuffer(make_transition(0), capacity=100, seed=1)
    for i in range(1, 4):
        buffer.insert(make_transition(i))
    values = set(buffer.sample(3, num_batches=100)["actions"][..., 0].ravel().tolist())
    assert values == {1.0, 2.0, 3.0}


def test_trajectory_bounds_under_wraparound():
    capacity = 10
    buffer = ReplayBuffer(make_transition(0), capacity=capacity, seed=0)
    fill(buffer, [3, 4])
    assert buffer.trajectory_bounds == [(0, 3), (3, 7)]
    # An unclosed trajectory is not listed; closing twice records nothing extra.
    buffer.insert(make_transition(7))
    assert buffer.trajectory_bounds == [(0, 3), (3, 7)]
    buffer.end_trajectory()
    buffer.end_trajectory()
    assert buffer.trajectory_bounds == [(0, 3), (3, 7), (7, 8)]
    # Next episode (length 4) wraps: slots 8, 9, 0, 1, overwriting episode [0, 3) partially.
    fill(buffer, [4], start=8)
    assert buffer.trajectory_bounds == [(3, 7), (7, 8), (8, 12)]
    wrapped = buffer.sample_trajectories(3)
    lengths = [len(t["actions"]) for t in wrapped]
    assert lengths == [4, 1, 4]
    np.testing.assert_array_equal(wrapped[2]["actions"][:, 0], [8, 9, 10, 11])
    np.testing.assert_array_equal(wrapped[0]["actions"][:, 0], [3, 4, 5, 6])
    # Every listed trajectory's slots hold consecutive inserts (nothing stale).
    for start, end in buffer.trajectory_bounds:
        slots = np.arange(start, end) % capacity
        actions = buffer.get(slots)["actions"][:, 0]
        np.testing.assert_array_equal(np.diff(actions), np.ones(len(actions) - 1))
    # An episode longer than the capacity is not recorded (its start was overwritten).
    fill(buffer, [capacity + 3], start=12)
    assert buffer.trajectory_bounds == []


def test_sample_shapes_and_leading_k_b_axes():
    buffer = ReplayBuffer(make_transition(0), capacity=20, seed=0)
    fill(buffer, [10])
    batch = buffer.sample(batch_size=4, num_batches=3)
    assert batch["observations"]["pixels"].shape == (3, 4, *PIXELS)
    assert batch["next_observations"]["state"].shape == (3, 4, STATE_DIM)
    assert batch["actions"].shape == (3, 4, ACTION_DIM)
    for key in ("rewards", "masks", "discounts"):
        assert batch[key].shape == (3, 4)
    # Leaves of one sampled transition belong together.
    np.testing.assert_array_equal(
        batch["observations"]["state"][..., 0] + 1, batch["next_observations"]["state"][..., 0]
    )


def test_sampling_is_determined_by_the_seed():
    def batches(seed: int) -> list[np.ndarray]:
        buffer = ReplayBuffer(make_transition(0), capacity=30, seed=seed)
        fill(buffer, [25])
        return [buffer.sample(8, num_batches=2)["actions"] for _ in range(3)]

    for a, b in zip(batches(7), batches(7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(batches(7), batches(8), strict=True))


def test_sampling_does_not_touch_the_global_numpy_rng():
    np.random.seed(0)  # noqa: NPY002 - this test is about the legacy global RNG
    expected = np.random.rand()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002 - this test is about the legacy global RNG
    buffer = ReplayBuffer(make_transition(0), capacity=10, seed=0)
    fill(buffer, [5])
    buffer.sample(4, num_batches=3)
    assert np.random.rand() == expected  # noqa: NPY002


def test_save_load_restores_exactly_and_continues_the_same_batches(tmp_path):
    buffer = ReplayBuffer(make_transition(0), capacity=7, seed=3)
    fill(buffer, [4, 3, 5])  # wraps
    buffer.insert(make_transition(100))  # an open trajectory
    buffer.sample(3, num_batches=2)  # advance the RNG before saving
    buffer.save(tmp_path / "buffer")
    loaded = ReplayBuffer.load(tmp_path / "buffer", example_transition=make_transition(0))

    assert len(loaded) == len(buffer)
    assert loaded.insert_index == buffer.insert_index
    assert loaded.num_inserted == buffer.num_inserted
    assert loaded.trajectory_bounds == buffer.trajectory_bounds
    everything = np.arange(len(buffer))
    for a, b in zip(_leaves(buffer.get(everything)), _leaves(loaded.get(everything)), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # Continued use is identical: same batches, same overwrite position, same bounds.
    for _ in range(3):
        for a, b in zip(
            _leaves(buffer.sample(4, num_batches=2)),
            _leaves(loaded.sample(4, num_batches=2)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    for target in (buffer, loaded):
        target.insert(make_transition(101))
        target.end_trajectory()
    assert loaded.trajectory_bounds == buffer.trajectory_bounds
    np.testing.assert_array_equal(
        loaded.get(everything)["actions"], buffer.get(everything)["actions"]
    )


def test_save_replaces_an_old_save_atomically_and_leaves_no_temp_dirs(tmp_path):
    buffer = ReplayBuffer(make_transition(0), capacity=5, seed=0)
    fill(buffer, [2])
    buffer.save(tmp_path / "buffer")
    fill(buffer, [2], start=2)
    buffer.save(tmp_path / "buffer")
    assert len(ReplayBuffer.load(tmp_path / "buffer")) == 4
    assert os.listdir(tmp_path) == ["buffer"]


def test_failed_save_keeps_the_previous_save(tmp_path, monkeypatch):
    buffer = ReplayBuffer(make_transition(0), capacity=5, seed=0)
    fill(buffer, [2])
    buffer.save(tmp_path / "buffer")
    fill(buffer, [2], start=2)

    def crash(directory, arr, allow_pickle=True):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        buffer.save(tmp_path / "buffer")
    monkeypatch.undo()
    assert len(ReplayBuffer.load(tmp_path / "buffer")) == 2
    assert os.listdir(tmp_path) == ["buffer"]


def test_load_rejects_a_different_layout_by_name(tmp_path):
    buffer = ReplayBuffer(make_transition(0), capacity=5, seed=0)
    buffer.save(tmp_path / "buffer")
    other = make_transition(0)
    other["actions"] = np.zeros(ACTION_DIM + 1, np.float32)
    with pytest.raises(ValueError, match=r"'actions'.*different config"):
        ReplayBuffer.load(tmp_path / "buffer", example_transition=other)
    with pytest.raises(FileNotFoundError, match="no saved replay buffer"):
        ReplayBuffer.load(tmp_path / "nothing")


def test_insert_validation_names_the_problem_and_keeps_the_buffer_intact():
    buffer = ReplayBuffer(make_transition(0), capacity=5, seed=0)
    bad_shape = make_transition(1)
    bad_shape["observations"]["state"] = np.zeros(STATE_DIM + 1, np.float32)
    with pytest.raises(ValueError, match=r"observations/state.*shape \(3,\).*\(2,\)"):
        buffer.insert(bad_shape)

    float_pixels = make_transition(1)
    float_pixels["observations"]["pixels"] = np.zeros(PIXELS, np.float32)
    with pytest.raises(TypeError, match=r"observations/pixels.*float32.*uint8"):
        buffer.insert(float_pixels)

    missing = make_transition(1)
    del missing["masks"]
    missing["extra"] = np.float32(0)
    with pytest.raises(KeyError, match=r"missing \['masks'\], unexpected \['extra'\]"):
        buffer.insert(missing)

    batched = make_transition(1)
    batched["actions"] = np.zeros((2, ACTION_DIM), np.float32)
    with pytest.raises(ValueError, match="unbatched"):
        buffer.insert(batched)
    assert len(buffer) == 0 and buffer.insert_index == 0

    # float64 rewards and Python scalars are accepted and cast to the stored float32.
    ok = make_transition(1)
    ok["rewards"] = np.float64(-1.0)
    ok["masks"] = 1
    buffer.insert(ok)
    assert len(buffer) == 1


def test_sampling_errors_are_clear():
    buffer = ReplayBuffer(make_transition(0), capacity=5, seed=0)
    with pytest.raises(ValueError, match="empty replay buffer"):
        buffer.sample(2)
    fill(buffer, [3])
    # With replacement: a batch larger than the buffer is allowed and holds only stored data.
    big = buffer.sample(4, num_batches=2)
    assert big["rewards"].shape == (2, 4)
    assert set(np.unique(big["rewards"])) <= set(np.unique(buffer.get(np.arange(3))["rewards"]))
    with pytest.raises(ValueError, match="num_batches"):
        buffer.sample(2, num_batches=0)


def test_constructor_errors():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(make_transition(0), capacity=0, seed=0)
    with pytest.raises(TypeError, match="nested dict"):
        ReplayBuffer({}, capacity=3, seed=0)
    with pytest.raises(TypeError, match="prompt"):
        ReplayBuffer({"prompt": np.array("pick up the cup")}, capacity=3, seed=0)


def _leaves(tree: dict) -> list[np.ndarray]:
    out = []
    for key in sorted(tree):
        value = tree[key]
        out.extend(_leaves(value) if isinstance(value, dict) else [value])
    return out


def test_a_buffer_written_before_the_latents_rename_loads_with_latents(tmp_path):
    """tests/data/replay_buffer_v1 was written by the format-1 code (the agent's output stored
    as "actions"), with the inserts and sampling below. It loads with "latents" and continues
    exactly like a buffer that stored "latents" from the start."""
    old = ReplayBuffer.load(Path(__file__).parent / "data" / "replay_buffer_v1")

    def latent_transition(i: int) -> dict:
        transition = make_transition(i)
        transition["latents"] = transition.pop("actions")
        return transition

    buffer = ReplayBuffer(latent_transition(0), capacity=7, seed=3)
    i = 0
    for length in (4, 3, 5):
        for _ in range(length):
            buffer.insert(latent_transition(i))
            i += 1
        buffer.end_trajectory()
    buffer.insert(latent_transition(100))
    buffer.sample(3, num_batches=2)

    assert "actions" not in old.example_transition()
    assert old.trajectory_bounds == buffer.trajectory_bounds and len(old) == len(buffer)
    everything = np.arange(len(buffer))
    np.testing.assert_array_equal(old.get(everything)["latents"], buffer.get(everything)["latents"])
    for a, b in zip(
        _leaves(old.sample(4, num_batches=2)), _leaves(buffer.sample(4, num_batches=2)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # Saved again, it is today's format and reads back unchanged.
    old.save(tmp_path / "again")
    again = ReplayBuffer.load(tmp_path / "again", example_transition=latent_transition(0))
    np.testing.assert_array_equal(
        again.get(everything)["latents"], buffer.get(everything)["latents"]
    )
