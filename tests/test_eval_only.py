"""Evaluation-only runs (`--eval_only`) on a real finished demo run, and every run's plot.

One short demo run is trained through the sim launcher; the evaluation of its final checkpoint
must reproduce the run's last deterministic success (and its base-policy baseline) on the same
seeds, change nothing in the run directory but add its eval folder, and honour explicit seeds.
The run's best evaluated actor (best/) must be the logged argmax and score as logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsrl.training.cli import main_sim
from dsrl.utils.logging import read_metrics

TRAIN = [
    "--env", "demo", "--max_steps", "32", "--start_online_updates", "20", "--batch_size", "16",
    "--multi_grad_step", "1", "--update_block", "16", "--eval_interval", "16",
    "--eval_episodes", "6", "--num_envs", "3", "--checkpoint_interval", "16",
    "--hidden_dims", "16", "--no_progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs")
    assert main_sim([*TRAIN, "--logdir", str(logdir)]) == 0
    (run_dir,) = [p for p in logdir.iterdir() if p.is_dir()]
    return run_dir


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in run_dir.rglob("*")
        if p.is_file()
    }


def test_every_run_writes_its_plot_at_each_evaluation(finished_run):
    png = finished_run / "success_vs_env_steps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_only_reproduces_the_runs_last_deterministic_success(finished_run, capsys):
    rows = [r for r in read_metrics(finished_run) if "evaluation_mode/success_rate" in r]
    last, first = rows[-1], rows[0]
    before = _snapshot(finished_run)
    capsys.readouterr()
    assert main_sim(["--eval_only", str(finished_run), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    (out,) = [p for p in finished_run.iterdir() if p.name.startswith("eval_")]
    assert out.name.startswith(f"eval_{last['step']}_")
    # Nothing in the run directory changed but the new folder.
    after = {k: v for k, v in _snapshot(finished_run).items() if not k.startswith(out.name)}
    assert after == before

    summary = json.loads((out / "summary.json").read_text())
    sources = summary["sources"]
    assert summary["checkpoint_step"] == last["step"] and summary["episodes"] == 6
    mode = sources["actor_mode"]["metrics"]
    assert mode["success_rate"] == last["evaluation_mode/success_rate"]
    assert mode["avg_episode_len"] == last["evaluation_mode/avg_episode_len"]
    # The critic calibration too: the same checkpoint's critic on the same episodes.
    for key in ("critic_q_start", "discounted_return", "critic_q_error"):
        assert mode[key] == pytest.approx(last[f"evaluation_mode/{key}"], abs=1e-4), key
    # The base policy with the loop's own noise generators: the run's step-0 baselines.
    for key, prefix in (("base_iid", "evaluation_base_iid"), ("base_warmup", "evaluation_base_warmup")):  # fmt: skip
        assert sources[key]["metrics"]["success_rate"] == first[f"{prefix}/success_rate"]
    assert set(sources) == {"actor_mode", "actor_sampled", "base_iid", "base_warmup"}
    table = (out / "table.txt").read_text()
    assert "DSRL, deterministic (actor mode)" in table and table.strip() in printed
    assert sorted(p.suffix for p in (out / "videos").iterdir()) == [".mp4"] * 2


def test_eval_only_with_listed_seeds_and_a_checkpoint_step(finished_run, capsys):
    argv = ["--eval_only", str(finished_run), "--checkpoint_step", "16",
            "--eval_seeds", "4,5,6,7", "--num_envs", "2", "--no_progress"]  # fmt: skip
    assert main_sim(argv) == 0
    (out,) = [p for p in finished_run.iterdir() if p.name.startswith("eval_16_")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [4, 5, 6, 7] and summary["num_envs"] == 2
    assert [e["seed"] for e in summary["sources"]["actor_mode"]["episodes"]] == [4, 5, 6, 7]

    with pytest.raises(SystemExit) as exit_info:
        main_sim(["--eval_only", str(finished_run), "--checkpoint_step", "7"])
    assert exit_info.value.code == 2
    assert "No checkpoint for step 7" in capsys.readouterr().err


def test_base_policy_alone_without_a_run(tmp_path):
    argv = ["--eval_only", "--base_policy_only", "--env", "demo", "--eval_episodes", "4",
            "--num_envs", "4", "--logdir", str(tmp_path), "--no_progress"]  # fmt: skip
    assert main_sim(argv) == 0
    (out,) = list(tmp_path.iterdir())
    assert out.name.startswith("dsrl_demo_eval_base_")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sources"]) == {"base_iid", "base_warmup"}
    assert summary["checkpoint_step"] is None and len(summary["seeds"]) == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval_only"], "--eval_only needs a run directory"),
        (["--checkpoint_step", "3"], "only apply to --eval_only runs"),
        (["--eval_only", "--base_policy_only", "--eval_seeds", "a,b"], "--eval_seeds 'a,b'"),
        (["--best"], "only apply to --eval_only runs"),
        (["--eval_only", "--base_policy_only", "--best"], "--best evaluates a run's best actor"),
    ],
)
def test_eval_only_bad_input_is_one_clear_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main_sim([*argv, "--env", "demo"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_read_only_checkpointer_reads_and_refuses_to_write(finished_run, tmp_path):
    from dsrl.utils.checkpoints import RunCheckpointer

    before = _snapshot(finished_run)
    checkpointer = RunCheckpointer(finished_run, read_only=True)
    assert checkpointer.all_steps() == [16, 32]
    with pytest.raises(RuntimeError, match="read-only"):
        checkpointer.save(48, {"x": 1})
    checkpointer.close()
    assert _snapshot(finished_run) == before
    with pytest.raises(FileNotFoundError, match="no checkpoints/"):
        RunCheckpointer(tmp_path, read_only=True)
    assert not (tmp_path / "checkpoints").exists()


def test_the_best_evaluated_actor_is_the_logged_argmax_and_scores_as_logged(finished_run, capsys):
    rows = [r for r in read_metrics(finished_run) if "evaluation_mode/success_rate" in r]
    assert [r["step"] for r in rows] == [0, 16, 32]
    values = [r["evaluation_mode/success_rate"] for r in rows]
    chosen = rows[values.index(max(values))]  # ties keep the earlier actor
    record = json.loads((finished_run / "best" / "best.json").read_text())
    assert record == {
        "metric": "success_rate",
        "value": max(values),
        "step": chosen["step"],
        "env_steps": chosen["env_steps"],
        "episodes": 6,
    }
    # Each evaluation logs the best so far.
    for i, row in enumerate(rows):
        assert row["evaluation_mode/best_success_rate"] == max(values[: i + 1])
    steps = [p.name for p in (finished_run / "best" / "checkpoints").iterdir()]
    assert steps == [str(chosen["step"])]  # one agent kept, no replay buffer

    capsys.readouterr()
    assert main_sim(["--eval_only", str(finished_run), "--best", "--no_progress"]) == 0
    assert "the best evaluated actor, step" in capsys.readouterr().out
    (out,) = [p for p in finished_run.iterdir() if p.name.startswith("eval_best_")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] is True and summary["checkpoint_step"] == chosen["step"]
    mode = summary["sources"]["actor_mode"]["metrics"]
    assert mode["success_rate"] == max(values)
    assert mode["avg_episode_len"] == chosen["evaluation_mode/avg_episode_len"]


def test_eval_only_best_of_a_run_that_kept_none_names_the_fix(finished_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / finished_run.name
    shutil.copytree(finished_run, copy, ignore=shutil.ignore_patterns("best"))
    with pytest.raises(SystemExit) as exit_info:
        main_sim(["--eval_only", str(copy), "--best", "--no_progress"])
    assert exit_info.value.code == 2
    assert "has no best actor" in capsys.readouterr().err
