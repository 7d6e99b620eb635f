"""LIBERO-Spatial, all 10 tasks in one run: the LIBERO preset (the reference's learner and loop,
Pi0-LIBERO) spread over a whole suite, as RLinf trains DSRL (dsrl.envs.libero_suite).

One env worker per task (`task_sampling` "per_worker": no MuJoCo model is ever rebuilt) and 50
evaluation episodes, 5 per task, so `evaluation*/success_rate` is the mean over the tasks and
`evaluation*/task_<id>/success_rate` has the same number of episodes for every task. The agent
sees its task as a one-hot after the 8-d state; Pi0 gets each env's own instruction. RLinf's
remaining settings are flags (docs/training.md, "Training over a whole LIBERO suite").
"""

from __future__ import annotations

from ml_collections import ConfigDict

from dsrl.presets import libero


def get_config() -> ConfigDict:
    config = libero.get_config()
    config.env.kwargs = {
        "suite": "libero_spatial",
        "tasks": "all",
        "task_sampling": "per_worker",
        "init_state": "random",
    }
    config.env.num_envs = 10  # one per task
    config.loop.eval_episodes = 50  # a multiple of num_envs: 5 per task
    config.log.prefix = "dsrl_pi0_libero_spatial"
    config.log.wandb_project = "DSRL_pi0_Libero_Spatial"
    return config
