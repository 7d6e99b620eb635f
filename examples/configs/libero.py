"""LIBERO preset: the DSRL reference's values (scripts/run_libero.sh of nakamotoo/dsrl_pi0).

libero_90 task 57 ("pick up the cream cheese and put it in the tray"), Pi0-LIBERO as the frozen
base policy, 64x64 agent view + 8-d state, one 32-d noise vector repeated over the 50-step
horizon, 20 env steps per query, UTD 20.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.env = "libero"
    config.env_kwargs = ml_collections.ConfigDict(
        {"suite": "libero_90", "task_id": 57, "init_state": "random"}
    )
    config.env_mode = "subprocess"  # LIBERO renders with MuJoCo: one process per env
    config.num_envs = 1
    config.resize_image = 64

    config.base_policy = ml_collections.ConfigDict(
        {
            "kind": "pi0",
            "checkpoint": "gs://openpi-assets/checkpoints/pi0_libero",
            "variant": "full",
            "dtype": "bfloat16",
            "robot": "libero",
            "remote": "",  # host:port of a policy server instead of a local model
            "num_steps": 10,
        }
    )
    config.noise_mode = "repeat"
    config.noise_kwargs = ml_collections.ConfigDict()
    config.action_magnitude = 1.0
    config.query_freq = 20

    config.algorithm = "pixel_sac"
    # Overrides of PixelSACLearner.default_config() (the learner's own defaults are LIBERO's).
    config.agent = ml_collections.ConfigDict(
        {"hidden_dims": (128, 128, 128), "num_qs": 10, "target_entropy": "auto"}
    )

    config.seed = 0
    config.batch_size = 256
    config.discount = 0.999
    config.max_steps = 500_000
    config.max_env_steps = -1
    config.multi_grad_step = 20
    config.update_block = 20
    config.start_online_updates = 500
    config.eval_interval = 10_000
    config.eval_episodes = 10
    config.eval_base_every_eval = False
    config.num_video_episodes = 1
    config.video_fps = 50
    config.log_interval = 500
    config.checkpoint_interval = 50_000
    config.replay_buffer_capacity = -1  # -1: max_steps // multi_grad_step, like the reference
    config.store_action_chunks = False

    config.prefix = "dsrl_pi0_libero"
    config.wandb_project = "DSRL_pi0_Libero"
    config.wandb_mode = "offline"
    config.logdir = "runs"
    return config
