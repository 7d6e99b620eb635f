"""The metric set others report (RLinf's names), the step-penalty switch and the actor-update
delay: on real learners, real rollouts of the demo task and a short demo run's metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dsrl.agents import PixelSACLearner
from dsrl.agents.pixel_sac import learner as learner_lib
from dsrl.envs import make_env
from dsrl.envs.vector import VectorEnv
from dsrl.training.build import build_run
from dsrl.training.config_io import load_config
from dsrl.training.evaluation import summarize
from dsrl.training.rollout import run_episodes

sys.path.insert(0, str(Path(__file__).parent))
from test_pixel_sac import SPEC, A, random_batches, tiny_config  # noqa: E402


def _same(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def test_train_actor_steps_keeps_the_actor_for_n_steps_then_moves_it():
    """N = 3 with blocks of K = 2: steps 0-1 and 2 update the critic only, step 3 the actor too;
    one compilation for all blocks."""
    learner = PixelSACLearner.create(0, SPEC, A, tiny_config(train_actor_steps=3))
    rng = np.random.default_rng(0)
    before = learner_lib.UPDATE.compile_count()
    first, m1 = learner.update(random_batches(rng, 2))
    assert _same(first.actor.params, learner.actor.params) and _same(first.temp, learner.temp)
    assert not _same(first.critic.params, learner.critic.params)
    assert m1["actor_updated"] == 0.0
    assert m1["critic_grad_norm"] > 0 and m1["actor_grad_norm"] > 0  # what the step would do
    second, m2 = first.update(random_batches(rng, 2))
    assert m2["actor_updated"] == 1.0
    assert not _same(second.actor.params, learner.actor.params)
    assert int(second.actor.step) == 1 and int(second.critic.step) == 4  # one actor step so far
    assert not _same(second.temp.params, learner.temp.params)
    assert learner_lib.UPDATE.compile_count() - before == 1
    with pytest.raises(ValueError, match="train_actor_steps must be >= 0"):
        PixelSACLearner.create(0, SPEC, A, tiny_config(train_actor_steps=-1))


@pytest.mark.slow
def test_train_actor_steps_delays_the_dsrl_na_actor_too():
    import test_noise_aliasing as na

    learner = na.make_learner(train_actor_steps=3)
    rng = np.random.default_rng(1)
    first, m1 = learner.update(na.make_batch(rng, (2, 8)))
    assert _same(first.actor.params, learner.actor.params) and m1["actor_updated"] == 0.0
    assert _same(first.temp.params, learner.temp.params)
    second, m2 = first.update(na.make_batch(rng, (2, 8)))
    assert not _same(second.actor.params, learner.actor.params) and m2["actor_updated"] == 1.0
    assert (int(second.actor.step), int(second.action_critic.step)) == (1, 4)
    for key in ("critic_grad_norm", "actor_grad_norm", "noise_critic_grad_norm"):
        assert m2[key] > 0, key


def test_step_penalty_switch_changes_the_stored_rewards():
    """Same seeds and noise: with the penalty -1 per query and 0 on success; without it 0 per
    query and +1 on success. Everything else follows; env/agent_return is the agent's reward
    summed, env/return the env's (the one return convention of every avg_return)."""
    from dsrl.training.build import make_base_policy, make_steering

    config = load_config("demo")
    steering = make_steering(config, make_base_policy(config))
    episodes = {}
    with VectorEnv([lambda: make_env("demo", image_size=16)] * 4, mode="inline") as venv:
        for penalty in (True, False):
            source = steering.warmup_source(np.random.default_rng(0))
            episodes[penalty] = run_episodes(
                venv, steering, source, [1, 2, 3, 4], discount=0.99, step_penalty=penalty
            )
    assert any(e.success for e in episodes[True]) and not all(e.success for e in episodes[True])
    for on, off in zip(episodes[True], episodes[False], strict=True):
        assert (on.success, on.length, on.num_queries) == (off.success, off.length, off.num_queries)
        r_on = [t["rewards"] for t in on.transitions]
        r_off = [t["rewards"] for t in off.transitions]
        assert r_on == [-1.0] * (on.num_queries - on.success) + [0.0] * on.success
        assert r_off == [0.0] * (off.num_queries - off.success) + [1.0] * off.success
        assert on.agent_return == sum(r_on) and off.agent_return == sum(r_off)
    metrics = summarize(episodes[False], 1.0)
    assert metrics["env/return"] == metrics["env/success_once"] == metrics["success_rate"]
    assert metrics["env/agent_return"] == metrics["success_rate"]  # +1 on success, 0 otherwise
    penalised = summarize(episodes[True], 1.0)
    assert penalised["env/return"] == penalised["avg_return"] == metrics["avg_return"]
    expected = np.mean([e.num_queries - e.success for e in episodes[True]])
    assert penalised["env/agent_return"] == pytest.approx(-expected)
    assert metrics["env/episode_len"] == metrics["avg_episode_len"]


