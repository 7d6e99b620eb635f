#!/usr/bin/env bash
# Creates ./.venv and installs the pinned requirements plus this package (editable).
# Idempotent: re-installs only when requirements.txt or setup.py changed. Sourced by test.sh/demo.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DSRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

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
export PATH="$VENV/bin:$PATH"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
