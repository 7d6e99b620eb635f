"""Robomimic Can on a CPU: DSRL steering a DDIM DiffusionMLP that this repository clones itself.

The base policy is the shipped `dsrl/assets/diffusion_can` (scripts/make_diffusion_can.py): the
release's Can DiffusionMLP (3 x 512 Mish, 4-step chunks, 8 DDIM steps, eta 0) cloned from
scripted demos of which 3 in 10 close the gripper over the can's top and fail, so its noise
picks between grasping and missing: 0.32 success with i.i.d. noise over the script's 50
placements, 1.00 with the all-zero noise (which is also where the untrained actor's mode sits). The env is robosuite's PickPlaceCan with robomimic's 23-d low-dim
state, 20 Hz OSC_POSE, the release's reward (success - 1 per step, summed over the executed
chunk) and its 28-d latent (the whole 4 x 7 chunk noise, `noise_mode="full"`).

What differs from the release's `robomimic_can` preset, to fit 2 CPU cores:
- networks 2 x 256 (release 3 x 2048), Tanh + LayerNorm as released;
- 2 env workers (release 4), batch 256 as released, 5 gradient steps per collected chunk
  (the release's utd 20 per step of its 4 envs, the same ratio);
- episodes end at the first success (`end_on_success`, mask 0) and after 250 steps (release
  300, no early end): the steps after a success earn 0 either way, and a CPU pays for each;
- the latent bounded at 1.0 (release 1.5): the policy was cloned on N(0, I) noise, whose 28-d
  draws have norm ~5.3; at 1.5 the actor's mean ran to the box's corners (norm ~8, every entry
  near +-1.4) within 1000 gradient steps and the actor's mode fell from 0.45 to 0.00 success,
  where it stayed through 6000 steps (an earlier base policy, 0.10 i.i.d.); at 1.0 even a
  corner has the norm of typical noise (the LIBERO CPU proof bounds it at 1.0 for this reason);
- 300 warm-up chunks of the base policy with i.i.d. noise (release 1501);
- a small starting temperature (0.02) and target entropy -dim/2 (release 1.0 and 0), taken from
  the LIBERO CPU proof, where the reference's 1.0 kept the actor's mode in the failing region
  (the release's values were not tried on Can);
- evaluation of the actor's mode (deterministic) on 50 fixed placements every 2000 gradient
  steps (release: 200 sampled episodes).
`--algorithm dsrl_na` runs DSRL-NA with the same networks and the NA learner's defaults, which
are the release's (10 noise-critic steps per 20 critic steps, distilled head by head, lr 3e-4).
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from dsrl.presets.state_dsrl import release_agent

CAN_ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "diffusion_can"
ACT_STEPS = 4


def get_config() -> ConfigDict:
    return ConfigDict(
        {
            "env": {
                "name": "robomimic",
                "kwargs": {"task": "can", "max_episode_steps": 250, "end_on_success": True},
                "mode": "subprocess",
                "num_envs": 2,
            },
            "base_policy": {"kind": "diffusion_mlp", "checkpoint": str(CAN_ASSET_DIR)},
            "steering": {"noise_mode": "full", "action_magnitude": 1.0, "query_freq": ACT_STEPS},
            "agent": release_agent(
                "pixel_sac", (256, 256), target_entropy="auto", init_temperature=0.02
            ),
            "loop": {
                "seed": 0,
                "batch_size": 256,
                "discount": 0.99 ** (1.0 / ACT_STEPS),  # the release's 0.99 per chunk
                "max_steps": 20_000,
                "multi_grad_step": 5,
                "update_block": 25,  # one host-to-device transfer per 25 updates
                "start_online_updates": 300,
                "eval_interval": 2_000,
                "eval_episodes": 50,
                "eval_base_warmup": False,
                "eval_sampled": False,
                "num_video_episodes": 0,
                "log_interval": 500,
                "checkpoint_interval": 10_000,
            },
            "replay": {"capacity": 200_000},
            "log": {
                "prefix": "dsrl_robomimic_can_cpu",
                "wandb_project": "DSRL_state",
                "wandb_mode": "disabled",
            },
        }
    )
