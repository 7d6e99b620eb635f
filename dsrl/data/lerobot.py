"""Demonstrations in LeRobot's v2 dataset layout (codebase v2.1), written and read without the
lerobot package.

On disk (one directory per dataset):
  meta/info.json            codebase_version, fps, features {name: {dtype, shape, names}},
                            data_path / video_path templates, chunks_size, totals;
  meta/episodes.jsonl       one {"episode_index", "tasks", "length"} per episode;
  meta/tasks.jsonl          one {"task_index", "task"} per prompt;
  meta/episodes_stats.jsonl per-episode min / max / mean / std / count of the numeric features;
  data/chunk-000/episode_000000.parquet   one row per frame: the numeric features, timestamp,
                            frame_index, episode_index, index, task_index, and "image" features
                            as {bytes: PNG, path} structs;
  videos/chunk-000/<key>/episode_000000.mp4   "video" features (H.264, one frame per row).

The writer stores cameras as PNG inside the parquet by default (dtype "image"), as openpi's
LIBERO conversion does: lossless, so a round trip is exact; `video=True` writes mp4 instead
(smaller, lossy). The reader takes both. Feature names follow openpi's LIBERO conversion:
"image" (agent view), "wrist_image", "state" (8), "actions" (7); the prompt is the task string.

`LeRobotDataset` serves the batches the Pi0 fine-tuning code expects (see
`dsrl.base_policies.pi0.training.data`): each frame's action chunk is the next `action_horizon`
actions of its episode, the last one repeated past the episode's end (as LeRobot's
delta_timestamps padding gives openpi).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from dsrl.base_policies.pi0.training.data import Batch, NpzDataset

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
# Dataset feature -> Pi0 camera, as openpi's LIBERO data config maps them.
LIBERO_CAMERAS = {"image": "base_0_rgb", "wrist_image": "left_wrist_0_rgb"}
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class DatasetError(ValueError):
    """A dataset file is missing, truncated or disagrees with meta/info.json."""


@dataclasses.dataclass(frozen=True)
class Episode:
    """One demonstration: images {feature: uint8 (T, H, W, 3)}, state (T, s), actions (T, a)."""

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    actions: np.ndarray
    prompt: str


# -- writing ---------------------------------------------------------------------------------


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    return {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "count": [len(x)],
    }


def _hf_feature(feature: dict) -> dict:
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": feature["dtype"], "_type": "Value"}
    if feature["shape"] == [1]:
        return value
    return {"feature": value, "length": feature["shape"][0], "_type": "Sequence"}


def _write_json(path: pathlib.Path, obj) -> None:
    # Written whole then renamed: a crash never leaves a half-written info.json.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class LeRobotWriter:
    """Appends episodes to a new dataset directory; meta/ is consistent after every episode.

    The features (shapes) are fixed by the first episode; later ones must match."""

    def __init__(self, root, fps: int, robot_type: str = "panda", video: bool = False):
        self.root = pathlib.Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} is not empty: choose a new dataset directory.")
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self.fps, self.robot_type, self.video = int(fps), robot_type, bool(video)
        self.features: dict | None = None
        self.tasks: dict[str, int] = {}
        self.num_episodes = self.num_frames = 0

    def _features(self, ep: Episode) -> dict:
        feats = {}
        for key, frames in ep.images.items():
            feats[key] = {
                "dtype": "video" if self.video else "image",
                "shape": list(frames.shape[1:]),
                "names": ["height", "width", "channel"],
            }
            if self.video:
                feats[key]["info"] = {"video.fps": self.fps, "video.codec": "h264"}
        for key, x in (("state", ep.state), ("actions", ep.actions)):
            feats[key] = {"dtype": "float32", "shape": [x.shape[1]], "names": [key]}
        for key in INDEX_FEATURES:
            dtype = "float32" if key == "timestamp" else "int64"
            feats[key] = {"dtype": dtype, "shape": [1], "names": None}
        return feats

    def add(self, ep: Episode) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(ep.state)
        lengths = {"state": n, "actions": len(ep.actions)}
        lengths.update({k: len(v) for k, v in ep.images.items()})
        if len(set(lengths.values())) != 1 or n == 0:
            raise ValueError(f"Episode arrays disagree on (or lack) frames: {lengths}.")
        feats = self._features(ep)
        if self.features is None:
            self.features = feats
        elif feats != self.features:
            raise ValueError(f"Episode features {feats} differ from the dataset's {self.features}.")
        task = self.tasks.setdefault(ep.prompt, len(self.tasks))
        index, chunk = self.num_episodes, self.num_episodes // CHUNKS_SIZE
        cols = {}
        for key, frames in ep.images.items():
            if self.video:
                self._write_video(key, index, chunk, np.asarray(frames, np.uint8))
            else:
                struct = [{"bytes": _png(f), "path": None} for f in np.asarray(frames, np.uint8)]
                cols[key] = pa.array(
                    struct, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
                )
        for key, x in (("state", ep.state), ("actions", ep.actions)):
            x = np.asarray(x, np.float32)
            cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
        frame = np.arange(n)
        cols["timestamp"] = pa.array((frame / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(frame)
        cols["episode_index"] = pa.array(np.full(n, index))
        cols["index"] = pa.array(self.num_frames + frame)
        cols["task_index"] = pa.array(np.full(n, task))
        path = self.root / DATA_PATH.format(episode_chunk=chunk, episode_index=index)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The Hugging Face `datasets` feature types in the schema metadata, as lerobot's own files
        # carry them: the lerobot package loads the parquet with them (images as Image).
        hf = json.dumps({"info": {"features": {k: _hf_feature(self.features[k]) for k in cols}}})
        pq.write_table(pa.table(cols).replace_schema_metadata({"huggingface": hf}), path)
        meta = self.root / "meta"
        with open(meta / "episodes.jsonl", "a") as f:
            f.write(json.dumps({"episode_index": index, "tasks": [ep.prompt], "length": n}) + "\n")
        stats = {"state": _stats(ep.state), "actions": _stats(ep.actions)}
        with open(meta / "episodes_stats.jsonl", "a") as f:
            f.write(json.dumps({"episode_index": index, "stats": stats}) + "\n")
        self.num_episodes, self.num_frames = index + 1, self.num_frames + n
        self._write_meta()

    def _write_video(self, key: str, index: int, chunk: int, frames: np.ndarray) -> None:
        import imageio_ffmpeg

        path = self.root / VIDEO_PATH.format(
            episode_chunk=chunk, video_key=key, episode_index=index
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(
            str(path), (w, h), fps=self.fps, codec="libx264", quality=9, macro_block_size=1,
            output_params=["-g", "2"],
        )  # fmt: skip
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()

    def _write_meta(self) -> None:
        meta = self.root / "meta"
        tasks = "".join(
            json.dumps({"task_index": i, "task": t}) + "\n" for t, i in self.tasks.items()
        )
        (meta / "tasks.jsonl").write_text(tasks)
        cams = sum(f["dtype"] == "video" for f in self.features.values())
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": self.num_episodes,
            "total_frames": self.num_frames,
            "total_tasks": len(self.tasks),
            "total_videos": cams * self.num_episodes,
            "total_chunks": (self.num_episodes - 1) // CHUNKS_SIZE + 1,
            "chunks_size": CHUNKS_SIZE,
            "fps": self.fps,
            "splits": {"train": f"0:{self.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cams else None,
            "features": self.features,
        }
        _write_json(meta / "info.json", info)


def write_dataset(root, episodes: Sequence[Episode], fps: int, video: bool = False) -> None:
    writer = LeRobotWriter(root, fps, video=video)
    for ep in episodes:
        writer.add(ep)


# -- reading ---------------------------------------------------------------------------------


def _read_json(path: pathlib.Path):
    if not path.is_file():
        raise DatasetError(f"{path} is missing: not a LeRobot v2 dataset directory.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON (truncated?): {e}") from None


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: a LeRobot v2 dataset lists its episodes/tasks.")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} holds a line that is not JSON (truncated?): {e}") from None


def _column(table, name: str, path: pathlib.Path, shape: Sequence[int]) -> np.ndarray:
    """A numeric column as (rows, *shape), from a list, fixed-size-list or scalar column."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    x = col.to_numpy(zero_copy_only=False)
    if x.size != table.num_rows * int(np.prod(shape)):
        raise DatasetError(
            f"{path}: column {name!r} holds {x.size} values for {table.num_rows} rows, "
            f"meta/info.json says shape {list(shape)} per row."
        )
    return x.reshape(table.num_rows, *shape)


