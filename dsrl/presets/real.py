"""Real-robot preset (Franka + DROID, Pi0-DROID served remotely): the reference's run_real.sh values.

Three ZED cameras at 128x128 stacked on channels + joint/gripper state for the agent; Pi0-DROID
(horizon 10) behind `scripts/serve_policy.py` on a GPU box; one 32-d noise vector repeated over
the horizon with |latent| <= 2.5; the whole 10-step chunk executed at 15 Hz; 200-step episodes;
the operator labels success. Updates start after the first trajectory with a 5000-step first
block, then 30 gradient steps per query. No control evaluation (each would cost robot time).
"""

from __future__ import annotations

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return ConfigDict(
        {
            "env": {
                "name": "droid",
                # "droid": the real robot; "sim": a simulated RobotEnv backed by the demo task
                # (a dry run of the operator protocol and the whole pipeline, no hardware).
                "robot": "droid",
                "kwargs": {
                    "left_camera_id": "",
                    "right_camera_id": "",
                    "wrist_camera_id": "",
                    "prompt": "put the spoon on the plate",
                    "exterior_camera": "right",
                    "control_hz": 15.0,
                    "max_episode_steps": 200,
                    "binarize_gripper": True,
                },
                "mode": "inline",  # one robot, in this process
                "num_envs": 1,
                "image_size": 128,
                # Append Pi0's prefix feature (pooled over valid tokens, from the server) to the
                # agent state.
                "use_prefix_feature": False,
                "prefix_feature_dim": 2048,
            },
            "base_policy": {
                "kind": "pi0",
                "checkpoint": "gs://openpi-assets/checkpoints/pi0_droid",
                "robot": "droid",
                "remote": "",  # host:port of scripts/serve_policy.py (key: $DSRL_SERVER_API_KEY)
                "num_steps": 10,
            },
            "steering": {"noise_mode": "repeat", "action_magnitude": 2.5, "query_freq": 10},
            "agent": {
                "algorithm": "pixel_sac",
                "hidden_dims": (1024, 1024, 1024),
                "num_qs": 2,
                "critic_reduction": "min",
                "target_entropy": 0.0,
            },
            "loop": {
                "seed": 0,
                "batch_size": 256,
                "discount": 0.99,
                "max_steps": 500_000,
                "multi_grad_step": 30,
                "update_block": 30,
                "start_online_updates": 0,
                "start_online_trajs": 1,  # the reference's num_initial_traj_collect
                "first_update_grad_steps": 5000,
                "eval_interval": 2000,
                "eval_episodes": 0,
                "num_video_episodes": 0,
                "video_fps": 15,
                "log_interval": 100,
                # About one episode of updates: a crash loses little.
                "checkpoint_interval": 600,
            },
            "replay": {"capacity": -1},
            "log": {"prefix": "dsrl_pi0_real", "wandb_project": "DSRL_pi0_FrankaDroid"},
        }
    )
