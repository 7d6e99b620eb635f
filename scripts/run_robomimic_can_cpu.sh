#!/usr/bin/env bash
# DSRL on Robomimic Can on a CPU: steer the shipped DDIM DiffusionMLP (dsrl/assets/diffusion_can,
# made by scripts/make_diffusion_can.py) with the `robomimic_can_cpu` preset (2 env workers,
# 23-d low-dim state, 28-d chunk noise), then print base vs steered success and write
# success_vs_env_steps.png in the run dir. Extra arguments go to the launcher and override the
# preset, e.g.
#   bash scripts/run_robomimic_can_cpu.sh --seed 1
#   bash scripts/run_robomimic_can_cpu.sh --algorithm dsrl_na
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sim_env.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
LOGDIR="${LOGDIR:-./logs/DSRL_robomimic_can_cpu}"

python examples/launch_train_sim.py --env robomimic_can_cpu --logdir "$LOGDIR" "$@"
