"""The steering, learner and replay buffer the loop and fault tests run with (small, CPU-fast).

One place for tests/test_loop.py and both tests/test_faults_*.py files, so that a change in how
steering, the learner or the loop's buffer are built is made once."""

from __future__ import annotations

from dsrl.agents.pixel_sac.learner import PixelSACLearner
from dsrl.base_policies.flow_mlp import FlowMLPPolicy
from dsrl.data.replay_buffer import ReplayBuffer
from dsrl.steering import Steering, make_noise_param
from dsrl.training import loop

QUERY_FREQ = 8  # the shipped flow policy's chunk length
ACTION_MAGNITUDE = 1.5


def demo_steering() -> Steering:
    policy = FlowMLPPolicy.load_demo()
    noise_param = make_noise_param("repeat", policy.noise_shape, ACTION_MAGNITUDE)
    return Steering(policy, noise_param, QUERY_FREQ)


def small_learner(spec, steering: Steering, seed: int = 0):
    cfg = PixelSACLearner.default_config()
    cfg.update(
        hidden_dims=(16, 16),
        num_qs=2,
        cnn_features=(8,),
        cnn_strides=(2,),
        bottleneck_dim=8,
        color_jitter=False,
    )
    return PixelSACLearner.create(
        seed,
        spec.observation_spec,
        steering.latent_dim,
        cfg,
        action_magnitude=steering.action_magnitude,
    )


def replay_buffer(spec, steering: Steering, seed: int = 0) -> ReplayBuffer:
    example = loop.example_transition(spec.observation_spec, steering)
    return ReplayBuffer(example, 10_000, seed)
