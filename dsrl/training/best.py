"""The best evaluated actor of a run, kept beside its checkpoints in `<run_dir>/best/`.

DSRL's curves are not monotonic: on Robomimic Can and on the small Pi0 the actor's mode rose to
0.7-0.86 success and fell again within a few thousand gradient steps (docs/diffusion.md,
docs/finetune_pi0.md), and RLinf's DSRL recipe tells its users to pick the best checkpoint for
the same reason. What a user deploys is the best actor the run produced, not the last one, so at
every evaluation the loop compares the actor's mode (its success rate, or its average return on
an env without a success, e.g. Gym locomotion) with the best so far. A strictly better one is
written to

    best/checkpoints/<step>/   the agent and the loop counters (no replay buffer), one step kept
    best/best.json             {"metric", "value", "step", "env_steps", "episodes"}

Ties keep the earlier actor. A resumed run reads best.json and goes on comparing with it.

The choice is made on the run's own evaluation seeds, so the value it was chosen at is biased
upwards; evaluate it on seeds it was not chosen on before reporting it:

    python examples/launch_train_sim.py --eval_only RUN_DIR --best --eval_seeds 1000
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from dsrl.training.evaluation import ACTOR_MODE

log = logging.getLogger(__name__)

BEST_DIR = "best"
BEST_FILE = "best.json"
_FIELDS = ("metric", "value", "step", "env_steps", "episodes")


class BestRecordError(ValueError):
    """best.json is missing a field, is not JSON, or names a metric of another kind."""


def best_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / BEST_DIR


def read_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's best.json, or None if the run has kept no best actor yet. A damaged file raises
    BestRecordError naming it."""
    path = best_dir(run_dir) / BEST_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BestRecordError(f"{path} cannot be read as JSON ({err})") from err
    missing = [k for k in _FIELDS if not isinstance(record, dict) or k not in record]
    if missing:
        raise BestRecordError(f"{path} lacks {', '.join(missing)}")
    if not isinstance(record["value"], int | float) or not math.isfinite(record["value"]):
        raise BestRecordError(f"{path} holds a non-numeric value {record['value']!r}")
    return record


class BestActor:
    """Keeps the best evaluated actor of the run in `run_dir/best/` (see the module docstring).

    `metric` is the evaluation metric compared: "success_rate", or "avg_return" for an env
    without a success."""

    def __init__(self, run_dir: str | os.PathLike, metric: str):
        self.directory = best_dir(run_dir)
        self.metric = metric
        self.record: dict[str, Any] | None = None
        try:
            self.record = read_record(run_dir)
        except BestRecordError as err:
            # Keep what is there for the user to look at; a fresh best starts beside it.
            aside = self.directory.with_name(f"{BEST_DIR}.damaged-{time.strftime('%Y%m%d_%H%M%S')}")
            os.rename(self.directory, aside)
            log.warning("%s; moved %s aside to %s and keeping a new best", err, BEST_DIR, aside)
        if self.record is not None and self.record["metric"] != metric:
            raise BestRecordError(
                f"{self.directory / BEST_FILE} ranks actors by {self.record['metric']!r}, this "
                f"run by {metric!r}: the env changed between the run and its resume"
            )

    def offer(
        self, step: int, env_steps: int, episodes: int, row: dict[str, float], state: dict
    ) -> bool:
        """Saves `state` ({"agent", "counters"}) as the new best if the actor's mode in the
        evaluation `row` beats the best so far; True if it did."""
        value = float(row[ACTOR_MODE.metric(self.metric)])
        if not math.isfinite(value):
            return False
        if self.record is not None and value <= float(self.record["value"]):
            return False
        from dsrl.utils.checkpoints import RunCheckpointer

        with RunCheckpointer(self.directory, max_to_keep=1) as checkpointer:
            checkpointer.save(step, state)
        record = {
            "metric": self.metric,
            "value": value,
            "step": int(step),
            "env_steps": int(env_steps),
            "episodes": int(episodes),
        }
        tmp = self.directory / f"{BEST_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.directory / BEST_FILE)  # a crash leaves the old record or the new
        self.record = record
        return True

    def metrics(self) -> dict[str, float]:
        """The best so far as evaluation metrics (empty before the first evaluation)."""
        if self.record is None:
            return {}
        return {
            ACTOR_MODE.metric(f"best_{self.metric}"): float(self.record["value"]),
            ACTOR_MODE.metric("best_step"): float(self.record["step"]),
        }
