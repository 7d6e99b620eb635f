"""The sim launcher end to end on the REAL LIBERO env with a tiny random Pi0 loaded from a real
openpi-layout orbax checkpoint (norm stats under the LIBERO asset id, a throwaway SentencePiece
tokenizer): one short training episode, a couple of gradient steps, evaluations, checkpoint.

The stored transitions are then replayed in a fresh LIBERO env with a freshly loaded Pi0Policy:
every executed chunk must be exactly what Pi0 returns for the stored noise on that observation,
so the executed actions really came from the steered base policy."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from run_parts import write_tiny_libero_pi0  # noqa: E402

from dsrl.base_policies.pi0 import Pi0Policy  # noqa: E402
from dsrl.base_policies.pi0.config import Pi0Config  # noqa: E402
from dsrl.envs import make_env  # noqa: E402
from dsrl.training import loop  # noqa: E402
from dsrl.training.build import make_agent, make_steering  # noqa: E402
from dsrl.training.cli import main_sim  # noqa: E402
from dsrl.training.config_io import load_config  # noqa: E402
from dsrl.utils.checkpoints import RunCheckpointer  # noqa: E402
from dsrl.utils.logging import read_metrics  # noqa: E402

CFG = Pi0Config.tiny()  # action_horizon 10, 32-d noise
SUITE, TASK = "libero_spatial", 0
PROMPT = "pick up the black bowl between the plate and the ramekin and place it on the plate"
ENV_KWARGS = {
    "suite": SUITE,
    "task_id": TASK,
    "camera_size": 128,  # rendering cost barely depends on size; small keeps the test light
    "num_settle_steps": 2,
    "max_episode_steps": 14,  # query_freq 8: one full chunk, then a partial chunk of 6
}
QUERY_FREQ = 8
NUM_STEPS = 3  # flow-matching steps of the tiny Pi0
GAMMA = 0.9
SEED = 5


@pytest.fixture(scope="module")
def pi0_files(tmp_path_factory):
    """(checkpoint dir, tokenizer model) of a tiny random Pi0 in openpi's on-disk layout."""
    root = tmp_path_factory.mktemp("pi0_libero")
    return write_tiny_libero_pi0(root, [PROMPT, "pick up the bowl", "place it on the plate"])


def _argv(logdir: Path, ckpt: Path, tokenizer: Path) -> list[str]:
    argv = [
        "--env", "libero", "--seed", str(SEED), "--logdir", str(logdir), "--no_progress",
        "--wandb_mode", "disabled",
        "--pi0_checkpoint", str(ckpt), "--pi0_variant", "tiny",
        f"--config.base_policy.tokenizer_path={tokenizer}",
        "--config.base_policy.dtype=float32", f"--config.base_policy.num_steps={NUM_STEPS}",
        "--config.env_mode=inline", "--num_envs", "1",
        "--query_freq", str(QUERY_FREQ), "--discount", str(GAMMA),
        # One warm-up episode (2 transitions), then 2 gradient steps in one update block.
        "--start_online_updates", "1", "--max_steps", "2", "--multi_grad_step", "1",
        "--update_block", "2", "--batch_size", "4", "--log_interval", "1",
        "--eval_interval", "1000", "--eval_episodes", "1", "--config.num_video_episodes=1",
        "--config.replay_buffer_capacity=64", "--config.store_action_chunks=true",
        "--hidden_dims", "16", "--num_qs", "2",
        "--config.agent.cnn_features=8", "--config.agent.cnn_strides=2",
        "--config.agent.latent_dim=8", "--config.agent.color_jitter=false",
    ]  # fmt: skip
    argv += [f"--config.env_kwargs.{k}={v}" for k, v in ENV_KWARGS.items()]
    return argv


