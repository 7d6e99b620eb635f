"""DSRL-NA with stored aliases (`num_aliases` K > 0), the way it runs on Pi0: K extra (latent,
chunk) pairs per query from the query's own base-policy call, stored with the transition, and a
distillation that needs no base-policy call inside the update.

- the distillation on stored aliases is the in-update distillation when the stored chunks are the
  ones the base policy gives (the demo's flow MLP, aliases computed by the rollout's code);
- the rollout on the real demo env stores each alias's chunk, and the executed chunk does not
  change when aliases ride along;
- `--algorithm dsrl_na` end to end on the real LIBERO env with a tiny random Pi0 (the default K
  for Pi0), then resumed from its checkpoint;
- bad values name the fix.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsrl.agents import ExecutionConfig  # noqa: E402
from dsrl.agents.noise_aliasing import NoiseAliasingConfig, NoiseAliasingLearner  # noqa: E402
from dsrl.agents.noise_aliasing import learner as na_learner  # noqa: E402
from dsrl.agents.spec import TransitionSpec  # noqa: E402
from dsrl.base_policies.flow_mlp import FlowMLPPolicy  # noqa: E402
from dsrl.steering import Steering, make_noise_param  # noqa: E402
from dsrl.training import aliases, loop  # noqa: E402
from dsrl.training.build import make_agent, make_base_policy, make_steering  # noqa: E402
from dsrl.training.config_io import load_config  # noqa: E402

IMAGE, STATE_DIM = 16, 4


def small_config(**overrides) -> NoiseAliasingConfig:
    values = dict(
        hidden_dims=(16, 16),
        cnn_features=(4,),
        cnn_strides=(2,),
        bottleneck_dim=8,
        color_jitter=False,
        crop_padding=2,  # augmentation on: both paths must draw the same crops
        aug_next=False,
        num_qs=2,
    )
    return NoiseAliasingConfig(**{**values, **overrides})


def demo_learner(policy: FlowMLPPolicy, query_freq: int, **overrides) -> NoiseAliasingLearner:
    noise_param = make_noise_param("full", policy.noise_shape, 1.5)
    spec = {"pixels": ((IMAGE, IMAGE, 3), np.uint8), "state": ((STATE_DIM,), np.float32)}
    return NoiseAliasingLearner.create(
        0,
        spec,
        noise_param.latent_dim,
        small_config(**overrides),
        action_magnitude=noise_param.action_magnitude,  # the steering's bound (1.5)
        execution=ExecutionConfig("loop"),
        base_policy=policy,
        noise_param=noise_param,
        query_freq=query_freq,
    )


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_stored_alias_distillation_equals_the_in_update_distillation(encoder):
    """K aliases computed outside the update (by the rollout's one-call helper, from the very
    latents the in-update step would draw) give the same Q^W step as K fresh noises per state
    run through the base policy inside the update."""
    policy = FlowMLPPolicy.load_demo()
    k, b, qf = 4, 6, 5
    inside = demo_learner(policy, qf, num_aliases=0, distill_noises_per_state=k,
                          noise_critic_encoder=encoder)  # fmt: skip
    stored = demo_learner(policy, qf, num_aliases=k, noise_critic_encoder=encoder)
    assert inside.base_policy is not None and stored.base_policy is None
    assert stored.policy_observation_spec() == {}  # no base-policy input is stored
    rng = np.random.default_rng(0)
    obs = {
        "pixels": rng.integers(0, 256, (b, IMAGE, IMAGE, 3), dtype=np.uint8),
        "state": rng.standard_normal((b, STATE_DIM)).astype(np.float32),
    }
    policy_state = rng.uniform(-1, 1, (b, 2)).astype(np.float32)

    # The latents the in-update step draws: its own key split, (B * K, latent_dim).
    _, _, k_z = jax.random.split(inside.rng, 3)
    z = np.asarray(jax.random.normal(k_z, (b * k, inside.latent_dim)))
    alias_latents = z.reshape(b, k, -1)
    noise_param = make_noise_param("full", policy.noise_shape, 1.5)
    alias_noise = noise_param.to_noise(z).reshape(b, k, *policy.noise_shape)
    executed_noise = np.zeros((b, *policy.noise_shape), np.float32)
    _, alias_chunks = aliases.sample_with_aliases(
        policy, {"policy_state": policy_state}, executed_noise, alias_noise
    )
    inputs = {
        "observations": obs,
        "alias_latents": alias_latents,
        "alias_chunks": alias_chunks[:, :, :qf],
    }
    new_stored, m_stored = na_learner.DISTILL_STORED.step_jit(stored, inputs)
    new_inside, m_inside = na_learner.DISTILL.step_jit(
        inside, {"observations": {**obs, "policy_state": policy_state}}, inside.base_policy.params
    )
    for key in ("noise_critic_loss", "distill_target_q", "noise_q", "noise_critic_grad_norm"):
        np.testing.assert_allclose(float(m_stored[key]), float(m_inside[key]), rtol=1e-5)
    after = jax.tree.leaves(new_stored.noise_critic.params)
    want = jax.tree.leaves(new_inside.noise_critic.params)
    for a, w in zip(after, want, strict=True):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        jax.random.key_data(new_stored.rng), jax.random.key_data(new_inside.rng)
    )
    # Other aliases give another step: the stored chunks are what the step regresses on.
    shuffled = {**inputs, "alias_chunks": inputs["alias_chunks"][::-1]}
    _, m_other = na_learner.DISTILL_STORED.step_jit(stored, shuffled)
    assert abs(float(m_other["distill_target_q"]) - float(m_stored["distill_target_q"])) > 1e-6


def test_the_rollout_stores_each_aliass_chunk_from_the_querys_own_call():
    """On the real demo env: every stored alias chunk is the base policy's chunk for the stored
    (float16) alias latent at the stored state, and the executed chunk is the one the policy
    gives for the agent's noise alone."""
    from dsrl.envs import make_env
    from dsrl.envs.vector import VectorEnv
    from dsrl.training.rollout import run_episodes

    policy = FlowMLPPolicy.load_demo()
    qf, k = 8, 3
    steering = Steering(policy, make_noise_param("repeat", policy.noise_shape, 1.0), qf)
    spec = TransitionSpec(action_chunks=True, policy_observation_keys=("policy_state",),
                          num_aliases=k)  # fmt: skip
    kwargs = {"image_size": 32, "max_episode_steps": 24}
    with VectorEnv([lambda: make_env("demo", **kwargs)] * 2, mode="inline") as vec:
        episodes = run_episodes(
            vec, steering, steering.warmup_source(np.random.default_rng(1)), [3, 4],
            discount=0.99, transition_spec=spec, alias_rng=np.random.default_rng(2),
        )  # fmt: skip
        with pytest.raises(ValueError, match="alias_rng"):
            run_episodes(vec, steering, steering.warmup_source(np.random.default_rng(1)), [3],
                         discount=0.99, transition_spec=spec)  # fmt: skip
    transitions = [t for e in episodes for t in e.transitions]
    assert len(transitions) == 6  # 3 queries per episode
    state = np.stack([t["observations"]["policy_state"] for t in transitions])
    latents = np.stack([t["alias_latents"] for t in transitions])
    chunks = np.stack([t["alias_chunks"] for t in transitions])
    assert latents.shape == (6, k, steering.latent_dim) and chunks.shape == (6, k, qf, 2)
    np.testing.assert_array_equal(latents, latents.astype(np.float16))  # stored exactly
    assert len(np.unique(latents.reshape(-1, steering.latent_dim), axis=0)) == 6 * k
    noise = steering.noise_param.to_noise(latents.reshape(6 * k, -1))
    want = policy.sample_actions({"policy_state": np.repeat(state, k, axis=0)}, noise)
    np.testing.assert_allclose(chunks.reshape(6 * k, qf, 2), want[:, :qf], atol=1e-5)
    executed = policy.sample_actions({"policy_state": state},
                                     np.stack([t["noise"] for t in transitions]))  # fmt: skip
    np.testing.assert_allclose(
        np.stack([t["action_chunks"] for t in transitions]), executed[:, :qf], atol=1e-5
    )
    # The buffer keeps the aliases as float16.
    example = loop.example_transition(
        {**vec.spec.observation_spec, "policy_state": ((2,), np.float32)}, steering, spec
    )
    assert example["alias_latents"].dtype == example["alias_chunks"].dtype == np.float16


