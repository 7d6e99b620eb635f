#!/usr/bin/env bash
# DSRL on a real Franka (DROID), Pi0-DROID served from a GPU box (reference: run_real.sh).
#
# On the GPU box first:
#   DSRL_SERVER_API_KEY=<key> python scripts/serve_policy.py --policy pi0 --robot droid \
#       --pi0_checkpoint gs://openpi-assets/checkpoints/pi0_droid --host 0.0.0.0 --port 8000
# Then here (the robot computer), in an interactive terminal (ssh -t is fine):
#   LEFT_CAMERA_ID=... RIGHT_CAMERA_ID=... WRIST_CAMERA_ID=... \
#   POLICY_SERVER=gpu-box:8000 DSRL_SERVER_API_KEY=<key> scripts/run_real.sh [extra flags]
# Resume a run:  scripts/run_real.sh --resume runs/dsrl_pi0_real_<date>_s0
# Rehearsal without hardware (a simulated robot backed by the demo task, a tiny Pi0 on this
# computer; see docs/real_robot.md):
#   python scripts/serve_policy.py --policy pi0_tiny --robot droid --port 8765 &
#   ROBOT=sim POLICY_SERVER=127.0.0.1:8765 scripts/run_real.sh --max_steps 40
# With ROBOT=sim the learner is CPU-sized (REHEARSAL below: smaller batch, network, images and
# first update block, and a replay buffer that holds the episodes); every other piece (operator
# keys, 200-step episodes, the policy server, updates, metrics, checkpoints, resume) is the real
# one. Flags given on the command line override these.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${POLICY_SERVER:?set POLICY_SERVER=host:port of scripts/serve_policy.py}"
ROBOT="${ROBOT:-droid}"
if [[ "$ROBOT" == "droid" ]]; then
  : "${LEFT_CAMERA_ID:?set LEFT_CAMERA_ID (ZED serial of the left exterior camera)}"
  : "${RIGHT_CAMERA_ID:?set RIGHT_CAMERA_ID (ZED serial of the right exterior camera)}"
  : "${WRIST_CAMERA_ID:?set WRIST_CAMERA_ID (ZED serial of the wrist camera)}"
fi
REHEARSAL=()
if [[ "$ROBOT" == "sim" ]]; then
  REHEARSAL=(--batch_size 32 --hidden_dims 256 --resize_image 64 --config.replay.capacity=100000
    --config.first_update_grad_steps=60)
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export EXP="${EXP:-./runs}"

CONNECTION=(--robot "$ROBOT" --pi0_remote "$POLICY_SERVER"
  --left_camera_id "${LEFT_CAMERA_ID:-left0}" --right_camera_id "${RIGHT_CAMERA_ID:-right0}"
  --wrist_camera_id "${WRIST_CAMERA_ID:-wrist0}")
if [[ " $* " == *" --resume "* || " $* " == *" --resume="* ]]; then
  # A resumed run keeps its saved config (runs/.../config.json): pass only where the robot and
  # the policy server are now, and the flags given here, not this script's defaults again.
  exec python examples/launch_train_real.py "${CONNECTION[@]}" "$@"
fi

exec python examples/launch_train_real.py \
  --env franka_droid \
  "${CONNECTION[@]}" \
  --instruction "${INSTRUCTION:-put the spoon on the plate}" \
  --logdir "$EXP" \
  --prefix dsrl_pi0_real \
  --wandb_project DSRL_pi0_FrankaDroid \
  --batch_size 256 \
  --discount 0.99 \
  --seed 0 \
  --max_steps 500000 \
  --eval_interval 2000 \
  --log_interval 100 \
  --multi_grad_step 30 \
  --resize_image 128 \
  --action_magnitude 2.5 \
  --query_freq 10 \
  --hidden_dims 1024 \
  --num_qs 2 \
  "${REHEARSAL[@]}" \
  "$@"
