"""LIBERO preset: the DSRL reference's values (scripts/run_libero.sh of nakamotoo/dsrl_pi0).

libero_90 task 57 ("pick up the cream cheese and put it in the tray"), Pi0-LIBERO as the frozen
base policy, 64x64 agent view + 8-d state, one 32-d noise vector repeated over the 50-step
horizon, 20 env steps per query, UTD 20.
"""

from __future__ import annotations

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return ConfigDict(
        {
            "env": {
                "name": "libero",
                "kwargs": {"suite": "libero_90", "task_id": 57, "init_state": "random"},
                "mode": "subprocess",  # LIBERO renders with MuJoCo: one process per env
                "num_envs": 1,
                "image_size": 64,
            },
            "base_policy": {
                "kind": "pi0",
                "checkpoint": "gs://openpi-assets/checkpoints/pi0_libero",
                "robot": "libero",
                "num_steps": 10,
            },
            "steering": {"noise_mode": "repeat", "action_magnitude": 1.0, "query_freq": 20},
            # Overrides of the learner's defaults (which are LIBERO's).
            "agent": {
                "algorithm": "pixel_sac",
                "hidden_dims": (128, 128, 128),
                "num_qs": 10,
                "target_entropy": "auto",
            },
            "loop": {
                "seed": 0,
                "batch_size": 256,
                "discount": 0.999,
                "max_steps": 500_000,
                "multi_grad_step": 20,
                "update_block": 20,
                "start_online_updates": 500,
                "eval_interval": 10_000,
                "eval_episodes": 10,
                "num_video_episodes": 1,
                "video_fps": 50,
                "log_interval": 500,
                "checkpoint_interval": 50_000,
            },
            "replay": {"capacity": -1},  # -1: max_steps // multi_grad_step, like the reference
            "log": {"prefix": "dsrl_pi0_libero", "wandb_project": "DSRL_pi0_Libero"},
        }
    )
