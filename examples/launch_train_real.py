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
success/failure. The preset is `dsrl/presets/real.py`; the simulation launcher's reference flags
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

if __name__ == "__main__":  # may re-execute itself once, before the heavy imports
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()

from dsrl import presets  # noqa: E402
from dsrl.training import cli, failures  # noqa: E402
from dsrl.training.flags import FLAGS, REAL_FLAGS  # noqa: E402

REAL_PRESETS = sorted(name for name, module in presets.PRESETS.items() if module == "real")


def build_parser():
    parser = cli.make_parser(__doc__.split("\n\n")[0], {**FLAGS, **REAL_FLAGS})
    # The reference's run_real.sh passes --env franka_droid; every name is the real preset.
    parser.add_argument("--env", choices=REAL_PRESETS, default=None, help="the preset (real)")
    return parser


def parse_config(argv: list[str] | None = None):
    """(RunConfig, parsed flags) of a command line, without building anything."""
    return cli.parse_args(build_parser(), argv, preset="real")


def main(argv: list[str] | None = None, *, keyboard=None, robot=None) -> int:
    """`keyboard` defaults to the terminal, `robot` to DROID's RobotEnv (or the simulated one
    with `--robot sim`); tests pass scripted ones."""
    run, args = cli.start(build_parser(), argv, preset="real", keyboard=keyboard, robot=robot)
    if args.eval_only:  # evaluated already; `run` is the EvalOnlyResult
        return 0
    # A full disk or a diverged run ends in one line (the traceback goes to the run dir).
    with run, failures.one_line_failures(run.run_dir, prog=Path(__file__).name):
        result = run.train()
    print(
        f"[dsrl] done: {result.state.num_online_trajs} trajectories, "
        f"{result.state.grad_steps} gradient steps",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
