"""Demo preset: DSRL steering the shipped flow-matching policy on the embedded pixel task.

Runs on a 2-core CPU in a few minutes. The base policy ignores the visual cue and reaches the
paying goal about half the time; the agent sees the cue and learns which noise makes the frozen
policy take the right branch. Values follow `dsrl/envs/demo.py`'s recommendation (32x32 images,
48-step episodes, query_freq 8 = the chunk length, repeated noise, action_magnitude 1.5) with a
light encoder and a small critic so that updates are cheap on a CPU.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.env = "demo"
    config.env_kwargs = ml_collections.ConfigDict()
    config.env_mode = "inline"  # numpy env: no worker processes needed
    config.num_envs = 8
    config.resize_image = 32

    config.base_policy = ml_collections.ConfigDict(
        {"kind": "flow_mlp", "checkpoint": "", "remote": ""}
    )
    config.noise_mode = "repeat"
    config.noise_kwargs = ml_collections.ConfigDict()
    config.action_magnitude = 1.5
    config.query_freq = 8

    config.algorithm = "pixel_sac"
    config.agent = ml_collections.ConfigDict(
        {
            "hidden_dims": (64, 64),
            "num_qs": 2,
            "target_entropy": "auto",
            "cnn_features": (16, 16),
            "cnn_strides": (2, 2),
            "latent_dim": 32,
            "actor_lr": 3e-4,
            "color_jitter": False,
        }
    )

    config.seed = 0
    config.batch_size = 128
    config.discount = 0.99
    config.max_steps = 1500
    config.max_env_steps = -1
    config.multi_grad_step = 4
    config.update_block = 32
    config.start_online_updates = 200
    config.eval_interval = 250
    config.eval_episodes = 32
    config.eval_base_every_eval = False
    config.num_video_episodes = 2
    config.video_fps = 10
    config.log_interval = 250
    config.checkpoint_interval = 250  # a crash or a stuck worker loses at most 250 steps
    config.replay_buffer_capacity = 50_000
    config.store_action_chunks = False

    config.prefix = "dsrl_demo"
    config.wandb_project = "DSRL_demo"
    config.wandb_mode = "disabled"
    config.logdir = "runs"
    return config
