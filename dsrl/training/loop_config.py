"""The loop's settings (`LoopConfig`), its resumable counters (`LoopState`) and its wall-time
accounting (`Stopwatch`)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

TIME_CATEGORIES = ("env", "base_policy", "agent", "update", "io")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Loop settings (names follow the reference's flags)."""

    seed: int = 0
    max_steps: int = 500_000  # gradient-step budget, as in the reference
    max_env_steps: int = -1  # optional second budget; -1: none
    batch_size: int = 256
    multi_grad_step: int = 20  # gradient steps per collected transition (UTD)
    update_block: int = 0  # K gradient steps per `agent.update` call; 0: = multi_grad_step
    start_online_updates: int = 500  # updates start once len(buffer) > this (transitions)
    start_online_trajs: int = 0  # ... and at least this many trajectories were collected
    first_update_grad_steps: int = 0  # extra gradient steps at the first update (real: 5000)
    discount: float = 0.999  # per env step; a transition's discount is discount**steps
    # Queries summed into each stored transition before the critic bootstraps (1: one-step TD;
    # n > 1: dsrl.training.returns). Fixed for a run: a resumed buffer keeps what it stored.
    n_step: int = 1
    # Reward per query: -1, 0 on success (True, the reference); 0, +1 on success (False).
    use_step_penalty: bool = True
    # Explore one direction per training episode: the actor's standard-normal draw eps is drawn
    # once per episode and held (latent = am * tanh(mean(s) + std(s) * eps)), and each warm-up
    # episode holds one latent. False (the reference): a fresh draw at every query.
    hold_exploration: bool = False
    eval_interval: int = 10_000
    eval_episodes: int = 10  # 0: no control evaluation (e.g. a real robot)
    eval_base_every_eval: bool = False  # also evaluate the base policy at every eval
    # The base policy under the warm-up noise family too (off where each eval episode is costly).
    eval_base_warmup: bool = True
    # The actor's sampled latents too ("evaluation/"), next to its mode ("evaluation_mode/");
    # off halves the evaluation's env steps where each episode is costly (the videos then come
    # from the mode's episodes).
    eval_sampled: bool = True
    num_video_episodes: int = 1
    video_fps: int = 50
    log_interval: int = 500
    checkpoint_interval: int = -1  # -1: only at the end (when a checkpointer is given)
    final_eval: bool = True  # evaluate once more at the end unless the last step was evaluated
    # Keep the best evaluated actor (its mode's success, or return) in <run_dir>/best/
    # (dsrl.training.best); needs a checkpointer and evaluations.
    keep_best: bool = True
    progress: bool = True

    def __post_init__(self):
        def need(ok: bool, name: str, rule: str, fix: str) -> None:
            if not ok:
                raise ValueError(
                    f"{name} must be {rule}, got {getattr(self, name)!r}: {fix} (--{name})"
                )

        for name in ("batch_size", "multi_grad_step", "eval_interval", "log_interval", "n_step"):
            need(_is_int(getattr(self, name), 1), name, "a positive integer", "pass a count >= 1")
        need(_is_int(self.max_steps, 0), "max_steps", ">= 0", "the gradient-step budget, e.g. 1e6")
        need(
            _is_int(self.max_env_steps, -1),
            "max_env_steps",
            ">= -1",
            "an env-step budget, or -1 for none",
        )
        for name in ("update_block", "start_online_updates", "start_online_trajs"):
            need(_is_int(getattr(self, name), 0), name, ">= 0", "pass a count >= 0")
        need(_is_int(self.first_update_grad_steps, 0), "first_update_grad_steps", ">= 0", "or 0")
        need(
            _is_int(self.eval_episodes, 0),
            "eval_episodes",
            ">= 0",
            "pass 0 to turn control evaluation off, or a number of episodes",
        )
        need(_is_int(self.num_video_episodes, 0), "num_video_episodes", ">= 0", "or 0: no videos")
        need(_is_int(self.video_fps, 1), "video_fps", "a positive integer", "e.g. 10")
        need(
            isinstance(self.discount, int | float) and 0.0 < self.discount <= 1.0,
            "discount",
            "in (0, 1]",
            "e.g. 0.99",
        )
        need(
            _is_int(self.checkpoint_interval, 1) or self.checkpoint_interval == -1,
            "checkpoint_interval",
            "a positive gradient-step count or -1",
            "-1 checkpoints only at the end",
        )

    @property
    def block(self) -> int:
        return self.update_block or self.multi_grad_step


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum


@dataclasses.dataclass(frozen=True)
class LoopState:
    """The loop's counters; everything the loop needs besides agent and buffer to resume."""

    grad_steps: int = 0
    env_steps: int = 0
    num_online_samples: int = 0  # transitions collected (= base-policy queries)
    num_online_trajs: int = 0
    pending_grad_steps: int = 0  # owed to collected data, not yet run
    last_eval_step: int = -1
    updates_started: int = 0

    def to_tree(self) -> dict[str, int]:
        return {k: int(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> LoopState:
        return cls(**{f.name: int(np.asarray(tree[f.name])) for f in dataclasses.fields(cls)})


class Stopwatch:
    """Wall time per category; whatever is not inside a section is loop overhead ("other")."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(TIME_CATEGORIES, 0.0)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        total = max(time.perf_counter() - self.start, 1e-9)
        out = {}
        for name, sec in self.seconds.items():
            out[f"time/{name}_s"] = sec
            out[f"time/{name}_frac"] = sec / total
        other = max(total - sum(self.seconds.values()), 0.0)
        out["time/other_s"] = other
        out["time/other_frac"] = other / total
        out["time/total_s"] = total
        return out
