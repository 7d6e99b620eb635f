"""Loop and learner values checked before any work, each failure one line naming the flag and
the fix.

The config sections check their own types and ranges; what is checked here needs more than one
value or the machine: learning rates that would diverge at once, seeds numpy and JAX reject,
and memory. The replay buffer, a sampled batch and the env workers are estimated against the
memory the machine has available, so `--batch_size 1e12` or `--num_envs 10000` stops here, in a
second, instead of after the env workers started (or with a 233 TiB allocation error).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Memory a worker process costs at least: the RSS of a spawned demo-env worker, measured at
# 42 MB (the Python interpreter, numpy and the env); simulators cost more. An inline env costs
# about 0.1-0.2 MB (measured 0.09 MB for the demo env), its observations included.
WORKER_PROCESS_BYTES = 40 * 2**20
INLINE_ENV_BYTES = 200 * 2**10
# A sampled batch lives several times over: the host gather, its device copy and the
# augmented/encoded copies inside the update.
BATCH_COPIES = 4
# Above this many env processes per CPU core, a run only waits on the scheduler.
WORKERS_PER_CORE_NOTE = 4
MAX_SEED = 2**32 - 1  # numpy's SeedSequence and jax.random.key both take [0, 2**32)


class InvalidValueError(ValueError):
    """A config value that would fail or diverge later; the message names the flag and the fix."""


def available_memory_bytes() -> int | None:
    """Memory this process may still use: /proc/meminfo's MemAvailable, capped by a cgroup v2
    limit; None when neither can be read (not Linux)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            left = int(limit) - used
            available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def _gb(n: float) -> str:
    """A byte count in the largest binary unit that keeps it >= 1 (e.g. '3.6 TiB')."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = 2 ** (10 * ("KMGT".index(unit[0]) + 1))
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def parse_layer_widths(flag: str, values: Sequence[str]) -> tuple[int, ...]:
    """`--hidden_dims 256 256` (or `256,256`) as positive ints; an empty or bad value is one line
    naming the flag."""
    parts = [p for v in values for p in str(v).replace(",", " ").split()]
    example = f"e.g. --{flag} 256 256"
    if not parts:
        raise InvalidValueError(f"--{flag} is empty: give one layer width per layer, {example}")
    try:
        widths = tuple(int(float(p)) for p in parts)
    except ValueError:
        raise InvalidValueError(
            f"--{flag} {' '.join(map(str, values))!r}: layer widths must be integers, {example}"
        ) from None
    if any(w < 1 for w in widths) or any(float(p) != int(float(p)) for p in parts):
        raise InvalidValueError(
            f"--{flag} {' '.join(parts)}: every layer width must be a positive integer, {example}"
        )
    return widths


def check_values(config: Any) -> None:
    """Loop and learner values that pass their section's own checks but fail or diverge later
    (config: a dsrl.training.run.RunConfig)."""
    seed = config.loop.seed
    if not 0 <= seed <= MAX_SEED:
        raise InvalidValueError(
            f"--seed {seed}: a seed must be an integer in [0, {MAX_SEED}] (numpy and JAX reject "
            "others); pass e.g. --seed 0"
        )
    learner = config.learner_config()
    for field in dataclasses.fields(learner):
        if not field.name.endswith("_lr"):
            continue
        lr = float(getattr(learner, field.name))
        if not (math.isfinite(lr) and 0 < lr <= 1):
            raise InvalidValueError(
                f"--{field.name} {lr:g}: a learning rate must be in (0, 1] (typically 1e-4 to "
                f"1e-3; larger ones turn the networks to NaN within a few updates); pass e.g. "
                f"--{field.name} 3e-4"
            )
    hidden = getattr(learner, "hidden_dims", (1,))
    if len(hidden) == 0:
        raise InvalidValueError("--hidden_dims is empty: give the layer widths, e.g. 256 256")


def transition_bytes(example_transition: Mapping[str, Any]) -> int:
    """Bytes one stored transition takes (every leaf of the example, nested dicts included)."""
    total = 0
    for value in example_transition.values():
        if isinstance(value, Mapping):
            total += transition_bytes(value)
        else:
            total += np.asarray(value).nbytes
    return total


def check_memory(
    config: Any,
    example_transition: Mapping[str, Any] | None = None,
    available: int | None = None,
) -> list[str]:
    """Raises InvalidValueError when the env workers, the replay buffer or one sampled batch
    would not fit the available memory; returns note lines for values that fit but are
    unusual. Without `example_transition` (before the env spec is known) a transition is
    counted as 4 bytes: only values that cannot fit whatever the env are refused."""
    available = available_memory_bytes() if available is None else available
    notes = []
    num_envs, mode = config.env.num_envs, config.env.mode
    per_env = INLINE_ENV_BYTES if mode == "inline" else WORKER_PROCESS_BYTES
    env_bytes = num_envs * per_env if mode != "ray" or not config.env.ray_address else 0
    cores = os.cpu_count() or 1
    if available is not None and env_bytes > available:
        raise InvalidValueError(
            f"--num_envs {num_envs}: {num_envs} {mode} envs need at least {_gb(env_bytes)}, "
            f"this machine has {_gb(available)} available; lower --num_envs"
        )
    if mode != "inline" and env_bytes and num_envs > WORKERS_PER_CORE_NOTE * cores:
        notes.append(
            f"--num_envs {num_envs}: {num_envs} env processes on {cores} CPU cores (at least "
            f"{_gb(env_bytes)}); they take turns, so more than a few per core only adds memory"
        )
    elif mode == "inline" and num_envs > 1024:
        notes.append(
            f"--num_envs {num_envs}: {num_envs} inline envs step one after the other in this "
            f"process (about {_gb(env_bytes)})"
        )
    per_transition = 4 if example_transition is None else transition_bytes(example_transition)
    budget = available
    if budget is not None:
        budget -= env_bytes
        batch = config.loop.batch_size * per_transition * BATCH_COPIES
        if batch > budget:
            raise InvalidValueError(
                f"--batch_size {config.loop.batch_size}: one sampled batch needs "
                f"{'at least' if example_transition is None else 'about'} {_gb(batch)} "
                f"({_gb(per_transition)} per transition), {_gb(budget)} is available; lower "
                "--batch_size (the reference uses 256)"
            )
        replay = config.replay_capacity * per_transition
        if replay > budget - batch:
            raise InvalidValueError(
                f"--config.replay.capacity={config.replay_capacity}: the replay buffer needs "
                f"{_gb(replay)} ({_gb(per_transition)} per transition), {_gb(budget - batch)} "
                "is available after the env workers and a batch; lower --config.replay.capacity "
                "(or --max_steps, which sets it when it is 0)"
            )
    return notes


def check_saved_config(tree: Mapping[str, Any], path: Any, build: Any) -> None:
    """A resumed run's config.json on its own (`build`: RunConfig.from_tree), so that a wrong
    value in the file is reported with the file's name, not as if a flag had set it."""
    try:
        build(tree)
    except ValueError as err:
        raise InvalidValueError(
            f"{path}: {err}. Fix that value in the file (or restore it from a copy); the run's "
            "checkpoints are untouched"
        ) from None


def check_resume_algorithm(saved: Mapping[str, Any], flags: Mapping[str, Any], run_dir: Any):
    """`--resume RUN --algorithm X` where RUN trained another algorithm: its checkpoints hold the
    other learner, so every step would fail to restore (and look damaged)."""
    wanted = (flags or {}).get("algorithm")
    trained = saved.get("agent", {}).get("algorithm")
    if wanted is not None and trained is not None and wanted != trained:
        raise InvalidValueError(
            f"--algorithm {wanted}: {run_dir} was trained with --algorithm {trained}, and its "
            f"checkpoints hold that learner; drop --algorithm to resume it, or start a new run "
            f"(without --resume) to train {wanted}"
        )
