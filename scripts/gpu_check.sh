#!/usr/bin/env bash
# The prepared GPU check (issues 14, 22): scripts/gpu_check.py prints ONE JSON line: full-size
# random Pi0 in bfloat16 (batch 1 latency, 16 noises on one prefix vs one, batch 8, peak GPU
# memory), the LIBERO-preset learner's updates/s on the scan path, and a short training loop with
# 8 env workers of the demo_pi0 env (env steps/s, time split).
#
#   bash scripts/gpu_check.sh --bare --out DIR [gpu_check.py args]
#       The lent GPU machine (docs/gpu.md): no network, its own python3 with CUDA jax. Installs
#       only the wheels in .whl/ (made here by scripts/gpu_wheels.sh, carried along) into a
#       temporary folder with `pip --no-index --no-deps --target`, puts it and this checkout on
#       PYTHONPATH, runs every section under a 420 s deadline (--deadline_s), and leaves
#       DIR/gpu_check.json (the line), DIR/gpu_check.log (everything printed, section logs
#       appended) and DIR/sections/ (each section's stdout/stderr and the loop's metrics).
#   bash scripts/gpu_check.sh [--out DIR] [gpu_check.py args]
#       A GPU box with network: installs the CUDA 12 build of the pinned jax into .venv
#       (scripts/setup_env.sh with DSRL_CUDA=12; idempotent) first. With CUDA jax already in the
#       active environment, DSRL_SKIP_SETUP=1 skips that.
# Other arguments go to gpu_check.py, e.g. `--section pi0 --deadline_s 200` or `--small` (CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bare=0
out=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bare) bare=1 ;;
    --out)
      [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }
      out="$2"
      shift
      ;;
    --out=*) out="${1#--out=}" ;;
    *) args+=("$1") ;;
  esac
  shift
done
if [ "$bare" = 1 ] && [ -z "$out" ]; then
  echo "gpu_check.sh: --bare needs --out DIR (e.g. --out \$OUT): the JSON and log go there" >&2
  exit 2
fi

# Pi0, the learner and the env workers share one GPU: no process may grab it all up front.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"

if [ "$bare" = 1 ]; then
  shopt -s nullglob
  wheel_dir="${DSRL_WHEELS:-$ROOT/.whl}"
  wheels=("$wheel_dir"/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_check.sh --bare: no wheels in $wheel_dir; run 'bash scripts/gpu_wheels.sh' where" \
      "the package index is reachable and carry .whl along (device tool: carry [\".whl\"])" >&2
    exit 2
  fi
  PY="$(command -v python3)"
  site="$(mktemp -d "${TMPDIR:-/tmp}/dsrl_gpu_site.XXXXXX")"
  trap 'rm -rf "$site"' EXIT
  # Only the carried files: no index, no find-links, no configuration that could name one.
  if ! env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check \
    --target "$site" "${wheels[@]}"; then
    # A python3 without a working pip: these wheels install by unpacking (no scripts, no data).
    echo "gpu_check.sh --bare: pip could not install the wheels; unpacking them instead" >&2
    rm -rf "${site:?}"/*
    for wheel in "${wheels[@]}"; do "$PY" -m zipfile -e "$wheel" "$site"; done
  fi
  export PYTHONPATH="$ROOT:$site${PYTHONPATH:+:$PYTHONPATH}"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
  # The loop compiles the Pi0 and the learner that the sections before it compiled: a shared
  # persistent cache (gone with $site at exit) spares it part of that.
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$site/jax_cache}"
else
  if [ "${DSRL_SKIP_SETUP:-0}" != "1" ]; then
    DSRL_CUDA="${DSRL_CUDA:-12}"
    source scripts/setup_env.sh
  fi
  PY="$(command -v python || command -v python3)"
fi

if [ -z "$out" ]; then
  exec "$PY" scripts/gpu_check.py "${args[@]}"
fi
mkdir -p "$out/sections"
log="$out/gpu_check.log"
{
  echo "# gpu_check.sh $(date -u +%FT%TZ) bare=$bare python=$PY args: ${args[*]:-}"
  if [ "$bare" = 1 ]; then echo "# carried wheels: ${wheels[*]##*/}"; fi
  command -v nvidia-smi > /dev/null && nvidia-smi || echo "# no nvidia-smi"
} > "$log" 2>&1
# The line goes to stdout and the log; gpu_check.py keeps its own --deadline_s, and `timeout`
# is the backstop that keeps the command inside the device tool's 10 minutes.
set +e
timeout --kill-after=20 560 "$PY" scripts/gpu_check.py --output "$out/gpu_check.json" \
  --workdir "$out/sections" "${args[@]}" 2>> "$log" | tee -a "$log"
status=${PIPESTATUS[0]}
set -e
for f in "$out"/sections/*.stdout "$out"/sections/*.stderr; do
  [ -s "$f" ] && { echo "# ---- ${f#"$out"/}"; tail -c 20000 "$f"; } >> "$log"
done
# The loop run's final checkpoint (agent, replay buffer) is not worth bringing back.
rm -rf "$out"/sections/runs/*/checkpoints
exit "$status"
