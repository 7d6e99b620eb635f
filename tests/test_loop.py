"""The DSRL loop on the real demo task, the shipped flow policy, the real learner, buffer,
orbax checkpoints and run logger: transition semantics, counters, resume, learning."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from fault_loop_parts import small_learner

from dsrl.agents.spec import TransitionSpec
from dsrl.base_policies.flow_mlp import FlowMLPPolicy
from dsrl.data.replay_buffer import ReplayBuffer
from dsrl.envs.demo import DemoEnv
from dsrl.envs.vector import VectorEnv
from dsrl.steering import Steering, make_noise_param
from dsrl.training import cli, loop
from dsrl.training.build import make_agent, make_steering
from dsrl.training.config_io import load_config
from dsrl.training.evaluation import discounted_return
from dsrl.training.returns import n_step_transitions
from dsrl.training.rollout import agent_observation, run_episodes, stack_observations
from dsrl.utils.checkpoints import RunCheckpointer
from dsrl.utils.logging import RunLogger, read_metrics

ROOT = Path(__file__).resolve().parents[1]
QUERY_FREQ = 8
AM = 1.5


class CountingPolicy:
    """Wraps a base policy and records the batch size of every call."""

    def __init__(self, policy):
        self.policy = policy
        self.noise_shape = policy.noise_shape
        self.action_dim = policy.action_dim
        self.calls: list[int] = []

    def sample_actions(self, observation, noise):
        self.calls.append(noise.shape[0])
        return self.policy.sample_actions(observation, noise)


@pytest.fixture(scope="module")
def base_policy():
    return FlowMLPPolicy.load_demo()


def _vec(num_envs: int, image_size: int = 16) -> VectorEnv:
    return VectorEnv([functools.partial(DemoEnv, image_size=image_size)] * num_envs, mode="inline")


def _steering(policy) -> Steering:
    return Steering(policy, make_noise_param("repeat", policy.noise_shape, AM), QUERY_FREQ)


def _loop_config(**overrides) -> loop.LoopConfig:
    values = dict(
        seed=3,
        max_steps=24,
        batch_size=8,
        multi_grad_step=1,
        update_block=4,
        start_online_updates=20,
        discount=0.99,
        eval_interval=8,
        eval_episodes=2,
        num_video_episodes=1,
        log_interval=4,
        checkpoint_interval=8,
        progress=False,
    )
    values.update(overrides)
    return loop.LoopConfig(**values)


def test_steered_rollout_stores_one_transition_per_query(base_policy):
    policy = CountingPolicy(base_policy)
    steering = _steering(policy)
    gamma = 0.9
    with _vec(4) as vec:
        rng = np.random.default_rng(0)
        episodes = run_episodes(
            vec, steering, steering.warmup_source(rng), list(range(4)), discount=gamma
        )
    # One batched base-policy call per query covers every env (finished envs padded).
    assert set(policy.calls) == {4}
    assert len(policy.calls) == max(e.num_queries for e in episodes)
    max_steps = DemoEnv().spec.max_episode_steps
    for e in episodes:
        ts = e.transitions
        assert len(ts) == e.num_queries == -(-e.length // QUERY_FREQ)
        rewards = np.array([t["rewards"] for t in ts])
        masks = np.array([t["masks"] for t in ts])
        np.testing.assert_array_equal(rewards[:-1], -1.0)
        np.testing.assert_array_equal(masks[:-1], 1.0)
        if e.success:
            assert rewards[-1] == 0.0 and masks[-1] == 0.0
        else:  # a timeout keeps bootstrapping
            assert e.length == max_steps and rewards[-1] == -1.0 and masks[-1] == 1.0
        # Discount of the executed length: gamma**query_freq, the last chunk maybe shorter.
        last_len = e.length - QUERY_FREQ * (len(ts) - 1)
        expected = [gamma**QUERY_FREQ] * (len(ts) - 1) + [gamma**last_len]
        np.testing.assert_allclose([t["discounts"] for t in ts], expected, rtol=1e-6)
        for a, b in zip(ts[:-1], ts[1:], strict=True):
            np.testing.assert_array_equal(
                a["next_observations"]["pixels"], b["observations"]["pixels"]
            )
            np.testing.assert_array_equal(
                a["next_observations"]["state"], b["observations"]["state"]
            )
        latents = np.stack([t["latents"] for t in ts])
        assert latents.shape == (len(ts), 2) and np.all(np.abs(latents) <= AM)
        # The eval's discounted return is the stored rewards under the stored discounts.
        weights = np.cumprod([1.0] + [t["discounts"] for t in ts[:-1]])
        assert discounted_return(e, gamma) == pytest.approx(float(rewards @ weights), rel=1e-6)
        assert discounted_return(e, 1.0) == e.agent_return == rewards.sum()


def test_rollout_with_chunks_and_episode_replay_matches_single_env(base_policy):
    """Storing DSRL-NA's chunks/noise; replaying the stored chunks in a fresh env reproduces the
    episode (the executed actions really are the first query_freq of the base-policy chunk)."""
    steering = _steering(base_policy)
    with _vec(2) as vec:
        (episode, _) = run_episodes(
            vec,
            steering,
            steering.warmup_source(np.random.default_rng(1)),
            [11, 12],
            discount=0.99,
            transition_spec=TransitionSpec(action_chunks=True),
        )
    env = DemoEnv(image_size=16)
    env.reset(seed=11)
    steps = 0
    for t in episode.transitions:
        assert t["action_chunks"].shape == (QUERY_FREQ, 2) and t["noise"].shape == (8, 2)
        np.testing.assert_allclose(t["noise"], np.repeat(t["latents"][None], 8, axis=0))
        for action in t["action_chunks"]:
            obs, _, term, trunc, info = env.step(action)
            steps += 1
            if term or trunc:
                break
    assert steps == episode.length and info["success"] == episode.success
    np.testing.assert_array_equal(
        obs["state"], episode.transitions[-1]["next_observations"]["state"]
    )


def test_query_freq_longer_than_chunk_is_rejected(base_policy):
    with pytest.raises(ValueError, match="query_freq"):
        Steering(base_policy, make_noise_param("repeat", base_policy.noise_shape, AM), 9)


def _components(tmp_path, base_policy, num_envs=2, seed=0):
    vec = _vec(num_envs)
    steering = _steering(base_policy)
    spec = vec.spec
    agent = small_learner(spec, steering, seed)
    buffer = ReplayBuffer(loop.example_transition(spec.observation_spec, steering), 10_000, seed)
    logger = RunLogger(tmp_path, {"test": True}, project="t", wandb_mode="disabled")
    return vec, steering, agent, buffer, logger, RunCheckpointer(tmp_path)


def test_loop_end_to_end_counters_logs_and_checkpoints(tmp_path, base_policy):
    vec, steering, agent, buffer, logger, ckpt = _components(tmp_path, base_policy)
    cfg = _loop_config()
    result = loop.train(
        env=vec,
        steering=steering,
        agent=agent,
        buffer=buffer,
        config=cfg,
        logger=logger,
        checkpointer=ckpt,
    )
    logger.close()
    vec.close()
    s = result.state
    assert s.grad_steps == cfg.max_steps
    assert s.num_online_samples == len(buffer) > cfg.start_online_updates
    assert s.num_online_trajs == len(buffer.trajectory_bounds) and s.num_online_trajs % 2 == 0
    assert 0 <= s.pending_grad_steps < s.num_online_samples * cfg.multi_grad_step
    records = read_metrics(tmp_path)
    keys = set().union(*records)
    for key in (
        "evaluation/success_rate",
        "evaluation/avg_return",
        "evaluation/avg_episode_len",
        "evaluation_mode/success_rate",
        "evaluation_base_iid/success_rate",
        "evaluation_base_warmup/success_rate",
        "training/critic_loss",
        "training/actor_loss",
        "num_online_samples",
        "num_online_trajs",
        "env_steps",
        "replay_buffer_size",
        "episode_return (exploration)",
        "is_success (exploration)",
        "time/env_frac",
        "time/base_policy_frac",
        "time/update_frac",
        "time/other_frac",
    ):
        assert key in keys, key
    eval_steps = [r["step"] for r in records if "evaluation_mode/success_rate" in r]
    assert eval_steps == [0, 8, 16, 24]
    base_steps = [r["step"] for r in records if "evaluation_base_iid/success_rate" in r]
    assert base_steps == [0]
    last = [r for r in records if "env_steps" in r][-1]
    assert last["env_steps"] == s.env_steps and last["replay_buffer_size"] == len(buffer)
    assert list((tmp_path / "videos").glob("*.mp4"))
    assert ckpt.all_steps() == [16, 24]
    restored = loop.restore(ckpt, agent)
    assert restored is not None
    agent2, state2, buffer2 = restored
    assert state2 == s and len(buffer2) == len(buffer)
    fractions = sum(v for k, v in result.time.items() if k.endswith("_frac"))
    assert fractions == pytest.approx(1.0, abs=1e-6)


def test_eval_sampled_off_evaluates_the_mode_only_with_its_videos(tmp_path, base_policy):
    """loop.eval_sampled=False (costly envs): no "evaluation/" episodes are run, the actor's mode
    and the base policy still are, and the videos come from the mode's episodes."""
    vec, steering, agent, buffer, logger, ckpt = _components(tmp_path, base_policy)
    cfg = _loop_config(max_steps=4, eval_interval=4, eval_sampled=False)
    result = loop.train(
        env=vec, steering=steering, agent=agent, buffer=buffer, config=cfg, logger=logger
    )
    logger.close()
    vec.close()
    keys = set().union(*read_metrics(tmp_path))
    assert not any(k.startswith("evaluation/") for k in keys)
    assert {"evaluation_mode/success_rate", "evaluation_base_iid/success_rate"} <= keys
    assert [e["step"] for e in result.evaluations] == [0, 4]
    assert list((tmp_path / "videos").glob("*.mp4"))


