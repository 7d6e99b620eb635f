#!/usr/bin/env bash
# Downloads, here (where the package index is reachable), the wheels that `scripts/gpu_check.sh
# --bare` installs on the lent GPU machine, which has no network. That machine's python3 is
# CPython 3.12 with CUDA jax 0.11.x, flax, optax, orbax-checkpoint, chex, numpy, msgpack,
# matplotlib, opencv, tqdm, pyyaml and pytest preinstalled; what the check's code paths import
# beyond those travels in .whl/ (ignored by git; the device tool carries it with `carry: [".whl"]`).
#
#   bash scripts/gpu_wheels.sh            # -> .whl/*.whl, prints each wheel and the total MiB
#
# The versions are the pins of requirements.txt, so that the GPU run imports what CI tests.
# Not carried: distrax (dsrl imports none of it), zstandard (only the real Pi0 checkpoint loader
# needs it; the check uses random weights), mujoco and the simulators (the loop section runs the
# demo task, see dsrl/envs/demo_pi0.py), and jax/flax/optax/orbax/chex (the machine's own work
# with dsrl: scripts/rehearse_gpu_check.sh checks this against jax 0.11.2 here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Import name in the check -> distribution; absl-py and PyYAML (ml-collections' dependencies)
# come with the machine's chex and pyyaml.
PACKAGES=(ml-collections sentencepiece websockets)
MAX_MIB="${DSRL_WHEELS_MAX_MIB:-40}"
PIP="${PIP:-pip}"
command -v "$PIP" > /dev/null || PIP="python3 -m pip"

specs=()
for name in "${PACKAGES[@]}"; do
  pin="$(grep -iE "^${name}==" requirements.txt | head -n 1 || true)"
  if [ -z "$pin" ]; then
    echo "gpu_wheels.sh: requirements.txt has no pin for ${name}; pin it there first" >&2
    exit 2
  fi
  specs+=("$pin")
done

rm -rf .whl
mkdir -p .whl
# --no-deps with an explicit list: nothing the machine already has comes along by accident.
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any \
  --dest .whl "${specs[@]}"

ls -1 .whl
bytes="$(du -cb .whl/*.whl | tail -n 1 | cut -f 1)"
mib="$(python3 -c "print(f'{$bytes / 2**20:.2f}')")"
echo "total: ${mib} MiB in $(ls .whl/*.whl | wc -l) wheels (target <= ${MAX_MIB} MiB)"
if python3 -c "import sys; sys.exit(0 if $bytes <= $MAX_MIB * 2**20 else 1)"; then
  exit 0
fi
echo "gpu_wheels.sh: .whl/ is over ${MAX_MIB} MiB; the device tool carries at most 64 MiB" >&2
exit 1
