"""Real-robot preset (Franka + DROID, Pi0-DROID served remotely): the reference's run_real.sh values.

Three ZED cameras at 128x128 stacked on channels + joint/gripper state for the agent; Pi0-DROID
(horizon 10) behind `scripts/serve_policy.py` on a GPU box; one 32-d noise vector repeated over
the horizon with |a| <= 2.5; the whole 10-step chunk executed at 15 Hz; 200-step episodes; the
operator labels success. Updates start after the first trajectory with a 5000-step first block,
then 30 gradient steps per query. No control evaluation (each would cost robot time).
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.env = "droid"
    # "droid": the real robot; "sim": a simulated RobotEnv backed by the demo task (dry run of the
    # operator protocol and the whole pipeline, no hardware).
    config.robot = "droid"
    config.env_kwargs = ml_collections.ConfigDict(
        {
            "left_camera_id": "",
            "right_camera_id": "",
            "wrist_camera_id": "",
            "prompt": "put the spoon on the plate",
            "exterior_camera": "right",
            "control_hz": 15.0,
            "max_episode_steps": 200,
            "binarize_gripper": True,
        }
    )
    config.env_mode = "inline"  # one robot, in this process
    config.num_envs = 1
    config.resize_image = 128
    # Append Pi0's prefix feature (pooled over valid tokens, from the server) to the agent state.
    config.use_prefix_feature = False
    config.prefix_feature_dim = 2048

    config.base_policy = ml_collections.ConfigDict(
        {
            "kind": "pi0",
            "checkpoint": "gs://openpi-assets/checkpoints/pi0_droid",
            "variant": "full",
            "dtype": "bfloat16",
            "robot": "droid",
            "remote": "",  # host:port of scripts/serve_policy.py (key: $DSRL_SERVER_API_KEY)
            "num_steps": 10,
        }
    )
    config.noise_mode = "repeat"
    config.noise_kwargs = ml_collections.ConfigDict()
    config.action_magnitude = 2.5
    config.query_freq = 10

    config.algorithm = "pixel_sac"
    config.agent = ml_collections.ConfigDict(
        {
            "hidden_dims": (1024, 1024, 1024),
            "num_qs": 2,
            "critic_reduction": "min",
            # A string: the learner's default is the string "auto" and ConfigDict keeps types.
            "target_entropy": "0.0",
        }
    )

    config.seed = 0
    config.batch_size = 256
    config.discount = 0.99
    config.max_steps = 500_000
    config.max_env_steps = -1
    config.multi_grad_step = 30
    config.update_block = 30
    config.start_online_updates = 0
    config.start_online_trajs = 1  # the reference's num_initial_traj_collect
    config.first_update_grad_steps = 5000
    config.eval_interval = 2000
    config.eval_episodes = 0
    config.eval_base_every_eval = False
    config.num_video_episodes = 0
    config.video_fps = 15
    config.log_interval = 100
    config.checkpoint_interval = 600  # about one episode of updates: a crash loses little
    config.replay_buffer_capacity = -1
    config.store_action_chunks = False

    config.prefix = "dsrl_pi0_real"
    config.wandb_project = "DSRL_pi0_FrankaDroid"
    config.wandb_mode = "offline"
    config.logdir = "runs"
    return config