def test_resume_after_interruption_continues_exactly(tmp_path, base_policy):
    """Run A goes straight to 32 steps. Run B stops at 16 (checkpoint), is restored into fresh
    objects, and continues to 32: agent params, buffer and counters match A bit for bit."""
    cfg = _loop_config(max_steps=32, checkpoint_interval=-1)

    def fresh(run_dir):
        run_dir.mkdir()
        return _components(run_dir, base_policy)

    vec, steering, agent, buffer, logger, ckpt = fresh(tmp_path / "a")
    full = loop.train(
        env=vec, steering=steering, agent=agent, buffer=buffer, config=cfg, logger=logger
    )
    vec.close()

    vec, steering, agent, buffer, logger, ckpt = fresh(tmp_path / "b")
    half = dataclasses.replace(cfg, max_steps=16)
    first = loop.train(
        env=vec,
        steering=steering,
        agent=agent,
        buffer=buffer,
        config=half,
        logger=logger,
        checkpointer=ckpt,
    )
    vec.close()
    assert ckpt.latest_step() == 16 and first.state.pending_grad_steps > 0

    # A new process would rebuild everything from the config: do the same.
    vec, steering, template, _, logger, _ = _components(tmp_path / "b", base_policy, seed=0)
    agent, state, buffer = loop.restore(RunCheckpointer(tmp_path / "b"), template)
    assert state == first.state and len(buffer) == first.state.num_online_samples
    second = loop.train(
        env=vec,
        steering=steering,
        agent=agent,
        buffer=buffer,
        config=cfg,
        logger=logger,
        state=state,
    )
    vec.close()
    assert second.state == full.state
    leaves_resumed = jax.tree_util.tree_leaves(_key_data(second.agent))
    leaves_full = jax.tree_util.tree_leaves(_key_data(full.agent))
    assert len(leaves_resumed) == len(leaves_full)
    for x, y in zip(leaves_resumed, leaves_full, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    evals_full = {r["step"]: r for r in full.evaluations}
    for row in second.evaluations:
        assert (
            row["evaluation_mode/success_rate"]
            == evals_full[row["step"]]["evaluation_mode/success_rate"]
        )


def _key_data(tree):
    def unwrap(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree_util.tree_map(unwrap, tree)


def _launcher_cmd(run_logdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "examples" / "launch_train_sim.py"),
        "--env",
        "demo",
        "--logdir",
        str(run_logdir),
        "--no_progress",
        "--resize_image",
        "16",
        "--num_envs",
        "2",
        "--batch_size",
        "8",
        "--start_online_updates",
        "20",
        "--multi_grad_step",
        "1",
        "--update_block",
        "4",
        "--eval_interval",
        "8",
        "--eval_episodes",
        "2",
        "--log_interval",
        "4",
        "--hidden_dims",
        "16",
        "--config.agent.cnn_features=8",
        "--config.agent.cnn_strides=2",
        "--config.agent.latent_dim=8",
        *extra,
    ]


@pytest.mark.slow
def test_launcher_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = _launcher_cmd(tmp_path, "--checkpoint_interval", "8", "--max_steps", "100000")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        ckpts: list[Path] = []
        while time.time() < deadline and not ckpts:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            ckpts = [p for p in tmp_path.glob("*/checkpoints/*") if p.name.isdigit()]
            time.sleep(0.5)
        assert ckpts, "no checkpoint appeared"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    # What the checkpoint holds, read here with the run's own config.
    config = load_config(resume=run_dir)
    spec = DemoEnv(image_size=16).spec
    steering = make_steering(config, FlowMLPPolicy.load_demo())
    template = make_agent(config, spec.observation_spec, steering)
    saved = RunCheckpointer(run_dir)
    agent, state, buffer = loop.restore(saved, template)
    saved.close()
    step = state.grad_steps
    assert step % 8 == 0 and step >= 8 and len(buffer) == state.num_online_samples > 20
    resume = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "launch_train_sim.py"),
            "--resume",
            str(run_dir),
            "--max_steps",
            str(step + 8),
            "--no_progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    assert (
        f"resumed {run_dir} at gradient step {step}, {state.env_steps} env steps, "
        f"buffer {len(buffer)}"
    ) in resume.stdout
    records = read_metrics(run_dir)
    final = [r for r in records if "replay_buffer_size" in r][-1]
    assert final["step"] == step + 8
    assert RunCheckpointer(run_dir).latest_step() == step + 8