def test_bad_alias_settings_name_the_fix(capsys):
    flags = {"algorithm": "pixel_sac", "num_aliases": "4"}
    with pytest.raises(ValueError, match="--num_aliases is an option of dsrl_na only"):
        load_config("demo", flags=flags)
    with pytest.raises(ValueError, match="num_aliases must be >= 0"):
        load_config("demo", flags={"algorithm": "dsrl_na", "num_aliases": "-2"})
    with pytest.raises(ValueError, match="leave distill_noises_per_state at 1"):
        small_config(num_aliases=4, distill_noises_per_state=2)
    # "auto" resolves to stored aliases for a policy without a pure-JAX sampler; M != 1 then
    # fails at build time, naming the key.
    pi0_like = type("Pi0Like", (), {"noise_shape": (4, 2), "action_dim": 2})()
    noise_param = make_noise_param("repeat", (4, 2), 1.5)
    spec = {"pixels": ((IMAGE, IMAGE, 3), np.uint8), "state": ((STATE_DIM,), np.float32)}
    learner = NoiseAliasingLearner.create(0, spec, 2, small_config(), base_policy=pi0_like,
                                          noise_param=noise_param)  # fmt: skip
    assert learner.num_aliases == 16 and learner.transition_spec().num_aliases == 16
    with pytest.raises(ValueError, match="leave distill_noises_per_state at 1"):
        NoiseAliasingLearner.create(0, spec, 2, small_config(distill_noises_per_state=2),
                                    base_policy=pi0_like, noise_param=noise_param)  # fmt: skip


