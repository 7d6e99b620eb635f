"""LeRobot v2 layout: the writer's files read back (exactly for PNG-in-parquet, within codec
tolerance for mp4), and every damaged file gets a DatasetError naming it."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from dsrl.data import lerobot as lr

HORIZON = 4


def _episodes(lengths=(7, 5), size=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        # Smooth images (a gradient plus an offset) so that the video codec's error stays small.
        ramp = np.linspace(0, 200, size, dtype=np.float32)
        base = ramp[None, :, None, None] + ramp[None, None, :, None] * 0.2
        shift = (np.arange(n) * 5.0)[:, None, None, None]
        image = np.broadcast_to(base + shift, (n, size, size, 3)).astype(np.uint8)
        out.append(
            lr.Episode(
                images={"image": image, "wrist_image": 255 - image},
                state=rng.normal(size=(n, 8)).astype(np.float32),
                actions=rng.normal(size=(n, 7)).astype(np.float32),
                prompt=f"task {i % 2}",
            )
        )
    return out


@pytest.fixture
def written(tmp_path):
    eps = _episodes()
    lr.write_dataset(tmp_path / "ds", eps, fps=20)
    return tmp_path / "ds", eps


def _expected_chunk(ep, t):
    steps = np.minimum(np.arange(t, t + HORIZON), len(ep.actions) - 1)
    return ep.actions[steps]


def test_round_trip_exact_and_layout(written):
    root, eps = written
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 20
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 12, 2)
    assert info["features"]["image"]["dtype"] == "image"
    assert info["features"]["state"]["shape"] == [8]
    table = pq.read_table(root / "data" / "chunk-000" / "episode_000001.parquet")
    assert table.column("index").to_pylist() == list(range(7, 12))
    assert table.column("task_index").to_pylist() == [1] * 5

    ds = lr.LeRobotDataset(root, action_horizon=HORIZON)
    assert len(ds) == 12 and set(ds.images) == {"base_0_rgb", "left_wrist_0_rgb"}
    batch = ds.take(np.array([0, 6, 7, 11]))
    for row, (e, t) in enumerate([(0, 0), (0, 6), (1, 0), (1, 4)]):
        ep = eps[e]
        np.testing.assert_array_equal(batch["state"][row], ep.state[t])
        np.testing.assert_array_equal(batch["actions"][row], _expected_chunk(ep, t))
        np.testing.assert_array_equal(batch["images"]["base_0_rgb"][row], ep.images["image"][t])
        np.testing.assert_array_equal(
            batch["images"]["left_wrist_0_rgb"][row], ep.images["wrist_image"][t]
        )
        assert batch["prompt"][row] == ep.prompt
    # The batches of NpzDataset: every example once per epoch.
    first = next(ds.batches(4, seed=1))
    assert first["actions"].shape == (4, HORIZON, 7) and len(first["prompt"]) == 4
    stats_rows = list(ds.all(batch_size=5))
    assert sum(len(r["state"]) for r in stats_rows) == 12


def test_video_round_trip_within_codec_tolerance(tmp_path):
    eps = _episodes()
    lr.write_dataset(tmp_path / "ds", eps, fps=20, video=True)
    video = tmp_path / "ds" / "videos" / "chunk-000" / "image" / "episode_000000.mp4"
    assert video.is_file()
    ds = lr.LeRobotDataset(tmp_path / "ds", action_horizon=HORIZON)
    batch = ds.take(np.arange(12))
    frames = np.concatenate([e.images["image"] for e in eps])
    err = np.abs(batch["images"]["base_0_rgb"].astype(int) - frames.astype(int))
    assert err.mean() < 3.0, err.mean()
    np.testing.assert_array_equal(batch["state"], np.concatenate([e.state for e in eps]))


def test_missing_info(written):
    root, _ = written
    (root / "meta" / "info.json").unlink()
    with pytest.raises(lr.DatasetError, match=r"meta/info\.json is missing"):
        lr.LeRobotDataset(root, HORIZON)


def test_truncated_parquet_names_file(written):
    root, _ = written
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(lr.DatasetError, match=r"episode_000001\.parquet: not a readable parquet"):
        lr.LeRobotDataset(root, HORIZON)


def _rewrite(path, table):
    pq.write_table(table, path)


def test_parquet_rows_disagree_with_meta(written):
    root, _ = written
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    _rewrite(path, pq.read_table(path).slice(0, 6))
    with pytest.raises(lr.DatasetError, match=r"episode_000000\.parquet: 6 rows.*7 frames"):
        lr.LeRobotDataset(root, HORIZON)


def test_parquet_missing_column(written):
    root, _ = written
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    _rewrite(path, pq.read_table(path).drop_columns(["actions"]))
    with pytest.raises(lr.DatasetError, match=r"episode_000000\.parquet lacks columns \['actions'"):
        lr.LeRobotDataset(root, HORIZON)


def test_parquet_shape_disagrees_with_info(written):
    root, _ = written
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["state"]["shape"] = [9]
    info_path.write_text(json.dumps(info))
    with pytest.raises(lr.DatasetError, match=r"episode_000000\.parquet: column 'state'.*\[9\]"):
        lr.LeRobotDataset(root, HORIZON)


def test_info_totals_disagree(written):
    root, _ = written
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["total_frames"] = 13
    info_path.write_text(json.dumps(info))
    with pytest.raises(lr.DatasetError, match=r"info\.json: total_episodes/total_frames"):
        lr.LeRobotDataset(root, HORIZON)


def test_video_damage_names_file(tmp_path):
    lr.write_dataset(tmp_path / "ds", _episodes(), fps=20, video=True)
    video = tmp_path / "ds" / "videos" / "chunk-000" / "wrist_image" / "episode_000000.mp4"
    good = video.read_bytes()
    video.write_bytes(good[: len(good) // 3])
    with pytest.raises(lr.DatasetError, match=r"wrist_image/episode_000000\.mp4"):
        lr.LeRobotDataset(tmp_path / "ds", HORIZON)
    # A whole video of another episode's length: the frame count is checked.
    other = tmp_path / "ds" / "videos" / "chunk-000" / "wrist_image" / "episode_000001.mp4"
    video.write_bytes(other.read_bytes())
    with pytest.raises(lr.DatasetError, match=r"episode_000000\.mp4: decodes to 5 frames.*7"):
        lr.LeRobotDataset(tmp_path / "ds", HORIZON)


def test_writer_refuses_non_empty_dir(written):
    root, _ = written
    with pytest.raises(FileExistsError, match="not empty"):
        lr.LeRobotWriter(root, fps=20)
    assert (root / "meta" / "info.json").is_file()


def _load_script(name):
    import importlib.util

    path = pathlib.Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_finetune_pi0_from_lerobot_dir(tmp_path):
    """scripts/finetune_pi0.py --dataset trains 2 steps of the tiny Pi0 on a LeRobot directory
    and exports a checkpoint whose norm stats are the dataset's (8-d state, 7-d actions)."""
    from dsrl.base_policies.pi0.tokenizer import train_sentencepiece_model
    from dsrl.utils.logging import read_metrics

    ft = _load_script("finetune_pi0")
    lr.write_dataset(tmp_path / "ds", _episodes(lengths=(9, 8)), fps=20)
    tok = tmp_path / "tok.model"
    tok.write_bytes(train_sentencepiece_model(["task 0", "task 1"] * 50, vocab_size=20))
    argv = [
        *("--dataset", str(tmp_path / "ds"), "--variant", "tiny", "--tokenizer", str(tok)),
        *("--steps", "2", "--batch", "4", "--warmup_steps", "1", "--trainable", "lora"),
        *("--wandb_mode", "disabled", "--log_every", "1", "--out", str(tmp_path / "run")),
    ]
    assert ft.main(argv) == 0
    stats = json.loads(
        (tmp_path / "run" / "2" / "assets" / "dataset" / "norm_stats.json").read_text()
    )["norm_stats"]
    assert len(stats["state"]["mean"]) == 8 and len(stats["actions"]["mean"]) == 7
    # --robot libero (the default): the stats are those of pi0_libero's delta actions.
    data = lr.LeRobotDataset(tmp_path / "ds", action_horizon=10)
    chunks = data.actions.astype(np.float64)
    chunks[..., :6] -= data.state[:, None, :6]
    np.testing.assert_allclose(stats["actions"]["mean"], chunks.reshape(-1, 7).mean(0), atol=1e-5)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run") if "train/loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    with pytest.raises(SystemExit):  # --data and --dataset together
        ft.parse_args(["--data", "x.npz", "--dataset", str(tmp_path / "ds")])
    with pytest.raises(SystemExit):  # an unknown robot, before any work
        ft.parse_args(["--dataset", str(tmp_path / "ds"), "--robot", "franka"])


