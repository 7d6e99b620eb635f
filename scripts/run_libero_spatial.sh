#!/usr/bin/env bash
# DSRL over all 10 LIBERO-Spatial tasks in one run with Pi0-LIBERO, RLinf's settings where ours
# has them (GPU box; docs/training.md, "Training over a whole LIBERO suite"). Extra arguments are
# passed to the launcher and override these, e.g.
#   bash scripts/run_libero_spatial.sh --seed 1 --config.env.kwargs.tasks=[0,1,2]
# Expects an installed environment (bash scripts/setup_env.sh or `source .venv/bin/activate`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sim_env.sh"
LOGDIR="${LOGDIR:-./logs/DSRL_pi0_Libero_Spatial}"

python examples/launch_train_sim.py \
  --env libero_spatial \
  --logdir "$LOGDIR" \
  --num_envs 16 \
  --config.env.kwargs.task_sampling=per_episode \
  --config.env.kwargs.max_episode_steps=240 \
  --query_freq 5 \
  --config.base_policy.num_steps=4 \
  --batch_size 512 \
  --train_actor_steps 10 \
  --use_step_penalty 1 \
  "$@"
