#!/usr/bin/env bash
# A rehearsal, on this CPU, of the offline GPU check (docs/gpu.md): a fresh CPython 3.12 venv with
# only what the lent GPU machine has preinstalled (CPU jax 0.11.2 standing in for its CUDA build,
# and the flax/optax/orbax-checkpoint/chex/numpy 2.5 that resolve with it, msgpack, matplotlib,
# opencv-python-headless, tqdm, pyyaml, pytest; no torch: nothing here imports it), then
#   bash scripts/gpu_check.sh --bare --small --out DIR
# with that venv's python3 first on PATH and, where `unshare` can make one, inside a network
# namespace with no network: the install from .whl/ and every section must do without.
#
#   bash scripts/rehearse_gpu_check.sh               # prints the JSON line; exit 0 = no error
#   DSRL_REHEARSAL_DIR=/tmp/r bash scripts/rehearse_gpu_check.sh --section pi0
#
# Only the venv's own install reaches the package index. Takes a few minutes on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${DSRL_REHEARSAL_DIR:-${TMPDIR:-/tmp}/dsrl_gpu_rehearsal}"
# The GPU machine's preinstalled stack: jax 0.11.2 and the newest releases that go with it.
MACHINE_PACKAGES=(
  jax==0.11.2 jaxlib==0.11.2 flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 chex==0.1.92
  numpy==2.5.5 msgpack matplotlib opencv-python-headless tqdm pyyaml pytest
)
if [ -n "${DSRL_REHEARSAL_PACKAGES:-}" ]; then
  read -r -a MACHINE_PACKAGES <<< "$DSRL_REHEARSAL_PACKAGES"
fi

PY312="$(command -v python3.12 || true)"
if [ -z "$PY312" ] || ! "$PY312" -c "" 2> /dev/null; then
  PY312="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2> /dev/null | tail -n 1)"
fi
if [ -z "$PY312" ]; then
  echo "rehearse_gpu_check.sh: no python3.12 found (the GPU machine runs CPython 3.12)" >&2
  exit 2
fi
if ! ls .whl/*.whl > /dev/null 2>&1; then
  bash scripts/gpu_wheels.sh
fi

rm -rf "$DIR"
mkdir -p "$DIR"
echo "# rehearsal: fresh venv $DIR/venv ($("$PY312" --version))" >&2
"$PY312" -m venv "$DIR/venv"
"$DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${MACHINE_PACKAGES[@]}" \
  2> >(grep -v "^WARNING: Location" >&2)
"$DIR/venv/bin/python" -m pip list --format=freeze 2> /dev/null \
  | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|chex|numpy)==' | tr '\n' ' ' >&2
echo >&2

# The machine: its python3 first on PATH, nothing of this checkout's .venv, no network.
run=(env -u PYTHONPATH -u VIRTUAL_ENV "PATH=$DIR/venv/bin:/usr/bin:/bin" JAX_PLATFORMS=cpu
  bash scripts/gpu_check.sh --bare --small --out "$DIR/out" "$@")
if unshare -n true 2> /dev/null; then
  echo "# no network: the check runs in a new network namespace (loopback only)" >&2
  quoted="$(printf '%q ' "${run[@]}")"
  exec unshare -n bash -c "ip link set lo up 2> /dev/null || true; exec $quoted"
fi
echo "# unshare -n is not permitted here: the check runs with this machine's network" >&2
exec "${run[@]}"
