#!/usr/bin/env bash
# Creates ./.venv and installs the pinned requirements plus this package (editable).
# Idempotent: re-installs only when requirements.txt or setup.py changed. Sourced by test.sh/demo.sh.
#
# GPU: `DSRL_CUDA=12 bash scripts/setup_env.sh` (or `bash scripts/setup_env.sh --cuda`) also installs
# the CUDA 12 build of the same jax (requirements-cuda12.txt) into the same .venv, with its own
# stamp; without the switch nothing CUDA-related is installed, checked or removed. Offline, point
# pip at a folder of wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels DSRL_CUDA=12 bash ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DSRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
DSRL_CUDA="${DSRL_CUDA:-}"
# `--cuda` only when run as a command: a sourcing script's own arguments are not ours.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  for arg in "$@"; do
    case "$arg" in
      --cuda) DSRL_CUDA=12 ;;
      *) echo "[setup] unknown argument $arg (known: --cuda)" >&2; exit 2 ;;
    esac
  done
fi
case "$DSRL_CUDA" in
  "" | 0 | cpu) DSRL_CUDA="" ;;
  12) ;;
  *) echo "[setup] DSRL_CUDA=$DSRL_CUDA is not supported; use DSRL_CUDA=12 (CUDA 12 wheels) or leave it unset (CPU)" >&2; exit 2 ;;
esac

# Headless MuJoCo rendering (EGL, software llvmpipe) needs Mesa's EGL. Install it when missing and
# we are root; otherwise say what to install.
if ! ldconfig -p 2>/dev/null | grep -q "libEGL.so.1"; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Mesa EGL for headless rendering" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6) >&2
  else
    echo "[setup] WARNING: libEGL not found; rendering envs need: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.dsrl-installed"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-nodeps.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing requirements into $VENV (first run: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q -U pip >&2
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt" >&2
  "$VENV/bin/python" -m pip install -q --no-deps -r "$ROOT/requirements-nodeps.txt" >&2
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >&2
  echo "$WANT" > "$STAMP"
fi
if [ -n "$DSRL_CUDA" ]; then
  CUDA_REQS="$ROOT/requirements-cuda$DSRL_CUDA.txt"
  # The CUDA plugin only loads with the jaxlib of its own version: refuse a mismatched pin.
  JAX_PIN="$(sed -n 's/^jax==\([^ #]*\).*/\1/p' "$ROOT/requirements.txt")"
  for pkg in "jax-cuda$DSRL_CUDA-plugin" "jax-cuda$DSRL_CUDA-pjrt"; do
    PIN="$(sed -n "s/^$pkg\(\[[^]]*\]\)\?==\([^ #]*\).*/\2/p" "$CUDA_REQS")"
    if [ "$PIN" != "$JAX_PIN" ]; then
      echo "[setup] $CUDA_REQS pins $pkg==${PIN:-<none>} but requirements.txt pins jax==$JAX_PIN; set both to the same version" >&2
      exit 1
    fi
  done
  # Its own stamp, over the CPU set's too: a CPU reinstall (say a new jax) redoes the CUDA step.
  CUDA_STAMP="$VENV/.dsrl-installed-cuda$DSRL_CUDA"
  CUDA_WANT="$( (echo "$WANT"; cat "$CUDA_REQS") | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$CUDA_STAMP" ] || [ "$(cat "$CUDA_STAMP")" != "$CUDA_WANT" ]; then
    echo "[setup] installing the CUDA $DSRL_CUDA build of jax $JAX_PIN into $VENV (about 3 GB)" >&2
    "$VENV/bin/python" -m pip install -q -r "$CUDA_REQS" >&2
    echo "$CUDA_WANT" > "$CUDA_STAMP"
  fi
fi
export PATH="$VENV/bin:$PATH"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
