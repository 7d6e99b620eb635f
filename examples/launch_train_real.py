"""Launch DSRL on a real Franka with DROID, Pi0-DROID served from a GPU box.

    # on the GPU box
    python scripts/serve_policy.py --policy pi0 --robot droid --host 0.0.0.0 \
        --pi0_checkpoint gs://openpi-assets/checkpoints/pi0_droid
    # on the robot computer (see scripts/run_real.sh and docs/real_robot.md)
    python examples/launch_train_real.py --pi0_remote gpu-box:8000 \
        --left_camera_id 2455... --right_camera_id 2662... --wrist_camera_id 1383...
    python examples/launch_train_real.py --resume runs/dsrl_pi0_real_20250101_120000_s0
    python examples/launch_train_real.py --robot sim --pi0_remote 127.0.0.1:8000  # dry run
    python examples/launch_train_real.py --eval_only runs/dsrl_pi0_real_... --eval_episodes 10

Operator keys: Enter starts an episode after the scene reset, `q` stops it early, `1`/`0` label
success/failure. The whole launcher is `dsrl.training.cli.main_real`; this file only calls
it. The preset is `dsrl/presets/real.py`; the simulation launcher's reference flags
plus the robot's (`dsrl.training.flags.REAL_FLAGS`: cameras, `--instruction`, `--robot`, ...)
override it, and so does `--config.<path>=<value>`; `--env franka_droid` (the reference's
run_real.sh flag) names this preset. The run is built by the same
`dsrl.training.build.build_run` as in simulation (one inline env with the operator keyboard) and
trained by the same loop. `--algorithm dsrl_na` needs a base policy with a pure-JAX sampler,
which a policy server is not: the learner says so before training starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsrl first

if __name__ == "__main__":
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()  # may re-execute itself once, before the heavy imports

    from dsrl.training import cli

    sys.exit(cli.main_real())
