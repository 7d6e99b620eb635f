#!/usr/bin/env bash
# State-based DSRL on Robomimic (robosuite with robomimic's low-dim keys) at the authors' settings
# (dsrl/presets/robomimic_<task>.py: DSRL-NA, 3 x 2048 Tanh + LayerNorm networks, chunks of 4,
# sparse success - 1 summed per chunk). TASK = can (default) | lift | square. A base policy is
# required: a state-conditioned policy with a (4, 7) noise, given as BASE_POLICY=<dir> (a DiffusionMLPPolicy or flow_mlp
# directory; the kind is read from it, or set BASE_POLICY_KIND). Extra arguments go to the launcher, e.g.
#   BASE_POLICY=runs/can_flow bash scripts/run_robomimic.sh --seed 1
#   TASK=lift BASE_POLICY=... bash scripts/run_robomimic.sh --algorithm pixel_sac
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/state_release.sh"
run_state_release robomimic can "$@"