def test_a_short_demo_run_logs_the_metric_set(tmp_path):
    """The launcher's demo run (with every new option on) writes RLinf's metric names for
    exploration and evaluation, gradient norms and the buffer's utilisation to metrics.jsonl."""
    config = load_config(
        "demo",
        flags={
            "logdir": str(tmp_path), "max_steps": "8", "num_envs": "2", "resize_image": "16",
            "batch_size": "8", "start_online_updates": "20", "multi_grad_step": "1",
            "update_block": "4", "eval_episodes": "2", "log_interval": "4", "hidden_dims": ["16"],
            "use_step_penalty": "false", "train_actor_steps": "4", "blend_steps": "2",
            "max_action_delta": "0.5",
        },
        overrides=[("agent.cnn_features", "8"), ("agent.cnn_strides", "2"),
                   ("agent.bottleneck_dim", "8"), ("loop.progress", "false"),
                   ("loop.num_video_episodes", "0")],
    )  # fmt: skip
    with build_run(config, log=lambda *_: None) as run:
        assert run.vec_env.smoothing is not None
        run.train()
        rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").open()]
    keys = set().union(*rows)
    for key in (
        "env/episode_len", "env/return", "env/success_once", "training/critic_grad_norm",
        "training/actor_grad_norm", "training/actor_updated", "replay_buffer/size",
        "replay_buffer/utilization", "replay_buffer_size", "is_success (exploration)",
        "evaluation/env/success_once", "evaluation_mode/env/episode_len",
        "evaluation_mode/env/return", "evaluation_base_iid/env/success_once",
        "evaluation_mode/success_rate", "evaluation_mode/critic_q_start",
        "evaluation_mode/discounted_return",
    ):  # fmt: skip
        assert key in keys, key
    for row in (r for r in rows if "evaluation_mode/critic_q_error" in r):
        q, ret = row["evaluation_mode/critic_q_start"], row["evaluation_mode/discounted_return"]
        assert row["evaluation_mode/critic_q_error"] == pytest.approx(q - ret)
        assert 0.0 <= ret <= row["evaluation_mode/success_rate"]  # +1 at success, discounted
    last = [r for r in rows if "replay_buffer/utilization" in r][-1]
    assert last["replay_buffer/utilization"] == last["replay_buffer/size"] / 50_000
    assert last["training/actor_updated"] == 1.0
    assert all(0.0 <= r["env/return"] <= 1.0 for r in rows if "env/return" in r)  # no penalty


def _terminal_batches(batches: dict, reward: float) -> dict:
    """Every transition terminal with the same reward: the critic's target is `reward` alone."""
    batches["rewards"] = np.full_like(batches["rewards"], reward)
    batches["masks"] = np.zeros_like(batches["masks"])
    return batches


@pytest.mark.parametrize("algorithm", ["dsrl_sac", "dsrl_na"])
def test_latent_q_reads_the_critic_the_actor_maximises(algorithm):
    """`latent_q` (the eval's critic_q_start) is the trained critic of latents: for SAC its
    critic, for NA the noise critic distilled from the action critic. Trained on terminal
    transitions worth -3, both move from their initial ~0 to -3 on unseen states and latents."""
    import test_noise_aliasing as na

    rng = np.random.default_rng(0)
    if algorithm == "dsrl_sac":
        learner = PixelSACLearner.create(0, SPEC, A, tiny_config())
        batches = lambda: _terminal_batches(random_batches(rng, 25), -3.0)  # noqa: E731
        latent_dim, blocks = A, 12
    else:
        learner = na.make_learner()
        batches = lambda: _terminal_batches(na.make_batch(rng, (25, 16)), -3.0)  # noqa: E731
        latent_dim, blocks = learner.latent_dim, 40  # Q^W follows Q^A a step behind
    probe = jax.tree.map(lambda x: x[0, :8], batches()["observations"])
    latents = rng.uniform(-1, 1, (8, latent_dim)).astype(np.float32)
    before = learner.latent_q(probe, latents)
    assert before.shape == (8,) and np.all(np.abs(before) < 1.0)
    for _ in range(blocks):
        learner, _ = learner.update(batches())
    after = learner.latent_q(probe, latents)
    np.testing.assert_allclose(after, -3.0, atol=0.6)
    single = learner.latent_q(jax.tree.map(lambda x: x[0], probe), latents[0])
    assert np.ndim(single) == 0 and single == pytest.approx(after[0], abs=1e-5)
    with pytest.raises(ValueError, match="3 latents for a batch of 8"):
        learner.latent_q(probe, latents[:3])
