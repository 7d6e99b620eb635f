"""DSRL-NA: the losses on hand-made batches, the learner's bounds and compilation, and a short
end-to-end run on the demo task through the real loop, env, base policy and replay buffer."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.agents import ExecutionConfig
from dsrl.agents.noise_aliasing import (
    JaxBasePolicy,
    NoiseAliasingConfig,
    NoiseAliasingLearner,
    losses,
)
from dsrl.agents.noise_aliasing import learner as na_learner
from dsrl.steering import make_noise_param

HORIZON, NOISE_DIM, ROBOT_DIM, QUERY_FREQ = 4, 3, 2, 3
IMAGE, STATE_DIM, POLICY_DIM = 16, 3, 2
SPEC = {"pixels": ((IMAGE, IMAGE, 3), np.uint8), "state": ((STATE_DIM,), np.float32)}


def linear_base_policy() -> JaxBasePolicy:
    """chunk[b, h, :] = scale * noise[b, h, :ROBOT_DIM] + policy_state[b]: hand-computable."""

    def apply_fn(params, obs, noise):
        return params["scale"] * noise[..., :ROBOT_DIM] + obs["policy_state"][:, None, :]

    return JaxBasePolicy(
        apply_fn=apply_fn,
        params={"scale": jnp.asarray(2.0)},
        observation_spec={"policy_state": ((POLICY_DIM,), np.float32)},
        noise_shape=(HORIZON, NOISE_DIM),
        action_dim=ROBOT_DIM,
    )


def small_config(**overrides) -> NoiseAliasingConfig:
    values = dict(
        hidden_dims=(16, 16),
        cnn_features=(4,),
        cnn_strides=(2,),
        bottleneck_dim=8,
        color_jitter=False,
        crop_padding=0,
        aug_next=False,
        num_qs=3,
    )
    values.update(overrides)
    return NoiseAliasingConfig(**values)


def make_learner(seed=0, mode="loop", **overrides) -> NoiseAliasingLearner:
    noise_param = make_noise_param("repeat", (HORIZON, NOISE_DIM), 1.5)
    return NoiseAliasingLearner.create(
        seed,
        SPEC,
        noise_param.latent_dim,
        small_config(**overrides),
        action_magnitude=noise_param.action_magnitude,  # the steering's bound (1.5)
        execution=ExecutionConfig(mode),
        base_policy=linear_base_policy(),
        noise_param=noise_param,
        query_freq=QUERY_FREQ,
    )


def make_batch(rng: np.random.Generator, lead: tuple[int, ...]) -> dict:
    def obs():
        return {
            "pixels": rng.integers(0, 256, (*lead, IMAGE, IMAGE, 3), dtype=np.uint8),
            "state": rng.standard_normal((*lead, STATE_DIM)).astype(np.float32),
            "policy_state": rng.standard_normal((*lead, POLICY_DIM)).astype(np.float32),
        }

    return {
        "observations": obs(),
        "next_observations": obs(),
        "latents": rng.uniform(-1.5, 1.5, (*lead, NOISE_DIM)).astype(np.float32),
        "action_chunks": rng.standard_normal((*lead, QUERY_FREQ, ROBOT_DIM)).astype(np.float32),
        "rewards": rng.choice([-1.0, 0.0], lead).astype(np.float32),
        "masks": rng.choice([0.0, 1.0], lead).astype(np.float32),
        "discounts": rng.uniform(0.5, 1.0, lead).astype(np.float32),
    }


def pin_actor(learner: NoiseAliasingLearner, bias: np.ndarray) -> NoiseAliasingLearner:
    """A deterministic actor: mean = bias for every input, std = e^-20 (the clip floor)."""
    params = jax.tree.map(lambda x: x, learner.actor.params)
    head = params["network"]
    head["mean"] = {"kernel": jnp.zeros_like(head["mean"]["kernel"]), "bias": jnp.asarray(bias)}
    head["log_std"] = {
        "kernel": jnp.zeros_like(head["log_std"]["kernel"]),
        "bias": jnp.full_like(head["log_std"]["bias"], -20.0),
    }
    return learner.replace(actor=learner.actor.replace(params=params))


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("backup_entropy", [False, True])
def test_action_critic_target_matches_hand_computation(backup_entropy):
    """y = r + discount * mask * (min_i Qbar_i(s', pi_dp(s', noise(w'))) - [alpha log pi])."""
    learner = make_learner(backup_entropy=backup_entropy, critic_reduction="min")
    bias = np.array([0.3, -0.7, 1.1], np.float32)
    learner = pin_actor(learner, bias)
    batch = make_batch(np.random.default_rng(0), (5,))
    got = learner.td_targets(batch)

    am = 1.5
    w_next = am * np.tanh(bias)  # the pinned actor's only action
    noise = np.repeat(w_next[None, None, :], HORIZON, axis=1)  # "repeat" noise (1, H, D)
    ps = batch["next_observations"]["policy_state"]
    chunks = 2.0 * noise[..., :ROBOT_DIM] + ps[:, None, :]  # the linear base policy
    executed = chunks[:, :QUERY_FREQ].reshape(5, -1)
    next_obs = {
        "pixels": batch["next_observations"]["pixels"].astype(np.float32) / 255.0,
        "state": batch["next_observations"]["state"],
    }
    qs = learner.critic_def.apply(
        {"params": learner.target_action_critic_params}, next_obs, executed
    )
    soft_q = np.min(np.asarray(qs), axis=0)
    if backup_entropy:
        # log pi(w') of the tanh-Gaussian at u = mean with sigma = e^-20, and alpha = 1.
        log_det = np.log(1 - np.tanh(bias) ** 2) + math.log(am)
        log_prob = np.sum(20.0 - 0.5 * math.log(2 * math.pi) - log_det)
        soft_q = soft_q - 1.0 * log_prob
    want = batch["rewards"] + batch["discounts"] * batch["masks"] * soft_q
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # Terminal transitions (mask 0) do not bootstrap.
    terminal = batch["masks"] == 0
    np.testing.assert_allclose(got[terminal], batch["rewards"][terminal], atol=1e-6)


def test_distillation_targets_per_head_and_mean():
    action_qs = jnp.asarray([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])  # (N=3, B=2)
    per_head = losses.distillation_targets(action_qs, "per_head", 3)
    np.testing.assert_array_equal(per_head, action_qs)  # head i from head i
    mean = losses.distillation_targets(action_qs, "mean", 3)
    np.testing.assert_array_equal(mean, [[3.0, 6.0]] * 3)  # every head from the ensemble mean
    single = losses.distillation_targets(action_qs, "mean", 1)
    np.testing.assert_array_equal(single, [[3.0, 6.0]])
    with pytest.raises(ValueError, match="per_head distillation needs as many"):
        losses.distillation_targets(action_qs, "per_head", 2)
    # The targets carry no gradient into Q^A.
    grad = jax.grad(lambda q: losses.distillation_targets(q, "mean", 3).sum())(action_qs)
    np.testing.assert_array_equal(grad, np.zeros((3, 2)))


def test_executed_chunk_keeps_the_executed_steps_flattened():
    chunks = jnp.arange(2 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 2)
    out = losses.executed_chunk(chunks, 3)
    np.testing.assert_array_equal(out, np.asarray(chunks)[:, :3].reshape(2, 6))


@pytest.mark.parametrize("distill_target", ["per_head", "mean"])
def test_distillation_fits_the_online_action_critic(distill_target):
    """Q^W heads converge to the documented targets on fresh noise; Q^A is left untouched."""
    learner = make_learner(distill_target=distill_target, noise_critic_lr=3e-3)
    batch = make_batch(np.random.default_rng(1), (32,))
    obs = jax.device_put(learner.prepare_batches(jax.tree.map(lambda x: x[None], batch)))
    obs = jax.tree.map(lambda x: x[0], obs["observations"])
    params = learner.base_policy.params
    qa_before = learner.action_critic.params
    first = None
    for _ in range(300):
        learner, metrics = na_learner.DISTILL.step_jit(learner, {"observations": obs}, params)
        first = first if first is not None else float(metrics["noise_critic_loss"])
    assert float(metrics["noise_critic_loss"]) < 0.2 * first
    chex_equal = jax.tree.map(np.array_equal, qa_before, learner.action_critic.params)
    assert all(jax.tree.leaves(chex_equal))

    # Evaluate both critics on the same noise and compare head by head.
    w = jax.random.uniform(jax.random.PRNGKey(3), (32, learner.latent_dim), minval=-1, maxval=1)
    agent_obs = {"pixels": obs["pixels"].astype(jnp.float32) / 255.0, "state": obs["state"]}
    chunks = learner.chunks_from_latents(params, {"policy_state": obs["policy_state"]}, w)
    qa = np.asarray(learner.critic_def.apply({"params": qa_before}, agent_obs, chunks))
    features = learner.critic_features(qa_before, agent_obs)
    qw = np.asarray(learner.noise_qs(learner.noise_critic.params, agent_obs, features, w))
    target = qa if distill_target == "per_head" else np.broadcast_to(qa.mean(0), qa.shape)
    other = np.broadcast_to(qa.mean(0), qa.shape) if distill_target == "per_head" else qa
    err = np.abs(qw - target).mean()
    assert err < 0.5 * np.abs(qw - other).mean()


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_distillation_with_several_noises_per_state_pairs_each_state_with_its_noises(encoder):
    """distill_noises_per_state=M regresses Q^W on B states x M fresh noises: the step's loss is
    the hand-computed mean over all B * M (state, noise) pairs, each state tiled M times."""
    m, b = 4, 6
    learner = make_learner(distill_noises_per_state=m, noise_critic_encoder=encoder)
    batch = make_batch(np.random.default_rng(2), (1, b))
    obs = jax.tree.map(lambda x: x[0], learner.prepare_batches(batch)["observations"])
    _, _, k_w = jax.random.split(learner.rng, 3)  # the step's own key split
    w = jax.random.normal(k_w, (b * m, learner.latent_dim), jnp.float32)
    tiled = {k: np.repeat(v, m, axis=0) for k, v in obs.items()}
    agent_obs = {"pixels": tiled["pixels"].astype(np.float32) / 255.0, "state": tiled["state"]}
    chunks = learner.chunks_from_latents(
        learner.base_policy.params, {"policy_state": tiled["policy_state"]}, w
    )
    qa_params = learner.action_critic.params
    qa = learner.critic_def.apply({"params": qa_params}, agent_obs, chunks)
    features = learner.critic_features(qa_params, agent_obs)
    qw = learner.noise_qs(learner.noise_critic.params, agent_obs, features, w)
    assert qa.shape == qw.shape == (learner.config.num_qs, b * m)
    want = float(np.mean((np.asarray(qw) - np.asarray(qa)) ** 2))

    new, metrics = na_learner.DISTILL.step_jit(
        learner, {"observations": obs}, learner.base_policy.params
    )
    np.testing.assert_allclose(float(metrics["noise_critic_loss"]), want, rtol=1e-4)
    assert not np.array_equal(  # Q^W did take a step
        jax.tree.leaves(new.noise_critic.params)[0], jax.tree.leaves(learner.noise_critic.params)[0]
    )
    with pytest.raises(ValueError, match="distill_noises_per_state must be >= 1"):
        small_config(distill_noises_per_state=0)


@pytest.mark.parametrize("stored", [False, True])
def test_distill_taken_adds_each_states_own_transition_as_one_more_pair(stored):
    """distill_taken: besides its M fresh noises (or K stored aliases), each state's own
    (latent, executed chunk) from the buffer is a pair of the regression. The step is the same
    step as one with that pair as an extra stored alias, and without the option the taken pair
    plays no part."""
    m, b = 3, 5
    batch = make_batch(np.random.default_rng(4), (1, b))
    if stored:
        learner = make_learner(num_aliases=m, distill_taken=True)
        rng = np.random.default_rng(5)
        alias_z = rng.standard_normal((b, m, learner.latent_dim)).astype(np.float32)
        alias_chunks = rng.standard_normal((b, m, QUERY_FREQ, ROBOT_DIM)).astype(np.float32)
        batch |= {"alias_latents": alias_z[None], "alias_chunks": alias_chunks[None]}
    else:
        learner = make_learner(distill_noises_per_state=m, distill_taken=True)
        # The fresh noises the step draws (its own key split) and their chunks.
        _, _, k_w = jax.random.split(learner.rng, 3)
        alias_z = np.asarray(jax.random.normal(k_w, (b * m, learner.latent_dim)))
        obs0 = jax.tree.map(lambda x: x[0], learner.prepare_batches(batch)["observations"])
        tiled = np.repeat(obs0["policy_state"], m, axis=0)
        chunks = learner.chunks_from_latents(
            learner.base_policy.params, {"policy_state": tiled}, jnp.asarray(alias_z)
        )
        alias_z = alias_z.reshape(b, m, -1)
        alias_chunks = np.asarray(chunks).reshape(b, m, QUERY_FREQ, ROBOT_DIM)
    prepared = jax.tree.map(lambda x: x[0], learner.prepare_batches(batch))
    taken = {"latents": prepared["latents"], "action_chunks": prepared["action_chunks"]}
    inputs = {"observations": prepared["observations"], **taken}

    if stored:
        inputs |= {k: prepared[k] for k in ("alias_latents", "alias_chunks")}
        new, metrics = na_learner.DISTILL_STORED.step_jit(learner, inputs)
    else:
        new, metrics = na_learner.DISTILL.step_jit(learner, inputs, learner.base_policy.params)

    # The same step on m + 1 stored aliases, the last one the taken pair, without the option.
    plain = make_learner(num_aliases=m + 1)
    plain = plain.replace(
        noise_critic=learner.noise_critic, action_critic=learner.action_critic, rng=learner.rng
    )
    extended = {
        "observations": prepared["observations"],
        "alias_latents": np.concatenate([alias_z, np.asarray(taken["latents"])[:, None]], 1),
        "alias_chunks": np.concatenate(
            [alias_chunks, np.asarray(taken["action_chunks"])[:, None]], 1
        ),
    }
    want_new, want = na_learner.DISTILL_STORED.step_jit(plain, extended)
    for key in ("noise_critic_loss", "distill_target_q", "noise_q"):
        np.testing.assert_allclose(float(metrics[key]), float(want[key]), rtol=1e-5)
    for a, w in zip(
        jax.tree.leaves(new.noise_critic.params),
        jax.tree.leaves(want_new.noise_critic.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)

    # Without distill_taken the buffer's latents and chunks are not part of the regression.
    off = learner.replace(config=dataclasses.replace(learner.config, distill_taken=False))
    moved = {**inputs, "latents": inputs["latents"] + 1.0}
    if stored:
        _, m_a = na_learner.DISTILL_STORED.step_jit(off, inputs)
        _, m_b = na_learner.DISTILL_STORED.step_jit(off, moved)
    else:
        _, m_a = na_learner.DISTILL.step_jit(off, inputs, learner.base_policy.params)
        _, m_b = na_learner.DISTILL.step_jit(off, moved, learner.base_policy.params)
    assert float(m_a["noise_critic_loss"]) == float(m_b["noise_critic_loss"])
    assert abs(float(m_a["noise_critic_loss"]) - float(metrics["noise_critic_loss"])) > 1e-6


# ----------------------------------------------------------------------------- learner


def test_actor_actions_stay_within_action_magnitude():
    learner = pin_actor(make_learner(), np.array([50.0, -50.0, 0.0], np.float32))
    obs = make_batch(np.random.default_rng(2), (16,))["observations"]
    actions, learner2 = learner.sample_latents(obs)
    assert actions.shape == (16, 3)
    assert np.all(np.abs(actions) <= 1.5 + 1e-6)
    np.testing.assert_allclose(actions[:, 0], 1.5, atol=1e-4)  # saturated at +am, not beyond
    np.testing.assert_allclose(actions[:, 1], -1.5, atol=1e-4)
    assert not np.array_equal(learner.rng, learner2.rng)  # the key advanced
    mode = learner.mode_latents(obs)
    assert np.all(np.abs(mode) <= 1.5 + 1e-6)

    # After updates that push w the actor keeps its bound (tanh-Gaussian, unlike the official code).
    fresh = make_learner(seed=1)
    batches = make_batch(np.random.default_rng(3), (4, 8))
    fresh, metrics = fresh.update(batches)
    assert metrics["latents_abs_max"] <= 1.5 + 1e-6
    actions, _ = fresh.sample_latents(obs)
    assert np.all(np.abs(actions) <= 1.5 + 1e-6)


@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_update_compiles_once_and_changes_every_network(mode):
    learner = make_learner(
        mode=mode, noise_critic_encoder="shared" if mode == "scan" else "separate"
    )
    rng = np.random.default_rng(4)
    runners = (na_learner.CRITIC_ACTOR, na_learner.DISTILL)
    before = [r.compile_count() for r in runners]
    initial = learner
    for _ in range(3):
        learner, metrics = learner.update(make_batch(rng, (4, 8)))
    # One compilation of the critic/actor block and one of the distillation block.
    assert [r.compile_count() - b for r, b in zip(runners, before, strict=True)] == [1, 1]
    for name in ("noise_critic_loss", "critic_loss", "actor_loss", "temperature"):
        assert np.isfinite(metrics[name])
    for name in ("critic_grad_norm", "actor_grad_norm", "noise_critic_grad_norm"):
        assert metrics[name] > 0, name
    for name in ("actor", "action_critic", "noise_critic"):
        old = jax.tree.leaves(getattr(initial, name).params)
        new = jax.tree.leaves(getattr(learner, name).params)
        assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True)), name
    # K = 4 critic steps with the official 10-per-20 ratio -> 2 distillation steps.
    assert int(learner.noise_critic.step) == 3 * 2
    assert int(learner.action_critic.step) == 3 * 4


def test_bad_inputs_name_the_problem():
    learner = make_learner()
    batch = make_batch(np.random.default_rng(5), (2, 4))
    no_chunks = {k: v for k, v in batch.items() if k != "action_chunks"}
    with pytest.raises(ValueError, match="action_chunks"):
        learner.update(no_chunks)
    no_policy_obs = dict(batch)
    no_policy_obs["observations"] = {
        k: v for k, v in batch["observations"].items() if k != "policy_state"
    }
    with pytest.raises(ValueError, match="policy_state"):
        learner.update(no_policy_obs)
    with pytest.raises(ValueError, match="noise_param"):
        NoiseAliasingLearner.create(0, SPEC, 3, small_config(), base_policy=linear_base_policy())
    noise_param = make_noise_param("repeat", (HORIZON, NOISE_DIM), 1.5)
    # The in-update path needs a pure-JAX sampler; the error names the stored-alias way out.
    with pytest.raises(ValueError, match="pure-JAX sampler.*--num_aliases 16"):
        NoiseAliasingLearner.create(
            0, SPEC, 3, small_config(num_aliases=0), base_policy=object(), noise_param=noise_param
        )
    with pytest.raises(ValueError, match="no noise_shape / action_dim"):
        NoiseAliasingLearner.create(
            0, SPEC, 3, small_config(), base_policy=object(), noise_param=noise_param
        )
    with pytest.raises(ValueError, match="distill_target"):
        small_config(distill_target="median")
    with pytest.raises(ValueError, match="unknown config keys"):
        NoiseAliasingConfig.from_config_dict({"noise_critic_gradsteps": 3})


# ----------------------------------------------------------------------------- end to end


def test_short_demo_run_through_the_launcher(tmp_path):
    """`--algorithm dsrl_na` on the demo: the buffer stores the executed chunks, the noise and the
    base policy's observation; the loop runs NA updates and logs their metrics."""
    from dsrl.training.build import build_run
    from dsrl.training.config_io import load_config

    flags = {
        "algorithm": "dsrl_na", "max_steps": "64", "eval_interval": "64", "eval_episodes": "4",
        "start_online_updates": "30", "batch_size": "32", "logdir": str(tmp_path),
        "wandb_mode": "disabled", "num_envs": "4", "update_block": "16",
    }  # fmt: skip
    config = load_config(
        "demo", flags=flags, overrides=[("loop.num_video_episodes", "0"), ("loop.progress", "0")]
    )
    with build_run(config) as run:
        assert isinstance(run.agent, NoiseAliasingLearner)
        result = run.train()
    assert result.state.grad_steps >= 64
    stored = run.buffer.sample(8)
    q = config.steering.query_freq
    assert stored["action_chunks"].shape == (1, 8, q, run.steering.base_policy.action_dim)
    assert stored["noise"].shape == (1, 8, *run.steering.base_policy.noise_shape)
    assert stored["observations"]["policy_state"].shape == (1, 8, 2)
    # The stored chunk is what the base policy makes of the stored noise at the stored state.
    chunks = run.steering.base_policy.sample_actions(
        {"policy_state": stored["observations"]["policy_state"][0]}, stored["noise"][0]
    )
    np.testing.assert_allclose(chunks[:, :q], stored["action_chunks"][0], atol=1e-5)
    # ... and the stored noise is the noise parameterisation of the stored latent.
    np.testing.assert_allclose(
        run.steering.noise_param.to_noise(stored["latents"][0]), stored["noise"][0], atol=1e-6
    )
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    training = [r for r in rows if "training/noise_critic_loss" in r]
    assert training and np.isfinite(training[-1]["training/critic_loss"])
    assert any("evaluation_mode/success_rate" in r for r in rows)

    # scripts/critic_ranking.py reads the run's final checkpoint (learner and buffer, in a fresh
    # process) and scores each finished episode's first latent with the critics it saved.
    script = Path(__file__).resolve().parents[1] / "scripts" / "critic_ranking.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(run.run_dir)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranking = json.loads(proc.stdout.strip().splitlines()[-1])
    bounds = run.buffer.trajectory_bounds
    lengths = np.array([end - start for start, end in bounds])
    assert ranking["algorithm"] == "dsrl_na" and ranking["episodes"] == len(bounds)
    assert ranking["step"] == result.state.grad_steps  # the newest checkpoint's, read from it
    assert ranking["successes"] == int((lengths < lengths.max()).sum())
    first = run.buffer.get(np.array([start for start, _ in bounds]))
    q = result.agent.latent_q(first["observations"], first["latents"])
    success = lengths < lengths.max()
    if success.any() and not success.all():
        want = float((q[success][:, None] > q[~success][None, :]).mean())
        assert abs(ranking["auc_latent_critic"] - want) < 1e-6
    for key in ("auc_action_critic", "corr_latent_action_critic_on_tried"):
        assert key in ranking
    assert "corr_latent_action_critic_on_aliases" not in ranking  # the demo stores no aliases
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "not a run directory" in bad.stderr