# ----------------------------------------------------------------------------- real LIBERO

LIBERO_KWARGS = {
    "suite": "libero_spatial",
    "task_id": 0,
    "camera_size": 128,
    "num_settle_steps": 2,
    "max_episode_steps": 14,  # query_freq 8: one full chunk, then a partial chunk of 6
}


@pytest.mark.slow
def test_dsrl_na_trains_on_real_libero_with_a_tiny_random_pi0_and_resumes(tmp_path, capsys):
    pytest.importorskip("libero")
    from dsrl.training import cli
    from dsrl.utils.checkpoints import RunCheckpointer
    from dsrl.utils.logging import read_metrics

    argv = [
        "--env", "libero", "--algorithm", "dsrl_na", "--seed", "3", "--logdir", str(tmp_path),
        "--no_progress", "--wandb_mode", "disabled",
        "--pi0_checkpoint", "random", "--pi0_variant", "tiny",
        "--config.base_policy.dtype=float32", "--config.base_policy.num_steps=2",
        "--config.env_mode=inline", "--num_envs", "1", "--query_freq", "8",
        # One warm-up episode (2 transitions), then 2 gradient steps in one update block.
        "--start_online_updates", "1", "--max_steps", "2", "--multi_grad_step", "1",
        "--update_block", "2", "--batch_size", "4", "--log_interval", "1",
        "--eval_interval", "1000", "--eval_episodes", "0", "--config.num_video_episodes=0",
        "--config.replay_buffer_capacity=64", "--hidden_dims", "16", "--num_qs", "2",
        "--config.agent.cnn_features=8", "--config.agent.cnn_strides=2",
        "--config.agent.latent_dim=8", "--config.agent.color_jitter=false",
    ]  # fmt: skip
    argv += [f"--config.env_kwargs.{k}={v}" for k, v in LIBERO_KWARGS.items()]
    assert cli.main_sim(argv) == 0
    (run_dir,) = list(tmp_path.iterdir())
    rows = [r for r in read_metrics(run_dir) if "training/noise_critic_loss" in r]
    assert rows and rows[-1]["step"] == 2
    for key in ("critic_loss", "noise_critic_loss", "actor_loss", "distill_target_q"):
        assert np.isfinite(rows[-1][f"training/{key}"]), key

    config = load_config(resume=run_dir)
    policy = make_base_policy(config)
    steering = make_steering(config, policy)
    obs_spec = {"pixels": ((64, 64, 3), np.uint8), "state": ((8,), np.float32)}
    template = make_agent(config, obs_spec, steering)
    assert template.num_aliases == 16  # Pi0 has no pure-JAX sampler: stored aliases by default
    assert template.policy_observation_spec() == {}  # no Pi0 images in the buffer
    saved = RunCheckpointer(run_dir)
    agent, state, buffer = loop.restore(saved, template)
    saved.close()
    assert state.grad_steps == 2 and len(buffer) == 2
    assert int(agent.noise_critic.step) == 1 and int(agent.action_critic.step) == 2
    stored = buffer.get(np.arange(2))
    assert stored["alias_latents"].shape == (2, 16, 32)
    assert stored["alias_chunks"].shape == (2, 16, 8, 7)
    assert stored["alias_chunks"].dtype == np.float16
    assert sorted(stored["observations"]) == ["pixels", "state"]
    # The aliases are Pi0's chunks for their latents, a spread around the executed chunk.
    assert np.abs(stored["alias_chunks"]).max() > 0
    assert np.ptp(stored["alias_chunks"].astype(np.float32), axis=1).max() > 1e-3

    capsys.readouterr()
    resume = ["--resume", str(run_dir), "--no_progress", "--max_steps", "4"]
    assert cli.main_sim(resume) == 0
    assert "resumed" in capsys.readouterr().out
    rows = [r for r in read_metrics(run_dir) if "training/noise_critic_loss" in r]
    assert rows[-1]["step"] == 4
    saved = RunCheckpointer(run_dir)
    agent, state, buffer = loop.restore(saved, template)
    saved.close()
    assert state.grad_steps == 4 and int(agent.noise_critic.step) == 2
    assert len(buffer) >= 2 and buffer.get(np.arange(2))["alias_chunks"].shape == (2, 16, 8, 7)
