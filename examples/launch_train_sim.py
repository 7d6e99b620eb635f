"""Launch DSRL training in simulation (the embedded demo, LIBERO or Aloha).

    python examples/launch_train_sim.py --env demo
    python examples/launch_train_sim.py --env libero --seed 0 --max_steps 500000 ...
    python examples/launch_train_sim.py --env libero --config.agent.num_qs=2 --config.env.num_envs=4
    python examples/launch_train_sim.py --resume runs/dsrl_pi0_libero_20250101_120000_s0
    python examples/launch_train_sim.py --eval_only runs/dsrl_demo_20250101_120000_s0 \
        --checkpoint_step 1000 --eval_episodes 50 --eval_seeds 0,1,2   # evaluate, no training
    python examples/launch_train_sim.py --eval_only --base_policy_only --env libero

The preset `dsrl/presets/<env>.py` gives every value; the reference's flag names
(`--batch_size --max_steps --multi_grad_step --query_freq --action_magnitude --resize_image
--hidden_dims --num_qs --target_entropy ...`, the table `dsrl.training.flags.FLAGS`) override it,
and `--config.<path>=<value>` overrides any value of the run config (`dsrl.training.config.RunConfig`:
sections env, base_policy, steering, agent, execution, loop, replay, log). The final config is
written to `<run_dir>/config.json`; `--resume <run_dir>` reloads it and continues from the latest
checkpoint (counters, replay buffer, agent and RNG streams), applying only values given again.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dsrl first

if __name__ == "__main__":  # may re-execute itself once, before the heavy imports
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()

from dsrl import presets  # noqa: E402
from dsrl.training import cli, failures  # noqa: E402
from dsrl.training.flags import FLAGS  # noqa: E402

SIM_PRESETS = sorted(name for name, module in presets.PRESETS.items() if module != "real")


def build_parser():
    parser = cli.make_parser(__doc__.split("\n\n")[0], FLAGS)
    parser.add_argument("--env", choices=SIM_PRESETS, default=None, help="the preset (demo)")
    return parser


def parse_config(argv: list[str] | None = None):
    """(RunConfig, parsed flags) of a command line, without building anything."""
    return cli.parse_args(build_parser(), argv, preset="demo")


def demo_summary(result, run_dir: Path) -> str:
    """Base vs steered success table (and the success plot written next to it)."""
    from dsrl.training.plots import plot_success

    first, last = result.evaluations[0], result.evaluations[-1]
    rows = [
        ("base policy, i.i.d. noise", first.get("evaluation_base_iid/success_rate")),
        ("base policy, warm-up noise family", first.get("evaluation_base_warmup/success_rate")),
        ("DSRL, deterministic (actor mode)", last.get("evaluation_mode/success_rate")),
        ("DSRL, sampled latents", last.get("evaluation/success_rate")),
    ]
    lines = [f"{'policy':<36} success", "-" * 44]
    lines += [f"{name:<36} {value:.2f}" for name, value in rows if value is not None]
    png = plot_success(run_dir, run_dir / "success_vs_env_steps.png")
    lines += [
        f"after {int(last['env_steps'])} env steps, {int(last['step'])} gradient steps, "
        f"{result.time['time/total_s']:.0f} s",
        f"plot: {png}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    run, args = cli.start(build_parser(), argv, preset="demo")
    if args.eval_only:  # evaluated already; `run` is the EvalOnlyResult
        return 0
    start = time.perf_counter()
    # A full disk or a diverged run ends in one line (the traceback goes to the run dir).
    with run, failures.one_line_failures(run.run_dir, prog=Path(__file__).name):
        result = run.train()
    print(f"[dsrl] done in {time.perf_counter() - start:.0f} s; metrics: {run.run_dir}")
    if result.evaluations:
        print(demo_summary(result, run.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