def _decode_video(path: pathlib.Path, length: int, shape: Sequence[int]) -> np.ndarray:
    import imageio_ffmpeg

    if not path.is_file():
        raise DatasetError(f"{path} is missing (a video feature of meta/info.json).")
    h, w = int(shape[0]), int(shape[1])
    try:
        reader = imageio_ffmpeg.read_frames(str(path), output_params=["-s", f"{w}x{h}"])
        meta = next(reader)
        frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    except (OSError, RuntimeError, StopIteration) as e:
        raise DatasetError(
            f"{path}: cannot decode the video (truncated or corrupt?): {e}"
        ) from None
    if tuple(meta["size"]) != (w, h):
        raise DatasetError(f"{path}: frames are {meta['size']} (w, h), info.json says {w}x{h}.")
    if len(frames) != length:
        raise DatasetError(
            f"{path}: decodes to {len(frames)} frames, the episode has {length} (truncated?)."
        )
    return np.stack(frames)


def _read_meta(root: pathlib.Path) -> tuple[dict, dict[int, str], list[dict]]:
    """info.json, {task_index: task}, episodes.jsonl rows; checked against each other."""
    info_path = root / "meta" / "info.json"
    info = _read_json(info_path)
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v2."):
        raise DatasetError(
            f"{info_path}: codebase_version {version!r}; this reader takes LeRobot v2.0/v2.1 "
            "(one parquet per episode under data/chunk-XXX/)."
        )
    absent = [
        k for k in ("features", "data_path", "total_episodes", "total_frames") if k not in info
    ]
    if absent:
        raise DatasetError(f"{info_path} lacks {absent}.")
    tasks = {t["task_index"]: t["task"] for t in _read_jsonl(root / "meta" / "tasks.jsonl")}
    episodes = _read_jsonl(root / "meta" / "episodes.jsonl")
    if not episodes or any("episode_index" not in e or "length" not in e for e in episodes):
        raise DatasetError(
            f"{root / 'meta' / 'episodes.jsonl'} lists no episodes, or one without "
            "episode_index / length."
        )
    frames = sum(int(e["length"]) for e in episodes)
    if (info["total_episodes"], info["total_frames"]) != (len(episodes), frames):
        raise DatasetError(
            f"{info_path}: total_episodes/total_frames {info['total_episodes']}/"
            f"{info['total_frames']} disagree with meta/episodes.jsonl ({len(episodes)} "
            f"episodes, {frames} frames)."
        )
    return info, tasks, episodes


