#!/usr/bin/env bash
# DSRL on Aloha sim TransferCube with Pi0-Aloha-sim, the reference's settings (GPU box).
# Extra arguments are passed to the launcher and override these, e.g.
#   bash scripts/run_aloha.sh --seed 1 --wandb_mode online
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sim_env.sh"
LOGDIR="${LOGDIR:-./logs/DSRL_pi0_Aloha}"

python examples/launch_train_sim.py \
  --algorithm pixel_sac \
  --env aloha_cube \
  --prefix dsrl_pi0_aloha \
  --wandb_project DSRL_pi0_Aloha \
  --logdir "$LOGDIR" \
  --batch_size 256 \
  --discount 0.999 \
  --seed 0 \
  --max_steps 3000000 \
  --eval_interval 10000 \
  --log_interval 500 \
  --eval_episodes 10 \
  --multi_grad_step 20 \
  --start_online_updates 1000 \
  --resize_image 64 \
  --action_magnitude 2.0 \
  --query_freq 50 \
  --hidden_dims 128 \
  --target_entropy 0.0 \
  "$@"
