"""Aloha sim preset: the DSRL reference's values (scripts/run_aloha.sh of nakamotoo/dsrl_pi0).

gym-aloha TransferCube, Pi0-Aloha-sim as the frozen base policy, 64x64 top camera + 14-d joint
state, 50 env steps per query (the whole chunk, open loop), UTD 20, target entropy 0.
"""

from __future__ import annotations

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return ConfigDict(
        {
            "env": {"name": "aloha", "mode": "subprocess", "num_envs": 1, "image_size": 64},
            "base_policy": {
                "kind": "pi0",
                "checkpoint": "gs://openpi-assets/checkpoints/pi0_aloha_sim",
                "robot": "aloha",
                "num_steps": 10,
            },
            "steering": {"noise_mode": "repeat", "action_magnitude": 2.0, "query_freq": 50},
            "agent": {
                "algorithm": "pixel_sac",
                "hidden_dims": (128, 128, 128),
                "num_qs": 10,
                "target_entropy": 0.0,
            },
            "loop": {
                "seed": 0,
                "batch_size": 256,
                "discount": 0.999,
                "max_steps": 3_000_000,
                "multi_grad_step": 20,
                "update_block": 20,
                "start_online_updates": 1000,
                "eval_interval": 10_000,
                "eval_episodes": 10,
                "num_video_episodes": 1,
                "video_fps": 50,
                "log_interval": 500,
                "checkpoint_interval": 100_000,
            },
            "replay": {"capacity": -1},
            "log": {"prefix": "dsrl_pi0_aloha", "wandb_project": "DSRL_pi0_Aloha"},
        }
    )
