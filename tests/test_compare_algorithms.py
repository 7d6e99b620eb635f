"""scripts/compare_algorithms.py: the SAC-vs-NA comparison a user runs (README, docs/dsrl_na.md),
on the demo preset with a tiny budget, and its --preset switch (real LIBERO uses libero_cpu)."""

from __future__ import annotations

import json

import pytest
from run_parts import load_script


@pytest.fixture(scope="module")
def compare():
    return load_script("scripts/compare_algorithms.py", "compare_algorithms_under_test")


def test_compare_runs_both_algorithms_on_the_preset_and_writes_its_results(
    compare, tmp_path, capsys
):
    argv = [
        "--preset", "demo", "--seeds", "0", "--max_env_steps", "400", "--eval_interval", "20",
        "--eval_episodes", "4", "--threshold", "1.01", "--timing_blocks", "1",
        "--out", str(tmp_path), "--config.loop.start_online_updates=40",
    ]  # fmt: skip
    assert compare.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["preset"] == "demo" and summary["seeds"] == [0]
    # A threshold above 1 is never reached: both medians are null, nothing is divided.
    assert summary["sac_steps_to_1.01"] is None and summary["na_steps_to_1.01"] is None
    assert summary["na_over_sac"] is None
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["algorithm"] for r in results] == ["pixel_sac", "dsrl_na"]
    for r in results:
        assert r["curve"] and r["curve"][0][0] == 0.0  # the step-0 evaluation is on the curve
        # The env-step budget ends the run (max_steps is 10**9), one collection round past it.
        assert 400 <= r["final_env_steps"] < 1500
        assert r["ms_per_grad_step"] > 0
    assert (tmp_path / "success_vs_env_steps.png").stat().st_size > 1000


def test_an_unknown_preset_is_refused_by_name_before_any_run(compare, tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        compare.main(["--preset", "libero_gpu", "--seeds", "0", "--out", str(tmp_path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'libero_gpu'" in err and "libero_cpu" in err
    assert not any(tmp_path.iterdir())  # nothing was started or written
