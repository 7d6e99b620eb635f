#!/usr/bin/env bash
# Check out the optional upstream LIBERO source (LIBERO/, a git submodule pinned to
# Lifelong-Robot-Learning/LIBERO 8f1084e3, the base of the DSRL reference's LIBERO fork) and
# compare the task files dsrl runs on with it. Needs network; nothing in dsrl needs LIBERO/.
#   bash scripts/fetch_libero.sh            # task files only (sparse: BDDL + initial states)
#   FULL=1 bash scripts/fetch_libero.sh     # the whole source tree (assets included, ~1 GB)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PIN="$(git ls-tree HEAD LIBERO | awk '{print $3}')"
URL="$(git config -f .gitmodules submodule.LIBERO.url)"
if [[ "${FULL:-0}" == "1" ]]; then
  git submodule update --init LIBERO
else
  # A partial clone of only the task files: a few MB instead of the assets.
  rm -rf LIBERO && mkdir LIBERO
  git -C LIBERO init -q
  git -C LIBERO remote add origin "$URL"
  git -C LIBERO sparse-checkout set libero/libero/bddl_files libero/libero/init_files
  git -C LIBERO fetch -q --depth 1 --filter=blob:none origin "$PIN"
  git -C LIBERO checkout -q FETCH_HEAD
fi
echo "LIBERO/ at $(git -C LIBERO rev-parse HEAD) (pinned: $PIN)"
python scripts/check_libero_files.py
