#!/usr/bin/env bash
# The main job: installs what it needs, then runs the embedded CPU demo (DSRL steering a small
# pretrained flow policy on a pixel task) and prints base vs steered success. Extra arguments go
# to the launcher, e.g. `bash scripts/demo.sh --seed 1`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
python examples/launch_train_sim.py --env demo "$@"
