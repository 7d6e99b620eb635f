#!/usr/bin/env bash
# State-based DSRL on Robomimic (robosuite with robomimic's low-dim keys) at the authors' settings
# (dsrl/presets/robomimic_<task>.py: DSRL-NA, 3 x 2048 Tanh + LayerNorm networks, chunks of 4,
# sparse success - 1 summed per chunk). TASK = can (default) | lift | square. A base policy is
# required: a state-conditioned policy with a (4, 7) noise, given as BASE_POLICY=<dir> (a flow_mlp
# directory until the DDIM DiffusionMLP lands). Extra arguments go to the launcher, e.g.
#   BASE_POLICY=runs/can_flow bash scripts/run_robomimic.sh --seed 1
#   TASK=lift BASE_POLICY=... bash scripts/run_robomimic.sh --algorithm pixel_sac
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sim_env.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
TASK="${TASK:-can}"
LOGDIR="${LOGDIR:-./logs/DSRL_robomimic_${TASK}}"
if [ -z "${BASE_POLICY:-}" ]; then
  echo "run_robomimic.sh: set BASE_POLICY=<base policy directory> (state and action dims of $TASK)" >&2
  exit 2
fi

# The kind follows the directory: DiffusionMLPPolicy.save writes a "sampler" section (DDIM).
if [ -z "${BASE_POLICY_KIND:-}" ]; then
  if grep -q '"sampler"' "$BASE_POLICY/config.json" 2>/dev/null; then BASE_POLICY_KIND=diffusion_mlp
  else BASE_POLICY_KIND=flow_mlp; fi
fi

python examples/launch_train_sim.py --env "robomimic_${TASK}" --logdir "$LOGDIR" \
  --config.base_policy.kind="$BASE_POLICY_KIND" \
  --config.base_policy.checkpoint="$BASE_POLICY" "$@"
