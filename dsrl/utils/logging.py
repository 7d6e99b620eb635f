"""Run logging: W&B (offline unless asked) plus a local `metrics.jsonl` with the same keys.

    run_dir/
        metrics.jsonl   one JSON object per `log` call: {"step": int, **metrics}
        videos/         <key>_<step>.mp4 written by `log_video`
        wandb/          the W&B run (offline runs sync later with `wandb sync run_dir/wandb/...`)

Nothing here needs the network: offline and disabled modes never contact a server.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

WandbMode = Literal["offline", "online", "disabled"]
METRICS_FILE = "metrics.jsonl"


def make_run_dir(logdir: str | os.PathLike, prefix: str, seed: int) -> Path:
    """Creates and returns `<logdir>/<prefix>_<YYYYmmdd_HHMMSS>_s<seed>` (suffixed `_1`, `_2`, ...
    if two runs start in the same second)."""
    if not prefix or "/" in prefix:
        raise ValueError(f"prefix must be a non-empty name without '/', got {prefix!r}.")
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    base = Path(logdir) / f"{prefix}_{stamp}_s{seed}"
    candidate, n = base, 0
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


def _to_json_value(key: str, value: Any) -> float | int | bool:
    """Python number for a scalar metric (numpy / jax 0-d arrays included)."""
    if isinstance(value, bool | int | float):
        return value
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "biuf":
        raise TypeError(
            f"Metric '{key}' must be a scalar number, got {type(value).__name__} with shape "
            f"{array.shape} and dtype {array.dtype}; log a reduction (mean/max) instead."
        )
    return array.reshape(()).item()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl`, in logging order.

    A truncated last line (the process was killed mid-write) is ignored."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"No {METRICS_FILE} in {run_dir}: not a run directory of RunLogger."
        )
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break
            raise ValueError(f"{path}:{number + 1} is not valid JSON: {line[:80]!r}") from None
    return records


class RunLogger:
    """Logs scalar metrics and videos to `run_dir/metrics.jsonl` and (unless disabled) to W&B.

    Args:
      run_dir: the run's directory (created if missing).
      config: the run's configuration, stored with the W&B run and as `run_dir/config.json`.
      project: W&B project name.
      wandb_mode: "offline" (default; sync later with `wandb sync`), "online", or "disabled"
        (JSONL and mp4 files only; W&B is not imported).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any],
        project: str,
        wandb_mode: WandbMode = "offline",
    ):
        if wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(
                f"wandb_mode must be 'offline', 'online' or 'disabled', got {wandb_mode!r}."
            )
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb_mode = wandb_mode
        config = dict(config)
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        # Line-buffered append: every record reaches the file when logged, and a resumed run
        # continues the same file.
        self._metrics_file = open(self.run_dir / METRICS_FILE, "a", buffering=1)
        self._wandb_run = None
        if wandb_mode != "disabled":
            import wandb  # Imported lazily: disabled runs (tests, CI) never start W&B.

            self._wandb_run = wandb.init(
                project=project,
                config=config,
                dir=str(self.run_dir),
                name=self.run_dir.name,
                mode=wandb_mode,
                # Keep stdout/stderr untouched (tqdm, pytest capture).
                settings=wandb.Settings(console="off", silent=True),
            )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Logs scalar metrics at `step` (the same keys go to W&B and metrics.jsonl)."""
        if "step" in metrics:
            raise KeyError("'step' is reserved for the step argument; rename the metric.")
        values = {str(k): _to_json_value(str(k), v) for k, v in metrics.items()}
        record = {"step": int(step), **values}
        # NaN/inf are written as JSON's NaN/Infinity extensions, which json.loads reads back.
        self._metrics_file.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=int(step))

    def log_video(self, key: str, frames: np.ndarray, step: int, fps: int = 20) -> Path:
        """Writes uint8 frames (T, H, W, 3) to `run_dir/videos/<key>_<step>.mp4` and logs it to
        W&B under `key`. Returns the mp4 path."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"Video '{key}' must be uint8 frames of shape (T, H, W, 3), got {frames.dtype} "
                f"{frames.shape}. Convert with (np.clip(x, 0, 1) * 255).astype(np.uint8)."
            )
        video_dir = self.run_dir / "videos"
        video_dir.mkdir(exist_ok=True)
        path = video_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}_{int(step)}.mp4"
        # H.264 in yuv420p (what browsers and W&B play) needs even sizes: pad odd ones by one
        # edge row/column rather than resizing (small agent images stay their size).
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        write_mp4(path, frames, fps)
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({key: wandb.Video(str(path), format="mp4")}, step=int(step))
        return path

    def close(self) -> None:
        if not self._metrics_file.closed:
            self._metrics_file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encodes uint8 (T, H, W, 3) frames (even H, W) as H.264 / yuv420p with imageio-ffmpeg's
    ffmpeg binary, the frames piped to its stdin.

    The process is started with posix_spawn, not fork: subprocess uses posix_spawn when given an
    absolute executable path, close_fds=False and no cwd / preexec_fn / new session. A fork of
    the JAX process (what imageio's writer does) runs JAX's at-fork hook, which warns that "os.fork()
    ... will likely lead to a deadlock" at every video; posix_spawn runs no fork hooks. Our own
    descriptors are non-inheritable (Python's default), so close_fds=False leaks none of them."""
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),  # an absolute path
        "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(int(fps)), "-i", "-",
        "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-r", str(int(fps)), str(path),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        close_fds=False,
    )
    _, err = proc.communicate(np.ascontiguousarray(frames).tobytes())
    if proc.returncode != 0:
        raise RuntimeError(
            f"ffmpeg could not write {path} ({t} frames {w}x{h}): exit {proc.returncode}: "
            f"{err.decode(errors='replace').strip()[-500:]}"
        )


class Timer:
    """Accumulates wall-clock seconds per category (env, base_policy, update, ...).

    with timer("env"):
        obs = env.step(action)
    logger.log(timer.metrics(), step)   # {"time/env_fraction": ..., "time/env_seconds": ...}
    """

    DEFAULT_CATEGORIES = ("env", "base_policy", "update", "other")

    def __init__(self, categories: tuple[str, ...] = DEFAULT_CATEGORIES):
        self._seconds: dict[str, float] = collections.OrderedDict((c, 0.0) for c in categories)

    @contextlib.contextmanager
    def __call__(self, category: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(category, time.perf_counter() - start)

    def section(self, category: str) -> contextlib.AbstractContextManager[None]:
        """Same as calling the timer (the `Timer` protocol of dsrl.training.rollout)."""
        return self(category)

    def add(self, category: str, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds} for {category!r}.")
        self._seconds[category] = self._seconds.get(category, 0.0) + seconds

    @property
    def seconds(self) -> dict[str, float]:
        return dict(self._seconds)

    @property
    def total(self) -> float:
        return sum(self._seconds.values())

    def fractions(self) -> dict[str, float]:
        """Share of the total time per category (all 0.0 before anything was timed)."""
        total = self.total
        return {k: (v / total if total > 0 else 0.0) for k, v in self._seconds.items()}

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        out = {f"{prefix}{k}_seconds": v for k, v in self._seconds.items()}
        out |= {f"{prefix}{k}_fraction": v for k, v in self.fractions().items()}
        return out

    def reset(self) -> None:
        for key in self._seconds:
            self._seconds[key] = 0.0
