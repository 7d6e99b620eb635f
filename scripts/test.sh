#!/usr/bin/env bash
# The test command: installs what it needs, checks style (ruff), runs the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
ruff check .
ruff format --check .
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
python -m pytest -ra --durations=30 "$@"
