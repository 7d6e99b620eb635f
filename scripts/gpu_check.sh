#!/usr/bin/env bash
# The prepared GPU check (issue 14), one command on a GPU box: installs the CUDA 12 build of the
# pinned jax into .venv (scripts/setup_env.sh with DSRL_CUDA=12; idempotent), then runs
# scripts/gpu_check.py, which prints ONE JSON line: full-size random Pi0 in bfloat16 (latency at
# batch 1 and 8, 16 noises on one prefix vs one, peak GPU memory), the LIBERO-preset learner's
# updates/s on the scan path, and a short LIBERO loop with 4 env workers (env steps/s, time split).
# Its own deadline is 480 s (`--deadline_s`); the first install comes on top. Extra arguments go
# to gpu_check.py, e.g.
#   bash scripts/gpu_check.sh --section pi0 --output gpu_check.json
# Offline, given the wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels bash scripts/gpu_check.sh
# With an environment already installed (another venv, an image with CUDA jax): DSRL_SKIP_SETUP=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${DSRL_SKIP_SETUP:-0}" != "1" ]; then
  DSRL_CUDA="${DSRL_CUDA:-12}"
  source scripts/setup_env.sh
fi
# Pi0, the learner and the env workers share one GPU: no process may grab it all up front.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
PY="$(command -v python || command -v python3)"
exec "$PY" scripts/gpu_check.py "$@"