@pytest.mark.slow
def test_launcher_steers_tiny_pi0_on_real_libero(tmp_path, pi0_files):
    ckpt, tokenizer = pi0_files
    argv = _argv(tmp_path / "runs", ckpt, tokenizer)
    assert main_sim(argv) == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())

    # -- metrics: evaluation at step 0 (actor and base policy) and at the end, training rows.
    records = read_metrics(run_dir)
    keys = set().union(*records)
    for key in (
        "evaluation/success_rate",
        "evaluation/avg_episode_len",
        "evaluation_mode/success_rate",
        "evaluation_base_iid/success_rate",
        "evaluation_base_warmup/success_rate",
        "training/critic_loss",
        "training/actor_loss",
        "replay_buffer_size",
        "env_steps",
        "time/base_policy_frac",
    ):
        assert key in keys, key
    evals = [r for r in records if "evaluation/success_rate" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for r in evals:  # a random Pi0 does not solve the task: every episode times out
        assert r["evaluation/avg_episode_len"] == ENV_KWARGS["max_episode_steps"]
    # Evaluation videos use LIBERO's full-size agentview camera, reset frame included.
    assert sorted((run_dir / "videos").glob("*.mp4")), "no evaluation video was written"
    train_rows = [r for r in records if "training/critic_loss" in r]
    assert train_rows[-1]["step"] == 2 and np.isfinite(train_rows[-1]["training/critic_loss"])

    # -- the checkpoint: counters and the replay buffer (one transition per query).
    config = load_config(resume=run_dir)
    env = make_env("libero", **ENV_KWARGS, image_size=config.env.image_size)
    policy = Pi0Policy.from_checkpoint(
        ckpt, "libero", variant="tiny", dtype="float32", tokenizer_path=tokenizer,
        num_steps=NUM_STEPS,
    )  # fmt: skip
    try:
        steering = make_steering(config, policy)
        assert steering.latent_dim == CFG.action_dim
        template = make_agent(config, env.spec.observation_spec, steering)
        saved = RunCheckpointer(run_dir)
        _, state, buffer = loop.restore(saved, template)
        saved.close()
        assert state.grad_steps == 2 and state.num_online_trajs == 1
        assert state.env_steps == ENV_KWARGS["max_episode_steps"]
        assert state.num_online_samples == len(buffer) == 2  # ceil(14 / 8) queries
        ((start, end),) = buffer.trajectory_bounds
        batch = buffer.get(np.arange(start, end))
        for obs_key in ("observations", "next_observations"):
            assert batch[obs_key]["pixels"].shape == (2, 64, 64, 3)
            assert batch[obs_key]["pixels"].dtype == np.uint8
            assert batch[obs_key]["state"].shape == (2, 8)
        np.testing.assert_array_equal(batch["rewards"], [-1.0, -1.0])
        np.testing.assert_array_equal(batch["masks"], [1.0, 1.0])  # a timeout bootstraps
        np.testing.assert_allclose(batch["discounts"], [GAMMA**8, GAMMA**6], rtol=1e-6)
        assert batch["latents"].shape == (2, CFG.action_dim)
        # "repeat" noise: the agent's 32-d latent is the noise at every chunk step.
        np.testing.assert_array_equal(
            batch["noise"], np.repeat(batch["latents"][:, None], CFG.action_horizon, axis=1)
        )

        # -- replay in a fresh env with a freshly loaded Pi0: the executed chunks are Pi0's.
        (reset_seed,) = loop.train_seeds(SEED, 0, 1)
        env.reset(seed=reset_seed)  # the first episode after construction differs by ~1e-6
        env.step(np.zeros(7), render=False)
        obs = env.reset(seed=reset_seed)
        remaining = ENV_KWARGS["max_episode_steps"]
        for i in range(2):
            np.testing.assert_allclose(obs["state"], batch["observations"]["state"][i], atol=1e-5)
            np.testing.assert_array_equal(obs["pixels"], batch["observations"]["pixels"][i])
            batched = {k: [v] if k == "prompt" else np.asarray(v)[None] for k, v in obs.items()}
            chunk = policy.sample_actions(batched, batch["noise"][i][None])[0, :QUERY_FREQ]
            np.testing.assert_allclose(chunk, batch["action_chunks"][i], atol=1e-5)
            other = policy.sample_actions(batched, -batch["noise"][i][None])[0, :QUERY_FREQ]
            assert np.abs(other - chunk).max() > 1e-3  # the noise steers the chunk
            steps = min(QUERY_FREQ, remaining)
            for t in range(steps):
                obs, *_ = env.step(batch["action_chunks"][i][t], render=t == steps - 1)
            remaining -= steps
            np.testing.assert_allclose(
                obs["state"], batch["next_observations"]["state"][i], atol=1e-5
            )
            np.testing.assert_array_equal(obs["pixels"], batch["next_observations"]["pixels"][i])
        assert remaining == 0
    finally:
        env.close()


@pytest.mark.slow
def test_libero_evaluation_video_frames_stack(pi0_files):
    from dsrl.envs.vector import VectorEnv
    from dsrl.steering import Steering, make_noise_param
    from dsrl.training.rollout import run_episodes

    ckpt, tokenizer = pi0_files
    policy = Pi0Policy.from_checkpoint(
        ckpt, "libero", variant="tiny", dtype="float32", tokenizer_path=tokenizer,
        num_steps=NUM_STEPS,
    )  # fmt: skip
    steering = Steering(policy, make_noise_param("repeat", policy.noise_shape, 1.0), 4)
    kwargs = {**ENV_KWARGS, "max_episode_steps": 4}
    with VectorEnv([lambda: make_env("libero", **kwargs)], mode="inline") as vec:
        (episode,) = run_episodes(
            vec,
            steering,
            steering.iid_source(np.random.default_rng(0)),
            [0],
            discount=GAMMA,
            store_transitions=False,
            record_frames=True,
        )
    # The reset frame plus one frame per executed step, all the same image size.
    assert episode.frames.ndim == 4 and len(episode.frames) == episode.length + 1
