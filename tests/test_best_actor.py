"""The best evaluated actor (dsrl.training.best) on real orbax files: only a strictly better
evaluation replaces it, a resumed run keeps comparing with it, and a damaged record is moved
aside (nothing deleted) rather than trusted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsrl.training.best import BEST_FILE, BestActor, BestRecordError, read_record
from dsrl.training.loop_config import LoopState
from dsrl.utils.checkpoints import RunCheckpointer


def _state(weight: float) -> dict:
    return {"agent": {"w": np.full(3, weight, np.float32)}, "counters": LoopState().to_tree()}


def _row(success: float) -> dict[str, float]:
    return {"evaluation_mode/success_rate": success, "evaluation_mode/avg_return": -3.0}


def _restored_weight(run_dir) -> float:
    with RunCheckpointer(run_dir / "best", read_only=True) as checkpointer:
        tree, buffer = checkpointer.restore(_state(0.0), load_buffer=False)
    assert buffer is None
    return float(tree["agent"]["w"][0])


def test_only_a_strictly_better_actor_replaces_the_best_and_a_resume_keeps_it(tmp_path):
    best = BestActor(tmp_path, "success_rate")
    assert best.metrics() == {} and read_record(tmp_path) is None
    assert best.offer(0, 0, 50, _row(0.26), _state(1.0))
    assert not best.offer(1000, 4000, 50, _row(0.26), _state(2.0))  # a tie keeps the earlier
    assert best.offer(3000, 13000, 50, _row(0.72), _state(3.0))
    assert not best.offer(4000, 17000, 50, _row(0.54), _state(4.0))
    assert best.metrics() == {
        "evaluation_mode/best_success_rate": 0.72,
        "evaluation_mode/best_step": 3000.0,
    }
    assert [p.name for p in (tmp_path / "best" / "checkpoints").iterdir()] == ["3000"]
    assert _restored_weight(tmp_path) == 3.0

    resumed = BestActor(tmp_path, "success_rate")  # a resumed run reads best.json
    assert resumed.record["step"] == 3000 and resumed.record["env_steps"] == 13000
    assert not resumed.offer(5000, 21000, 50, _row(0.70), _state(5.0))
    assert _restored_weight(tmp_path) == 3.0
    with pytest.raises(BestRecordError, match="ranks actors by 'success_rate'"):
        BestActor(tmp_path, "avg_return")


@pytest.mark.parametrize("text", ["{not json", '{"metric": "success_rate"}', '{"metric": "success_rate", "value": "x", "step": 1, "env_steps": 1, "episodes": 1}'])  # fmt: skip
def test_a_damaged_record_is_moved_aside_with_its_agent(tmp_path, text, caplog):
    best = BestActor(tmp_path, "success_rate")
    assert best.offer(2000, 9000, 50, _row(0.5), _state(7.0))
    (tmp_path / "best" / BEST_FILE).write_text(text)
    with pytest.raises(BestRecordError, match=BEST_FILE):
        read_record(tmp_path)

    fresh = BestActor(tmp_path, "success_rate")
    assert fresh.record is None and "moved best aside" in caplog.text
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("best.damaged-")]
    assert (aside / BEST_FILE).read_text() == text
    assert (aside / "checkpoints" / "2000").is_dir()  # the old agent is still there
    assert fresh.offer(3000, 13000, 50, _row(0.1), _state(8.0))
    assert json.loads((tmp_path / "best" / BEST_FILE).read_text())["value"] == 0.1
