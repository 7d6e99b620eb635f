"""Gym halfcheetah (gymnasium Halfcheetah-v5): the authors' DSRL settings (cfg/gym/dsrl_halfcheetah.yaml):
3 x 1024 Tanh + LayerNorm networks, action_magnitude 1.5, utd 20 every 2 chunked steps of 4 envs,
gamma 0.99 per chunk, 2001 warm-up chunks, 1000-step episodes, chunks of 4 (dsrl.presets.state_dsrl).
Needs a base policy: --config.base_policy.checkpoint=<dir>.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from dsrl.presets.state_dsrl import release_config


def get_config() -> ConfigDict:
    return release_config(
        env={"name": "gym", "kwargs": {"task": "halfcheetah", "max_episode_steps": 1000}},
        prefix="dsrl_gym_halfcheetah",
        layer_size=1024,
        action_magnitude=1.5,
        utd=20,
        train_freq=2,
        gamma=0.99,
        init_rollout_steps=2001,
        max_steps=1_250_000,  # gradient steps: ~2M env steps at 2.5 updates per 4-step chunk
        eval_every=4000,
    )
