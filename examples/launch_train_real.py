"""Launch DSRL on a real Franka with DROID, Pi0-DROID served from a GPU box.

    # on the GPU box
    python scripts/serve_policy.py --policy pi0 --robot droid --host 0.0.0.0 \
        --pi0_checkpoint gs://openpi-assets/checkpoints/pi0_droid
    # on the robot computer (see scripts/run_real.sh and docs/real_robot.md)
    python examples/launch_train_real.py --pi0_remote gpu-box:8000 \
        --left_camera_id 2455... --right_camera_id 2662... --wrist_camera_id 1383...
    python examples/launch_train_real.py --resume runs/dsrl_pi0_real_20250101_120000_s0
    python examples/launch_train_real.py --robot sim --pi0_remote 127.0.0.1:8000  # dry run

Operator keys: Enter starts an episode after the scene reset, `q` stops it early, `1`/`0` label
success/failure. Flags mirror the simulation launcher's (reference names) on top of the preset
`examples/configs/real.py`; any preset key: `--config.<key>=<value>`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

# Before the heavy imports: the entry point may re-execute itself once (dsrl.utils.hugepages).
if __name__ == "__main__":
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()

import ml_collections  # noqa: E402


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


train_real = _load("dsrl_train_real", _HERE / "train_real.py")
sim = train_real._sim_launcher()

# Real-only flags -> config keys.
REAL_FLAGS = {
    "left_camera_id": "env_kwargs.left_camera_id",
    "right_camera_id": "env_kwargs.right_camera_id",
    "wrist_camera_id": "env_kwargs.wrist_camera_id",
    "instruction": "env_kwargs.prompt",
    "max_episode_steps": "env_kwargs.max_episode_steps",
    "robot": "robot",
}
# The simulation flags that make sense here (same names and parsers).
SHARED_FLAGS = (
    "seed batch_size max_steps multi_grad_step update_block resize_image action_magnitude "
    "query_freq log_interval checkpoint_interval discount noise_mode algorithm prefix "
    "wandb_project wandb_mode logdir pi0_checkpoint pi0_variant pi0_remote hidden_dims num_qs "
    "target_entropy actor_lr critic_lr temp_lr tau critic_reduction encoder_type"
).split()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any preset key: --config.<key>=<value> (e.g. --config.agent.num_qs=2).",
    )
    parser.add_argument("--resume", default=None, help="a run directory to continue")
    for name in SHARED_FLAGS:
        parser.add_argument(f"--{name}", default=None, **sim.FLAGS[name][1])
    parser.add_argument("--num_initial_traj_collect", type=sim._int, default=None)
    parser.add_argument("--left_camera_id", default=None)
    parser.add_argument("--right_camera_id", default=None)
    parser.add_argument("--wrist_camera_id", default=None)
    parser.add_argument("--instruction", default=None, help="the task prompt for Pi0")
    parser.add_argument("--max_episode_steps", type=sim._positive_int, default=None)
    parser.add_argument("--robot", choices=("droid", "sim"), default=None)
    parser.add_argument("--use_prefix_feature", action="store_true", default=None)
    for name in sim.IGNORED_FLAGS:
        parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no_progress", action="store_true")
    return parser


def get_preset() -> ml_collections.ConfigDict:
    return _load("dsrl_presets.real", _HERE / "configs" / "real.py").get_config()


def parse_config(argv: list[str] | None = None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = sim._config_overrides(extra)
    if args.resume:
        saved = Path(args.resume) / "config.json"
        if not saved.is_file():
            raise ValueError(f"--resume {args.resume}: no config.json there (not a run directory)")
        config = ml_collections.ConfigDict(json.loads(saved.read_text()))
    else:
        config = get_preset()
    for name in SHARED_FLAGS:
        value = getattr(args, name)
        if value is not None:
            if name == "hidden_dims":
                value = tuple(value) * 3 if len(value) == 1 else tuple(value)
            sim.set_key(config, sim.FLAGS[name][0], value, parse=False)
    for name, path in REAL_FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            sim.set_key(config, path, value, parse=False)
    if args.num_initial_traj_collect is not None:
        config.start_online_trajs = int(args.num_initial_traj_collect)
    if args.use_prefix_feature:
        config.use_prefix_feature = True
    for key, value in overrides:
        sim.set_key(config, key, value, parse=True)
    sim.validate(config)
    return config, args


def main(argv: list[str] | None = None, *, keyboard=None, robot=None) -> int:
    parser = build_parser()
    try:
        config, args = parse_config(argv)
    except ValueError as e:
        parser.error(str(e))
    result = train_real.run(
        config,
        resume_dir=args.resume,
        keyboard=keyboard,
        robot=robot,
        progress=not args.no_progress,
    )
    print(
        f"[dsrl] done: {result.state.num_online_trajs} trajectories, "
        f"{result.state.grad_steps} gradient steps",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