def _read_episode(
    root: pathlib.Path, info: dict, ep: dict, numeric: tuple[str, str], cams: Sequence[str]
) -> dict:
    """One episode's parquet (and videos), checked against the metadata: {"state", "actions",
    "task": arrays (T, ...); camera: T frames (decoded video arrays, or (png, file, row))}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = info["features"]
    index, length = int(ep["episode_index"]), int(ep["length"])
    chunk = index // int(info.get("chunks_size", CHUNKS_SIZE))
    path = root / info["data_path"].format(episode_chunk=chunk, episode_index=index)
    if not path.is_file():
        raise DatasetError(f"{path} is missing (episode {index} of meta/episodes.jsonl).")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: not a readable parquet (truncated?): {e}") from None
    need = [*numeric, "frame_index", "episode_index", "task_index"]
    need += [k for k in cams if feats[k]["dtype"] == "image"]
    absent = [k for k in need if k not in table.column_names]
    if absent:
        raise DatasetError(f"{path} lacks columns {absent} (has {table.column_names}).")
    if table.num_rows != length:
        raise DatasetError(
            f"{path}: {table.num_rows} rows, meta/episodes.jsonl says {length} frames."
        )
    frame = _column(table, "frame_index", path, [])
    if not np.array_equal(frame, np.arange(length)) or np.any(
        _column(table, "episode_index", path, []) != index
    ):
        raise DatasetError(f"{path}: frame_index/episode_index are not episode {index}'s.")
    out = {
        "state": _column(table, numeric[0], path, feats[numeric[0]]["shape"]),
        "actions": _column(table, numeric[1], path, feats[numeric[1]]["shape"]),
        "task": _column(table, "task_index", path, []),
    }
    for key in cams:
        if feats[key]["dtype"] == "image":
            pngs = table.column(key).combine_chunks().field("bytes").to_pylist()
            out[key] = [(png, path, row) for row, png in enumerate(pngs)]
        else:
            video = root / info["video_path"].format(
                episode_chunk=chunk, video_key=key, episode_index=index
            )
            out[key] = list(_decode_video(video, length, feats[key]["shape"]))
    return out


class LeRobotDataset(NpzDataset):
    """A LeRobot v2.x dataset served as the fine-tuning batches of `NpzDataset` (same `take`,
    `batches`, `all`). Every file is checked against meta/info.json when opened; a bad one
    raises DatasetError naming it.

    Args:
      root: the dataset directory (holding meta/info.json).
      action_horizon: actions per example (the model's `action_horizon`).
      cameras: {dataset feature: Pi0 camera}; features absent from the dataset are skipped.
      state_key / actions_key: the numeric features to use.
    """

    def __init__(
        self,
        root,
        action_horizon: int,
        cameras: Mapping[str, str] = LIBERO_CAMERAS,
        state_key: str = "state",
        actions_key: str = "actions",
    ):
        self.path = root = pathlib.Path(root)
        info, tasks, episodes = _read_meta(root)
        feats = info["features"]
        missing = [k for k in (state_key, actions_key) if k not in feats]
        cams = [k for k in cameras if k in feats]
        if missing or not cams:
            raise DatasetError(
                f"{root / 'meta' / 'info.json'}: no feature {missing or list(cameras)}; it has "
                f"{sorted(feats)}. Pass state_key / actions_key / cameras naming its features."
            )
        parts = {k: [] for k in ("state", "actions", "task", "end", *cams)}
        for ep in episodes:
            read = _read_episode(root, info, ep, (state_key, actions_key), cams)
            offset = sum(len(x) for x in parts["state"])
            parts["end"].append(np.full(int(ep["length"]), offset + int(ep["length"])))
            for key in ("state", "actions", "task"):
                parts[key].append(read[key])
            for key in cams:
                parts[key].extend(read[key])  # per-frame items (arrays or PNG references)
        unknown = set(np.unique(np.concatenate(parts["task"]))) - set(tasks)
        if unknown:
            raise DatasetError(f"{root / 'meta' / 'tasks.jsonl'} lacks task_index {unknown}.")
        self.action_horizon = int(action_horizon)
        self.state = np.concatenate(parts["state"]).astype(np.float32)
        self.frame_actions = np.concatenate(parts["actions"]).astype(np.float32)
        self.prompt = np.array([tasks[t] for t in np.concatenate(parts["task"])])
        self._end = np.concatenate(parts["end"])
        self.images = {cameras[k]: parts[k] for k in cams}
        self._shapes = {cameras[k]: tuple(feats[k]["shape"]) for k in cams}
        self.fps = info.get("fps")

    @property
    def actions(self) -> np.ndarray:
        """(N, action_horizon, a): every frame's chunk (built on demand, for norm stats)."""
        return self._chunks(np.arange(len(self)))

    def all(self, batch_size: int = 1024):
        """state / action chunks of every example, in order (for norm stats)."""
        for start in range(0, len(self), batch_size):
            index = np.arange(start, min(start + batch_size, len(self)))
            yield {"state": self.state[index], "actions": self._chunks(index)}

    def _chunks(self, index: np.ndarray) -> np.ndarray:
        steps = index[:, None] + np.arange(self.action_horizon)[None]
        return self.frame_actions[np.minimum(steps, self._end[index, None] - 1)]

    def _image(self, camera: str, i: int) -> np.ndarray:
        item = self.images[camera][i]
        if isinstance(item, np.ndarray):
            return item
        from PIL import Image

        png, path, row = item
        try:
            img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
            raise DatasetError(
                f"{path}: row {row} of {camera}'s images does not decode: {e}"
            ) from None
        if img.shape != self._shapes[camera]:
            raise DatasetError(
                f"{path}: row {row} image is {img.shape}, info.json says {self._shapes[camera]}."
            )
        return img

    def take(self, index: np.ndarray) -> Batch:
        index = np.asarray(index)
        return {
            "images": {
                cam: np.stack([self._image(cam, int(i)) for i in index]) for cam in self.images
            },
            "state": self.state[index],
            "actions": self._chunks(index),
            "prompt": [str(p) for p in self.prompt[index]],
        }