@pytest.mark.slow
def test_record_one_real_libero_episode(tmp_path):
    """scripts/record_libero_demos.py records one successful scripted demonstration of
    libero_object task 8 (both cameras at 224x224) that the reader serves. ~47 s on a shared 2-core CPU."""
    rec = _load_script("record_libero_demos")
    out = tmp_path / "demos"
    assert rec.main(["--out", str(out), "--episodes", "1"]) == 0
    ds = lr.LeRobotDataset(out, action_horizon=50)
    assert 100 < len(ds) < 150  # the demonstrator needs 116-121 steps on this task
    batch = ds.take(np.array([0, len(ds) - 1]))
    assert batch["images"]["base_0_rgb"].shape == (2, 224, 224, 3)
    assert batch["images"]["left_wrist_0_rgb"].std() > 10  # the wrist camera was rendered
    assert batch["state"].shape == (2, 8) and batch["actions"].shape == (2, 50, 7)
    assert batch["prompt"][0] == "pick up the chocolate pudding and place it in the basket"
    # The gripper closes during the demonstration and the last chunk repeats the final action.
    assert (ds.frame_actions[:, 6] > 0).any()
    np.testing.assert_array_equal(batch["actions"][1], np.repeat(ds.frame_actions[-1:], 50, 0))


def test_parquet_carries_hf_feature_types(written):
    """lerobot loads each parquet with the `datasets` types in its schema metadata."""
    root, _ = written
    schema = pq.read_schema(root / "data" / "chunk-000" / "episode_000000.parquet")
    hf = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["image"] == {"_type": "Image"}
    assert hf["state"]["_type"] == "Sequence" and hf["state"]["length"] == 8
    assert hf["frame_index"] == {"dtype": "int64", "_type": "Value"}
    assert set(hf) == set(schema.names)
