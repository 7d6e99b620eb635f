"""Training over several tasks of a LIBERO suite (dsrl.envs.libero_suite): the task selection and
its errors, the tasks spread over the workers, per-task evaluation metrics and table, and a run
over two real libero_spatial tasks with a tiny random Pi0: each env's own prompt reaches Pi0 in the
batched query, the agent's state carries the task one-hot, success is logged per task, and the
run resumes with its task conditioning."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("libero")

from run_parts import write_tiny_libero_pi0  # noqa: E402

from dsrl.envs import libero_suite  # noqa: E402
from dsrl.training import (
    cli,  # noqa: E402
    loop,  # noqa: E402
)
from dsrl.training.config_io import load_config  # noqa: E402
from dsrl.training.eval_only import format_table, task_names  # noqa: E402
from dsrl.training.evaluation import EvalResult, summarize  # noqa: E402
from dsrl.training.rollout import Episode  # noqa: E402
from dsrl.utils.checkpoints import RunCheckpointer  # noqa: E402
from dsrl.utils.logging import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITE = "libero_spatial"
LANGUAGES = libero_suite.task_languages(SUITE)
ENV_KWARGS = {
    "suite": SUITE,
    "tasks": "[0,1]",
    "camera_size": 128,  # rendering cost barely depends on size; small keeps the test light
    "num_settle_steps": 2,
    "max_episode_steps": 14,  # query_freq 8: a full chunk, then a partial one of 6
}
STATE_DIM = 8 + len(LANGUAGES)  # the robot state, then the one-hot over the suite's 10 tasks


def test_task_selection_and_its_errors():
    assert libero_suite.resolve_tasks(SUITE, "all") == tuple(range(10))
    assert libero_suite.resolve_tasks(SUITE, [3, 1]) == (3, 1)
    assert libero_suite.resolve_tasks(SUITE, "0,4") == (0, 4)
    assert libero_suite.resolve_tasks(SUITE, 7) == (7,)
    with pytest.raises(ValueError, match=r"\[12\] out of range: libero_spatial has 10 tasks "):
        libero_suite.resolve_tasks(SUITE, [0, 12])
    with pytest.raises(ValueError, match=r"ids 0\.\.9"):
        libero_suite.resolve_tasks(SUITE, -1)
    with pytest.raises(ValueError, match="more than once"):
        libero_suite.resolve_tasks(SUITE, [2, 2])
    for bad in ("first", [], True, [0.5]):
        with pytest.raises(ValueError, match="tasks=all, one id, or a list"):
            libero_suite.resolve_tasks(SUITE, bad)
    with pytest.raises(ValueError, match="Unknown LIBERO suite"):
        libero_suite.resolve_tasks("libero_spacial", "all")


def test_workers_get_the_tasks_round_robin_or_draw_them_per_episode():
    kwargs = {"suite": SUITE, "task_id": 57, "tasks": [3, 5], "camera_size": 128}
    assert libero_suite.worker_env_kwargs("libero", {"suite": SUITE, "task_id": 0}, 4) is None
    workers = libero_suite.worker_env_kwargs("libero", kwargs, 4)
    assert [w["tasks"] for w in workers] == [(3,), (5,), (3,), (5,)]
    assert all(not w["resample"] and w["camera_size"] == 128 for w in workers)
    assert all("task_id" not in w for w in workers)  # `tasks` replaces it
    per_episode = libero_suite.worker_env_kwargs(
        "libero", {**kwargs, "tasks": "all", "task_sampling": "per_episode"}, 3
    )
    assert all(w["resample"] and w["tasks"] == tuple(range(10)) for w in per_episode)
    with pytest.raises(ValueError, match="num_envs=1 < 2 selected tasks: pass --num_envs 2"):
        libero_suite.worker_env_kwargs("libero", kwargs, 1)
    with pytest.raises(ValueError, match="task_sampling must be one of"):
        libero_suite.worker_env_kwargs("libero", {**kwargs, "task_sampling": "random"}, 2)
    with pytest.raises(ValueError, match="the 'aloha' env has none"):
        libero_suite.worker_env_kwargs("aloha", kwargs, 2)


def test_a_bad_task_selection_stops_the_launch_before_any_work(tmp_path, capsys):
    logdir = tmp_path / "runs"
    argv = ["--env", "libero", "--logdir", str(logdir), f"--config.env.kwargs.suite={SUITE}",
            "--config.env.kwargs.tasks=[0,10]", "--num_envs", "2"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main_sim(argv)
    assert exit_info.value.code == 2
    assert "task id(s) [10] out of range: libero_spatial has 10 tasks (ids 0..9)" in (
        capsys.readouterr().err
    )
    assert not logdir.exists()  # nothing was created, no Pi0 was loaded


def _episode(task_id: int, success: bool) -> Episode:
    return Episode([], float(success), float(success), success, 10, 2, task_id=task_id)


def test_evaluation_reports_success_per_task_and_their_average():
    episodes = [_episode(0, True), _episode(0, False), _episode(4, True), _episode(4, True)]
    metrics = summarize(episodes, max_reward=1.0)
    assert metrics["task_0/success_rate"] == 0.5 and metrics["task_4/success_rate"] == 1.0
    assert metrics["task_0/episodes"] == metrics["task_4/episodes"] == 2
    assert metrics["success_rate"] == 0.75  # the mean over tasks: each ran 2 episodes
    single = summarize([Episode([], 0.0, 0.0, False, 10, 2)], max_reward=1.0)
    assert not [k for k in single if k.startswith("task_")]  # single-task metrics unchanged

    result = EvalResult(metrics, [], episodes)
    tasks = task_names(load_config("libero_spatial"), {"actor_mode": result})
    assert tasks == {"0": LANGUAGES[0], "4": LANGUAGES[4]}
    summary = {
        "sources": {
            "actor_mode": {"metrics": metrics},
            "base_iid": {"metrics": summarize(episodes[:2], 1.0)},
        },
        "tasks": tasks,
        "checkpoint_step": 10,
        "episodes": 4,
        "env_steps": 40,
        "seeds_from": "test",
    }
    table = format_table(summary).splitlines()
    row0 = next(line for line in table if line.endswith(LANGUAGES[0]))
    row4 = next(line for line in table if line.endswith(LANGUAGES[4]))
    assert row0.split()[:4] == ["0", "0.50", "0.50", "2"]
    assert row4.split()[:4] == ["4", "1.00", "-", "2"]  # the base policy never ran task 4


def test_pi0_reads_the_robot_state_where_the_agents_state_carries_more():
    from dsrl.base_policies.pi0.transforms import libero_inputs

    images = np.zeros((2, 8, 8, 3), np.uint8)
    robot, agent = np.ones((2, 8)), np.zeros((2, STATE_DIM))
    obs = {"agentview_image": images, "wrist_image": images, "state": agent}
    assert libero_inputs(obs)["state"].shape == (2, STATE_DIM)  # one key: it is the state
    np.testing.assert_array_equal(
        libero_inputs({**obs, "observation/state": robot})["state"], robot
    )


@pytest.mark.slow
def test_per_episode_sampling_switches_the_task_with_the_reset_seed():
    """One worker over two tasks (RLinf's way): the reset seed draws the task, and the env's
    observation follows it (prompt, one-hot, task id); without the agent's state (--add_states 0)
    the one-hot is the agent's whole state and Pi0 still reads the robot state."""
    env = libero_suite.LiberoSuiteEnv(
        SUITE, tasks=(0, 1), resample=True, add_states=False, camera_size=64, num_settle_steps=0
    )
    try:
        assert env.spec.observation_spec["state"] == ((10,), np.float32)
        seeds = {env.task_for_seed(seed): seed for seed in range(20)}
        assert sorted(seeds) == [0, 1]  # both tasks drawn
        for task in (1, 0):  # a switch, and back to the task built first
            obs = env.reset(seeds[task])
            assert (obs["task_id"], env.task_id, obs["prompt"]) == (task, task, LANGUAGES[task])
            np.testing.assert_array_equal(obs["state"], np.eye(10, dtype=np.float32)[task])
            assert obs["observation/state"].shape == (8,) and np.abs(obs["observation/state"]).sum()
            obs, *_ = env.step(np.zeros(7), render=False)
            assert obs["task_id"] == task and obs["state"].shape == (10,)
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# A run over two real tasks with a tiny random Pi0


@pytest.fixture(scope="module")
def pi0_files(tmp_path_factory):
    """(checkpoint dir, tokenizer model) of a tiny random Pi0 in openpi's on-disk layout."""
    return write_tiny_libero_pi0(tmp_path_factory.mktemp("pi0_suite"), LANGUAGES[:2])


def _argv(logdir: Path, ckpt: Path, tokenizer: Path) -> list[str]:
    argv = [
        "--env", "libero", "--seed", "3", "--logdir", str(logdir), "--no_progress",
        "--wandb_mode", "disabled",
        "--pi0_checkpoint", str(ckpt), "--pi0_variant", "tiny",
        f"--config.base_policy.tokenizer_path={tokenizer}",
        "--config.base_policy.dtype=float32", "--config.base_policy.num_steps=2",
        "--config.env.mode=inline", "--num_envs", "2", "--query_freq", "8",
        # One warm-up episode per env (4 transitions), then 2 gradient steps per update block.
        "--start_online_updates", "1", "--max_steps", "2", "--multi_grad_step", "1",
        "--update_block", "2", "--batch_size", "4", "--log_interval", "1",
        "--eval_interval", "1000", "--eval_episodes", "2", "--config.loop.num_video_episodes=0",
        "--config.loop.eval_base_warmup=false", "--config.replay.capacity=64",
        "--hidden_dims", "16", "--num_qs", "2",
        "--config.agent.cnn_features=8", "--config.agent.cnn_strides=2",
        "--config.agent.latent_dim=8", "--config.agent.color_jitter=false",
    ]  # fmt: skip
    return argv + [f"--config.env.kwargs.{k}={v}" for k, v in ENV_KWARGS.items()]


def _spy_on_queries(run, monkeypatch) -> list[dict]:
    """Records what every batched Pi0 query of `run` receives (Pi0 itself still answers)."""
    policy, seen = run.steering.base_policy, []
    query = policy.sample_actions

    def recording(observation, noise):
        seen.append(
            {
                "prompt": list(observation["prompt"]),
                "robot_state": np.asarray(observation["observation/state"]).shape,
                "agent_state": np.asarray(observation["state"]).shape,
            }
        )
        return query(observation, noise)

    monkeypatch.setattr(policy, "sample_actions", recording)
    return seen


@pytest.mark.slow
def test_a_run_over_two_libero_tasks_logs_success_per_task_and_resumes(
    tmp_path, pi0_files, monkeypatch, capsys
):
    logdir = tmp_path / "runs"
    run, _ = cli.start(cli.sim_parser(), _argv(logdir, *pi0_files), preset="demo")
    with run:
        assert run.agent.observation_spec == (("pixels", (64, 64, 3)), ("state", (STATE_DIM,)))
        seen = _spy_on_queries(run, monkeypatch)
        result = run.train()
    assert result.state.grad_steps == 2 and result.state.num_online_trajs == 2
    out = capsys.readouterr().out
    assert f"task 1: {LANGUAGES[1]}" in out  # the start-up lines name the tasks

    # Worker 0 runs task 0, worker 1 task 1: every batched query carries both prompts, and Pi0
    # reads the 8-d robot state, not the agent's state with its one-hot.
    assert seen and all(q["prompt"] == list(LANGUAGES[:2]) for q in seen)
    assert all(q["robot_state"] == (2, 8) and q["agent_state"] == (2, STATE_DIM) for q in seen)

    run_dir = run.run_dir
    evals = [r for r in read_metrics(run_dir) if "evaluation_mode/success_rate" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for row in evals:
        for source in ("evaluation", "evaluation_mode"):
            per_task = [row[f"{source}/task_{t}/success_rate"] for t in (0, 1)]
            assert [row[f"{source}/task_{t}/episodes"] for t in (0, 1)] == [1, 1]
            assert row[f"{source}/success_rate"] == pytest.approx(np.mean(per_task))
    assert "evaluation_base_iid/task_1/success_rate" in evals[0]

    # The replay buffer: each worker's transitions carry its task's one-hot after the state.
    config = load_config(resume=run_dir)
    assert list(config.env.kwargs["tasks"]) == [0, 1]
    saved = RunCheckpointer(run_dir)
    _, state, buffer = loop.restore(saved, run.agent)
    saved.close()
    assert state.grad_steps == 2 and len(buffer) == 4  # 2 envs x ceil(14 / 8) queries
    for task, (start, end) in enumerate(buffer.trajectory_bounds):
        batch = buffer.get(np.arange(start, end))
        for key in ("observations", "next_observations"):
            one_hot = batch[key]["state"][:, 8:]
            np.testing.assert_array_equal(one_hot, np.tile(np.eye(10)[task], (end - start, 1)))

    # Resume: the same task conditioning, the run goes on from its checkpoint (the 2 gradient
    # steps still owed to the collected data; no evaluation, to keep the test short).
    resumed, _ = cli.start(
        cli.sim_parser(),
        ["--resume", str(run_dir), "--max_steps", "4", "--eval_episodes", "0", "--no_progress"],
        preset="demo",
    )
    with resumed:
        assert resumed.agent.observation_spec == run.agent.observation_spec
        assert resumed.state.grad_steps == 2 and len(resumed.buffer) == 4
        assert resumed.vec_env.spec.observation_spec["state"] == ((STATE_DIM,), np.float32)
        final = resumed.train()
    assert final.state.grad_steps == 4 and final.state.num_online_trajs == 2


def test_the_libero_spatial_script_parses_to_rlinfs_settings():
    """scripts/run_libero_spatial.sh's flag line (the command docs/training.md gives) builds the
    config it promises: all 10 tasks drawn per episode over 16 workers, RLinf's values."""
    import shlex

    script = (ROOT / "scripts" / "run_libero_spatial.sh").read_text()
    flags = script.split("launch_train_sim.py")[1].split('"$@"')[0].replace("\\\n", " ")
    argv = [a for a in shlex.split(flags) if "LOGDIR" not in a and a != "--logdir"]
    config, _ = cli.parse_sim(argv)
    assert config.env.kwargs["suite"] == SUITE and config.env.kwargs["tasks"] == "all"
    assert config.env.kwargs["task_sampling"] == "per_episode" and config.env.num_envs == 16
    assert config.env.kwargs["max_episode_steps"] == 240 and config.steering.query_freq == 5
    assert (config.base_policy.kind, config.base_policy.num_steps) == ("pi0", 4)
    assert config.loop.batch_size == 512 and config.learner_config().train_actor_steps == 10
    assert config.loop.eval_episodes == 50 and config.loop.use_step_penalty
    workers = libero_suite.worker_env_kwargs("libero", config.env.kwargs, config.env.num_envs)
    assert all(w["tasks"] == tuple(range(10)) and w["resample"] for w in workers)