@pytest.mark.slow
def test_dsrl_lifts_demo_success_above_the_base_policy(tmp_path, capsys):
    """LEARNING: the demo preset, fixed seed. The steered deterministic policy must clearly beat
    the frozen base policy (~0.5) within a CI budget."""
    assert cli.main_sim(["--env", "demo", "--logdir", str(tmp_path), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "DSRL, deterministic (actor mode)" in out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    records = read_metrics(run_dir)
    base = [
        r["evaluation_base_iid/success_rate"]
        for r in records
        if "evaluation_base_iid/success_rate" in r
    ]
    steered = [
        r["evaluation_mode/success_rate"] for r in records if "evaluation_mode/success_rate" in r
    ]
    assert 0.25 <= base[0] <= 0.75
    assert steered[-1] >= 0.8, steered
    assert (run_dir / "success_vs_env_steps.png").stat().st_size > 0


def test_n_step_transitions_chain_to_the_whole_return(base_policy):
    """On real demo episodes (successes and time-outs): an n-step transition's reward plus its
    discount times the rest of the episode's return is transition t's whole discounted return
    (the eval's `discounted_return` of the same episode at t = 0), its mask and next observation
    are those n queries on (the episode's last past the end), and other fields are t's own."""
    steering = _steering(base_policy)
    gamma = 0.95
    with _vec(4) as vec:
        episodes = run_episodes(
            vec, steering, steering.warmup_source(np.random.default_rng(2)), [0, 1, 2, 3],
            discount=gamma,
        )  # fmt: skip
    assert {e.success for e in episodes} == {True, False}  # both endings are covered
    for e in episodes:
        ts = e.transitions
        whole = n_step_transitions(ts, len(ts))
        assert float(whole[0]["rewards"]) == pytest.approx(discounted_return(e, gamma), rel=1e-5)
        assert n_step_transitions(ts, 1) == ts
        for n in (2, 3, 5):
            short = n_step_transitions(ts, n)
            assert len(short) == len(ts)
            for t, tr in enumerate(short):
                last = min(t + n, len(ts)) - 1
                assert tr["masks"] == ts[last]["masks"]
                assert tr["next_observations"] is ts[last]["next_observations"]
                assert tr["observations"] is ts[t]["observations"]
                np.testing.assert_array_equal(tr["latents"], ts[t]["latents"])
                rest = float(whole[t + n]["rewards"]) if t + n < len(ts) else 0.0
                chained = float(tr["rewards"]) + float(tr["discounts"]) * rest
                assert chained == pytest.approx(float(whole[t]["rewards"]), rel=1e-5)
        assert float(whole[0]["masks"]) == (0.0 if e.success else 1.0)
    with pytest.raises(ValueError, match="n_step must be an integer >= 1"):
        n_step_transitions(episodes[0].transitions, 0)
    success = next(e for e in episodes if e.success)  # ends with a terminal transition
    with pytest.raises(ValueError, match="ONE episode in order"):
        n_step_transitions(success.transitions + episodes[0].transitions, 3)
    with pytest.raises(ValueError, match=r"n_step must be a positive integer.*--n_step"):
        _loop_config(n_step=0)


def test_loop_with_n_step_stores_summed_rewards(tmp_path, base_policy):
    """loop.n_step = 4 stores 4-query returns: rewards below -1 (four -1 penalties summed under
    the discount), which one-step transitions (-1 or 0) never hold, and still trains."""
    vec, steering, agent, buffer, logger, ckpt = _components(tmp_path, base_policy)
    cfg = _loop_config(max_steps=4, eval_interval=100, n_step=4, final_eval=False)
    result = loop.train(
        env=vec, steering=steering, agent=agent, buffer=buffer, config=cfg, logger=logger
    )
    logger.close()
    vec.close()
    assert result.state.grad_steps == 4
    rewards = buffer.get(np.arange(len(buffer)))["rewards"]
    assert rewards.min() < -3.0 and set(np.unique(rewards)) - {-1.0, 0.0}


def _latent_spread(buffer, bounds) -> tuple[float, float]:
    """(mean within-trajectory std of the stored latents, std of the trajectories' means)."""
    latents = [np.asarray(buffer.get(np.arange(a, b))["latents"]) for a, b in bounds]
    within = float(np.mean([z.std(axis=0).mean() for z in latents]))
    across = float(np.stack([z.mean(axis=0) for z in latents]).std(axis=0).mean())
    return within, across


@pytest.mark.parametrize("hold", [False, True])
def test_hold_exploration_keeps_one_draw_per_training_episode(tmp_path, base_policy, hold):
    """loop.hold_exploration: a warm-up episode holds one latent for all its queries, and an
    episode of the actor's holds one standard-normal draw (latent = am * tanh(mean + std * eps)),
    so its latents vary only as far as the actor's mean and std move with the state; draws still
    differ between episodes. Off (the reference), every query draws afresh."""
    vec, steering, agent, buffer, logger, _ = _components(tmp_path, base_policy)
    cfg = _loop_config(max_steps=48, eval_interval=1000, hold_exploration=hold)
    loop.train(env=vec, steering=steering, agent=agent, buffer=buffer, config=cfg, logger=logger)
    logger.close()
    vec.close()
    bounds = [(a, b) for a, b in buffer.trajectory_bounds if b - a >= 3]
    warm = [(a, b) for a, b in bounds if b <= cfg.start_online_updates + 1]
    acting = [(a, b) for a, b in bounds if a > cfg.start_online_updates + 1]
    assert len(warm) >= 2 and len(acting) >= 2
    warm_within, warm_across = _latent_spread(buffer, warm)
    act_within, act_across = _latent_spread(buffer, acting)
    assert warm_across > 0.2 and act_across > 0.2  # episodes explore different directions
    if hold:
        assert warm_within < 1e-6
        assert act_within < 0.25 * act_across
    else:
        assert warm_within > 0.3 and act_within > 0.3


def test_latents_from_noise_is_the_policys_own_sample(base_policy):
    """latents_from_noise(obs, eps) is the sample the actor makes from the standard-normal eps:
    eps = 0 gives its mode, and the draw sample_latents uses gives sample_latents' latents."""
    vec = _vec(2)
    steering = _steering(base_policy)
    agent = small_learner(vec.spec, steering, 0)
    obs = stack_observations([agent_observation(o) for o in vec.reset([0, 1])])
    vec.close()
    zeros = np.zeros((2, steering.latent_dim), np.float32)
    np.testing.assert_allclose(
        agent.latents_from_noise(obs, zeros), agent.mode_latents(obs), atol=1e-6
    )
    sampled, _ = agent.sample_latents(obs)
    _, key = jax.random.split(agent.rng)
    eps = np.asarray(jax.random.normal(key, (2, steering.latent_dim)))
    np.testing.assert_allclose(agent.latents_from_noise(obs, eps), sampled, atol=1e-5)
    with pytest.raises(ValueError, match="eps must be"):
        agent.latents_from_noise(obs, zeros[:1])
