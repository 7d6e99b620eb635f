"""The authors' state-based DSRL settings (ajwagen/dsrl at 8d21b9c, cfg/gym and cfg/robomimic),
shared by the Gym and Robomimic presets (one module per preset imports `release_config`).

Mapping of the release's values onto this loop:
- networks: `num_layers` x `layer_size` with Tanh and LayerNorm for the actor and both critics
  (SB3 `net_arch` + `activation_fn=Tanh` + a LayerNorm after each Linear), 2 critic heads
  reduced by min, entropy backup, target entropy 0, one learning rate 3e-4, batch 256, tau 0.005;
- DSRL-NA (the release's default algorithm): `utd` critic/actor steps and 10 noise-critic steps
  per update, distilled head by head from the online action critic on unclipped N(0, I) noise;
- the agent's latent is the whole chunk's noise (act_steps x action_dim, noise_mode "full"),
  bounded by `action_magnitude`; the chunk length is act_steps = 4 (query_freq = horizon);
- UTD: the release runs `utd` gradient steps every `train_freq` steps of its 4 chunked envs, i.e.
  utd / (train_freq * 4) gradient steps per collected chunk; `loop.multi_grad_step` is that
  number (rounded up where it is not whole);
- discount: the release's gamma applies once per chunk; this loop discounts per env step
  (a transition's discount is discount ** steps), so the per-step value is gamma ** (1 / 4);
- warm-up: `init_rollout_steps` chunks of the base policy before updates start
  (`loop.start_online_updates`, counted in transitions = chunks here too);
- rewards: `reward_convention="env_sum"` of the env (dsrl.envs.gym_mujoco, dsrl.envs.robomimic).
The base policy is a state-conditioned one with a (4, action_dim) noise (`base_policy.checkpoint`
must be given). The presets name `flow_mlp`; for the release's DDIM DiffusionMLP pass
`--config.base_policy.kind=diffusion_mlp` (scripts/run_gym.sh and run_robomimic.sh read the kind
from the directory).
"""

from __future__ import annotations

import math
from typing import Any

from ml_collections import ConfigDict

ACT_STEPS = 4
NUM_ENVS = 4  # the release's n_envs


def release_agent(algorithm: str, hidden_dims: tuple[int, ...], **overrides: Any) -> dict:
    """The release's actor and critic settings (both DSRL variants) as an `agent` section;
    `overrides` replace or add entries (the CPU presets' smaller networks, temperatures)."""
    return {
        "algorithm": algorithm,
        "hidden_dims": hidden_dims,
        "activation": "tanh",
        "critic_layer_norm": True,
        "actor_layer_norm": True,
        "num_qs": 2,
        "critic_reduction": "min",
        "backup_entropy": True,
        "target_entropy": 0.0,
        "init_temperature": 1.0,
        "actor_lr": 3e-4,
        "critic_lr": 3e-4,
        "temp_lr": 3e-4,
        "tau": 0.005,
        **overrides,
    }


def release_config(
    *,
    env: dict[str, Any],
    prefix: str,
    layer_size: int,
    action_magnitude: float,
    utd: int,
    train_freq: int,
    gamma: float,
    init_rollout_steps: int,
    max_steps: int,
    eval_every: int,
) -> ConfigDict:
    """A RunConfig tree with the release's learner settings for one task."""
    return ConfigDict(
        {
            "env": {"mode": "subprocess", "num_envs": NUM_ENVS, **env},
            "base_policy": {"kind": "flow_mlp", "checkpoint": ""},
            "steering": {
                "noise_mode": "full",
                "action_magnitude": action_magnitude,
                "query_freq": ACT_STEPS,
            },
            "agent": {
                **release_agent("dsrl_na", (layer_size,) * 3),
                "noise_critic_lr": 3e-4,
                "utd": utd,
                "noise_critic_grad_steps": 10,
                "distill_target": "per_head",
                "distill_noise_clip": False,
            },
            "loop": {
                "seed": 0,
                "batch_size": 256,
                "discount": gamma ** (1.0 / ACT_STEPS),
                "max_steps": max_steps,
                "multi_grad_step": math.ceil(utd / (train_freq * NUM_ENVS)),
                "start_online_updates": init_rollout_steps,
                # The release evaluates every `eval_every` steps of its vector env, each followed
                # by utd / train_freq gradient steps; here the interval counts gradient steps.
                "eval_interval": eval_every * utd // train_freq,
                "eval_episodes": 200,  # the release's num_evals
                "eval_base_warmup": False,
                "num_video_episodes": 0,  # state-only envs render no agent image
                "log_interval": 1_000,
                "checkpoint_interval": 50_000,
            },
            "replay": {"capacity": 1_000_000},
            "log": {"prefix": prefix, "wandb_project": "DSRL_state", "wandb_mode": "disabled"},
        }
    )
