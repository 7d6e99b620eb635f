"""Hopper on a CPU: DSRL steering a DDIM DiffusionMLP that this repository clones itself.

The base policy is the shipped `dsrl/assets/diffusion_hopper` (scripts/make_diffusion_hopper.py):
the release's Hopper DiffusionMLP (3 x 512 ReLU residual, 4-step chunks, 20 denoising steps
sampled by 5 DDIM steps, eta 0) cloned from a medium-level dataset made here (SAC in the action
space stopped at a return of ~1k, scripts/make_hopper_dataset.py). It reads the raw Hopper-v5
observation and writes raw actions (it carries its own normalization), so the env is unnormalized.

What differs from the release's `gym_hopper` preset, to fit a CPU and a 100k-env-step budget:
- DSRL-NA (`dsrl_na`, the release's Gym default, with its 10 distillation steps per update);
  `--algorithm pixel_sac` runs DSRL-SAC with the same networks. On seeds 0-2 NA first returned
  +40 % over the base at 21.8k / 18.3k / 18.6k env steps and mostly held it; SAC reached it
  once (seed 0, 22.3k, not held) and never on seeds 1-2 in 40k (docs/diffusion.md);
- 2 in-process envs (release 4 subprocess envs): a Hopper step costs microseconds, a pipe more;
- 5 gradient steps per collected chunk (release: utd 20 per 2 steps of 4 envs = 2.5), batch 256;
- 500 warm-up chunks of the base policy with i.i.d. noise (release 2001);
- evaluation of the actor's mode on 10 seeded episodes every 5000 gradient steps (4000 env
  steps after the warm-up), release: 200 sampled episodes every 4000 vector-env steps.
Networks (3 x 128 Tanh + LayerNorm), action_magnitude 1.5, target entropy 0, initial temperature
1.0, gamma 0.99 per chunk and the 1000-step episodes are the release's.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from dsrl.presets.state_dsrl import release_agent

HOPPER_ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "diffusion_hopper"
ACT_STEPS = 4


def get_config() -> ConfigDict:
    return ConfigDict(
        {
            "env": {
                "name": "gym",
                "kwargs": {"task": "hopper", "max_episode_steps": 1000},
                "mode": "inline",
                "num_envs": 2,
            },
            "base_policy": {"kind": "diffusion_mlp", "checkpoint": str(HOPPER_ASSET_DIR)},
            "steering": {"noise_mode": "full", "action_magnitude": 1.5, "query_freq": ACT_STEPS},
            "agent": release_agent("dsrl_na", (128, 128, 128)),
            "loop": {
                "seed": 0,
                "batch_size": 256,
                "discount": 0.99 ** (1.0 / ACT_STEPS),  # the release's 0.99 per chunk
                "max_steps": 125_000,
                "max_env_steps": 100_000,
                "multi_grad_step": 5,
                "update_block": 25,  # one host-to-device transfer per 25 updates
                "start_online_updates": 500,
                "eval_interval": 5_000,
                "eval_episodes": 10,
                "eval_base_warmup": False,
                "eval_sampled": False,
                "num_video_episodes": 0,
                "log_interval": 500,
                "checkpoint_interval": 25_000,
            },
            "replay": {"capacity": 200_000},
            "log": {
                "prefix": "dsrl_gym_hopper_cpu",
                "wandb_project": "DSRL_state",
                "wandb_mode": "disabled",
            },
        }
    )
