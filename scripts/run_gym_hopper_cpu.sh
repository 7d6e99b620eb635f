#!/usr/bin/env bash
# DSRL on Hopper on a CPU: steer the shipped DDIM DiffusionMLP (dsrl/assets/diffusion_hopper, made
# by scripts/make_diffusion_hopper.py) with the `gym_hopper_cpu` preset (DSRL-NA, 2 in-process
# Hopper-v5 envs, 12-d chunk noise, 100k env steps), then print base vs steered mean return, write
# return_vs_env_steps.png in the run dir, and print the env steps to +40 % over the base
# (scripts/return_lift.py). Extra arguments go to the launcher and override the preset, e.g.
#   bash scripts/run_gym_hopper_cpu.sh --seed 1
#   bash scripts/run_gym_hopper_cpu.sh --algorithm pixel_sac    # DSRL-SAC
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sim_env.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
LOGDIR="${LOGDIR:-./logs/DSRL_gym_hopper_cpu}"
mkdir -p "$LOGDIR"
MARK="$(mktemp)"  # the run dir is the one this launch creates under LOGDIR

python examples/launch_train_sim.py --env gym_hopper_cpu --logdir "$LOGDIR" "$@"
RUN_DIR="$(find "$LOGDIR" -mindepth 1 -maxdepth 1 -type d -newer "$MARK" | sort | tail -n 1)"
rm -f "$MARK"
if [ -n "$RUN_DIR" ]; then
  python "$(dirname "${BASH_SOURCE[0]}")/return_lift.py" "$RUN_DIR" --lift 0.4
fi
