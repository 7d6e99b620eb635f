"""Robomimic square (robosuite, robomimic low-dim keys): the authors' DSRL settings
(cfg/robomimic/dsrl_square.yaml): 3 x 2048 Tanh + LayerNorm networks, action_magnitude 1.5,
utd 20 every chunked step of 4 envs, gamma 0.999 per chunk, 2001 warm-up chunks, 400-step
episodes, sparse success reward - 1 summed over chunks of 4 (dsrl.presets.state_dsrl).
Needs a base policy: --config.base_policy.checkpoint=<dir>.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from dsrl.presets.state_dsrl import release_config


def get_config() -> ConfigDict:
    return release_config(
        env={"name": "robomimic", "kwargs": {"task": "square", "max_episode_steps": 400}},
        prefix="dsrl_robomimic_square",
        layer_size=2048,
        action_magnitude=1.5,
        utd=20,
        train_freq=1,
        gamma=0.999,
        init_rollout_steps=2001,
        max_steps=1_000_000,
        eval_every=4000,
    )
