"""Aloha sim preset: the DSRL reference's values (scripts/run_aloha.sh of nakamotoo/dsrl_pi0).

gym-aloha TransferCube, Pi0-Aloha-sim as the frozen base policy, 64x64 top camera + 14-d joint
state, 50 env steps per query (the whole chunk, open loop), UTD 20, target entropy 0.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.env = "aloha"
    config.env_kwargs = ml_collections.ConfigDict()
    config.env_mode = "subprocess"
    config.num_envs = 1
    config.resize_image = 64

    config.base_policy = ml_collections.ConfigDict(
        {
            "kind": "pi0",
            "checkpoint": "gs://openpi-assets/checkpoints/pi0_aloha_sim",
            "variant": "full",
            "dtype": "bfloat16",
            "robot": "aloha",
            "remote": "",
            "num_steps": 10,
        }
    )
    config.noise_mode = "repeat"
    config.noise_kwargs = ml_collections.ConfigDict()
    config.action_magnitude = 2.0
    config.query_freq = 50

    config.algorithm = "pixel_sac"
    config.agent = ml_collections.ConfigDict(
        {"hidden_dims": (128, 128, 128), "num_qs": 10, "target_entropy": 0.0}
    )

    config.seed = 0
    config.batch_size = 256
    config.discount = 0.999
    config.max_steps = 3_000_000
    config.max_env_steps = -1
    config.multi_grad_step = 20
    config.update_block = 20
    config.start_online_updates = 1000
    config.eval_interval = 10_000
    config.eval_episodes = 10
    config.eval_base_every_eval = False
    config.num_video_episodes = 1
    config.video_fps = 50
    config.log_interval = 500
    config.checkpoint_interval = 100_000
    config.replay_buffer_capacity = -1
    config.store_action_chunks = False

    config.prefix = "dsrl_pi0_aloha"
    config.wandb_project = "DSRL_pi0_Aloha"
    config.wandb_mode = "offline"
    config.logdir = "runs"
    return config
