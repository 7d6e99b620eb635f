#!/usr/bin/env bash
# DSRL on LIBERO-90 task 57 with Pi0-LIBERO, the reference's settings (GPU box).
# Extra arguments are passed to the launcher and override these, e.g.
#   bash scripts/run_libero.sh --seed 1 --num_envs 4 --pi0_remote gpu-host:8000
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sim_env.sh"
LOGDIR="${LOGDIR:-./logs/DSRL_pi0_Libero}"

python examples/launch_train_sim.py \
  --algorithm pixel_sac \
  --env libero \
  --prefix dsrl_pi0_libero \
  --wandb_project DSRL_pi0_Libero \
  --logdir "$LOGDIR" \
  --batch_size 256 \
  --discount 0.999 \
  --seed 0 \
  --max_steps 500000 \
  --eval_interval 10000 \
  --log_interval 500 \
  --eval_episodes 10 \
  --multi_grad_step 20 \
  --start_online_updates 500 \
  --resize_image 64 \
  --action_magnitude 1.0 \
  --query_freq 20 \
  --hidden_dims 128 \
  "$@"
