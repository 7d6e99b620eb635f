"""The learner and replay buffer the loop-level fault tests train with (small, CPU-fast).

One place for both tests/test_faults_*.py files, so that a change in how the loop's buffer is
laid out for a learner is made once, the way tests/test_loop.py's `_components` makes it."""

from __future__ import annotations

from dsrl.agents.pixel_sac.learner import PixelSACLearner
from dsrl.data.replay_buffer import ReplayBuffer
from dsrl.training import loop

ACTION_MAGNITUDE = 1.5


def small_learner(spec, latent_dim: int, seed: int = 0):
    cfg = PixelSACLearner.default_config()
    cfg.update(
        hidden_dims=(16, 16),
        num_qs=2,
        cnn_features=(8,),
        cnn_strides=(2,),
        latent_dim=latent_dim,
        action_magnitude=ACTION_MAGNITUDE,
        color_jitter=False,
    )
    return PixelSACLearner.create(seed, spec.observation_spec, latent_dim, cfg)


def replay_buffer(spec, latent_dim: int, seed: int = 0) -> ReplayBuffer:
    return ReplayBuffer(loop.example_transition(spec.observation_spec, latent_dim), 10_000, seed)
