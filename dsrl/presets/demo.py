"""Demo preset: DSRL steering the shipped flow-matching policy on the embedded pixel task.

Runs on a 2-core CPU in a few minutes. The base policy ignores the visual cue and reaches the
paying goal about half the time; the agent sees the cue and learns which noise makes the frozen
policy take the right branch. The env settings are those `dsrl/envs/demo.py` measured the base
policy with (32x32 images, 48-step episodes, query_freq 8 = the chunk length, repeated noise);
the latent is bounded at 1.5 (the measurement used 1.0), with a light encoder and a small
critic so that updates are cheap on a CPU.
"""

from __future__ import annotations

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return ConfigDict(
        {
            # numpy env: no worker processes needed
            "env": {"name": "demo", "mode": "inline", "num_envs": 8, "image_size": 32},
            "base_policy": {"kind": "flow_mlp"},
            "steering": {"noise_mode": "repeat", "action_magnitude": 1.5, "query_freq": 8},
            "agent": {
                "algorithm": "pixel_sac",
                "hidden_dims": (64, 64),
                "num_qs": 2,
                "target_entropy": "auto",
                "cnn_features": (16, 16),
                "cnn_strides": (2, 2),
                "bottleneck_dim": 32,
                "actor_lr": 3e-4,
                "color_jitter": False,
            },
            "loop": {
                "seed": 0,
                "batch_size": 128,
                "discount": 0.99,
                "max_steps": 1500,
                "multi_grad_step": 4,
                "update_block": 32,
                "start_online_updates": 200,
                "eval_interval": 250,
                "eval_episodes": 32,
                "num_video_episodes": 2,
                "video_fps": 10,
                "log_interval": 250,
                "checkpoint_interval": 250,  # a crash or a stuck worker loses at most 250 steps
            },
            "replay": {"capacity": 50_000},
            "log": {"prefix": "dsrl_demo", "wandb_project": "DSRL_demo", "wandb_mode": "disabled"},
        }
    )
