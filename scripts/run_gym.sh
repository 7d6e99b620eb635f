#!/usr/bin/env bash
# State-based DSRL on gymnasium MuJoCo (v5) at the authors' settings (dsrl/presets/gym_<task>.py:
# DSRL-NA, 3 x layer Tanh + LayerNorm networks, chunks of 4, env reward summed per chunk).
# TASK = hopper (default) | walker2d | halfcheetah. A base policy is required: a state-conditioned
# policy with a (4, action_dim) noise, given as BASE_POLICY=<dir> (a DiffusionMLPPolicy directory, e.g.
# from `python -m dsrl.base_policies.diffusion.make` or `.release`, or a flow_mlp one; the kind is
# read from the directory, or set BASE_POLICY_KIND). Extra arguments go to the launcher and override the preset, e.g.
#   BASE_POLICY=runs/hopper_flow bash scripts/run_gym.sh --seed 1 --algorithm pixel_sac
#   TASK=walker2d BASE_POLICY=... bash scripts/run_gym.sh --config.env.num_envs=8
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/state_release.sh"
run_state_release gym hopper "$@"
