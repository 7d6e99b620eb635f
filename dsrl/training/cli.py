"""The command line of both launchers: `main_sim` (`examples/launch_train_sim.py`) and `main_real`
(`examples/launch_train_real.py`), which are thin files calling these.

`make_parser` takes the reference's flag names (`dsrl.training.flags`) and the eval-only flags;
`start` parses a command line into a RunConfig (`dsrl.training.config_io.load_config`) and builds
the run (`dsrl.training.build.build_run`) or, with `--eval_only`, evaluates
(`dsrl.training.eval_only.run`). `--config.<path>=<value>` sets any value of the RunConfig.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsrl import presets
from dsrl.agents.config import ONE_VALUE_LAYERS
from dsrl.steering import MODES as NOISE_MODES
from dsrl.training import best, eval_only, failures
from dsrl.training.build import build_run
from dsrl.training.config import ALGORITHMS, ENV_MODES, WANDB_MODES, RunConfig
from dsrl.training.config_io import load_config
from dsrl.training.evaluation import (
    ACTOR_MODE,
    ACTOR_SAMPLED,
    BASE_IID,
    BASE_WARMUP,
    headline_metric,
)
from dsrl.training.flags import FLAGS, IGNORED_FLAGS, LIST_FLAGS, REAL_FLAGS, ConfigError
from dsrl.training.smoke import smoke_overrides

SIM_PRESETS = sorted(name for name, module in presets.PRESETS.items() if module != "real")
REAL_PRESETS = sorted(name for name, module in presets.PRESETS.items() if module == "real")

# The choices argparse offers for a flag, by the RunConfig path it sets.
CHOICES = {
    "steering.noise_mode": NOISE_MODES,
    "agent.algorithm": ALGORITHMS,
    "log.wandb_mode": WANDB_MODES,
    "agent.critic_reduction": ("mean", "min"),
    "env.robot": ("droid", "sim"),
    "env.mode": ENV_MODES,
}


def make_parser(description: str, flags: Mapping[str, str]) -> argparse.ArgumentParser:
    """--resume, the given reference flags (`flags`: name -> RunConfig path), the reference's
    ignored flags and --no_progress; `--config.<path>=<value>` is read from the rest."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Any config value: --config.<path>=<value> (e.g. --config.agent.num_qs=2).",
    )
    parser.add_argument("--resume", default=None, help="a run directory to continue")
    for name, path in flags.items():
        kwargs: dict[str, Any] = {"default": None, "help": f"sets {path}"}
        if name in LIST_FLAGS:
            repeats = ONE_VALUE_LAYERS.get(path.split(".")[-1], 1)
            one = f"one value N means {repeats} layers of N" if repeats > 1 else "or one value"
            kwargs |= {"nargs": "+", "help": f"sets {path}: one value per layer ({one})"}
        elif name in IGNORED_FLAGS:
            kwargs["help"] = (
                f"accepted for the reference's scripts; does nothing: {IGNORED_FLAGS[name]}"
            )
        elif name == "use_prefix_feature":
            kwargs |= {"action": "store_true"}
        elif path in CHOICES:
            kwargs["choices"] = CHOICES[path]
        parser.add_argument(f"--{name}", **kwargs)
    for name in IGNORED_FLAGS:
        if name not in flags:
            parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no_progress", action="store_true", help="hide the tqdm bar")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a CPU-sized run that reaches its first updates in minutes (dsrl/training/smoke.py); "
        "--config.<path>=<value> still overrides it",
    )
    eval_only.add_arguments(parser)  # --eval_only, --checkpoint_step, --eval_seeds, ...
    return parser


def config_overrides(extra: Sequence[str]) -> list[tuple[str, str]]:
    """['--config.a.b=1', '--config.c', '2'] -> [('a.b', '1'), ('c', '2')]."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unrecognised argument {arg!r} (see --help)")
        body = arg[len("--config.") :]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(extra):
            key, value = body, extra[i + 1]
            i += 1
        else:
            raise ConfigError(f"{arg} needs a value: --config.{body}=<value>")
        out.append((key, value))
        i += 1
    return out


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, preset: str | None
) -> tuple[RunConfig, argparse.Namespace]:
    """(RunConfig, parsed flags) of a command line. The preset is `--env` where the parser has
    it, else `preset`; a resumed run keeps its own (a different `--env` is an error)."""
    args, extra = parser.parse_known_args(argv)
    eval_only.check_arguments(args)  # `--eval_only RUN_DIR` reads RUN_DIR's config
    flags = {name: getattr(args, name) for name in {**FLAGS, **REAL_FLAGS} if hasattr(args, name)}
    preset = getattr(args, "env", None) or (None if args.resume else preset)
    overrides = config_overrides(extra)
    if getattr(args, "smoke", False) and not args.resume:  # a resumed run keeps its config
        overrides = smoke_overrides(preset or "demo", flags) + overrides
    config = load_config(preset, resume=args.resume, flags=flags, overrides=overrides)
    progress = dataclasses.replace(config.loop, progress=not args.no_progress)
    return dataclasses.replace(config, loop=progress), args


def notices(config: RunConfig, args: argparse.Namespace) -> list[str]:
    """One line per flag that was given but changes nothing in this run (printed once at
    start-up, so a reference script's flag never looks as if it had an effect it has not)."""
    out = []
    for name, why in IGNORED_FLAGS.items():
        if getattr(args, name, None) is not None:
            out.append(f"--{name} is accepted for the reference's scripts and does nothing: {why}")
    learner = dict(config.agent.learner)
    pooling = learner.get("encoder_pooling", "flatten")
    if getattr(args, "softmax_temperature", None) is not None and pooling != "spatial_softmax":
        out.append(
            f"--softmax_temperature does nothing with encoder_pooling={pooling!r} (the reference's "
            "'small' encoder ignored it too); pass --use_spatial_softmax 1 to use it"
        )
    if getattr(args, "eval_interval", None) is not None and config.loop.eval_episodes == 0:
        out.append(
            "--eval_interval does nothing: control evaluation is off (eval_episodes 0; on a real "
            "robot each evaluation episode costs robot time); pass --eval_episodes N to evaluate"
        )
    return out


def start(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    preset: str | None,
    log: Any = print,
    **kwargs: Any,
) -> tuple[Any, argparse.Namespace]:
    """Parse the command line and build the run; a bad value ends the process with one error
    line naming it (exit status 2, argparse's), before any work. Flags that do nothing in this
    run are named once (`notices`). With `--eval_only` nothing is trained: the evaluation runs
    here and its `dsrl.training.eval_only.EvalOnlyResult` is returned instead of a Run."""
    try:
        config, args = parse_args(parser, argv, preset)
        for line in notices(config, args):
            log(f"[dsrl] note: {line}")
        if args.eval_only:
            return eval_only.run(config, args, log=log, **kwargs), args
        # A locked run directory or checkpoints that all fail to restore: one line, status 1.
        with failures.one_line_failures(prog=parser.prog):
            return build_run(config, args.resume, log=log, **kwargs), args
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


# ------------------------------------------------------------------------ the two launchers
def sim_parser() -> argparse.ArgumentParser:
    """The simulation launcher's flags: the reference's (`FLAGS`) and `--env <preset>`."""
    parser = make_parser(
        "Launch DSRL training in simulation (the embedded demo, LIBERO or Aloha).", FLAGS
    )
    parser.add_argument("--env", choices=SIM_PRESETS, default=None, help="the preset (demo)")
    return parser


def real_parser() -> argparse.ArgumentParser:
    """The real-robot launcher's flags: the simulation ones plus the robot's (`REAL_FLAGS`)."""
    parser = make_parser(
        "Launch DSRL on a real Franka with DROID, Pi0-DROID served from a GPU box.",
        {**FLAGS, **REAL_FLAGS},
    )
    # The reference's run_real.sh passes --env franka_droid; every name is the real preset.
    parser.add_argument("--env", choices=REAL_PRESETS, default=None, help="the preset (real)")
    return parser


def parse_sim(argv: Sequence[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """(RunConfig, parsed flags) of a simulation command line, without building anything."""
    return parse_args(sim_parser(), argv, preset="demo")


def parse_real(argv: Sequence[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """(RunConfig, parsed flags) of a real-robot command line, without building anything."""
    return parse_args(real_parser(), argv, preset="real")


def demo_summary(result: Any, run_dir: Path, metric: str = "success_rate") -> str:
    """Base vs steered table of `metric` ("success_rate", or "avg_return" for an env without a
    success, e.g. Gym locomotion), and the plot of that metric written next to it."""
    from dsrl.training.plots import plot_success

    first, last = result.evaluations[0], result.evaluations[-1]
    rows = [  # the base policy before training, the actor after it
        (s, (first if s.stream is not None else last).get(s.metric(metric)))
        for s in (BASE_IID, BASE_WARMUP, ACTOR_MODE, ACTOR_SAMPLED)
    ]
    returns = metric == "avg_return"
    header, fmt = ("avg return", ".1f") if returns else ("success", ".2f")
    lines = [f"{'policy':<36} {header}", "-" * 48]
    lines += [f"{s.label:<36} {value:{fmt}}" for s, value in rows if value is not None]
    name = "return_vs_env_steps.png" if returns else "success_vs_env_steps.png"
    png = plot_success(run_dir, run_dir / name, metric=metric)
    lines += [
        f"after {int(last['env_steps'])} env steps, {int(last['step'])} gradient steps, "
        f"{result.time['time/total_s']:.0f} s",
    ]
    lines += _best_lines(run_dir, fmt)
    lines.append(f"plot: {png}")
    return "\n".join(lines)


def _best_lines(run_dir: Path, fmt: str) -> list[str]:
    """Where the run's best evaluated actor is, and how to score it on seeds it was not chosen
    on (dsrl.training.best); nothing if the run kept none."""
    try:
        record = best.read_record(run_dir)
    except best.BestRecordError as err:
        return [f"best actor: not readable ({err})"]
    if record is None:
        return []
    return [
        f"best evaluated actor (mode): {record['value']:{fmt}} at {record['step']} gradient "
        f"steps, {record['env_steps']} env steps, in {best.best_dir(run_dir)}",
        "  (chosen on these evaluation seeds; score it on new ones: --eval_only "
        f"{run_dir} --best --eval_seeds 1000)",
    ]


def main_sim(argv: Sequence[str] | None = None) -> int:
    """`examples/launch_train_sim.py`: train (or `--eval_only` evaluate) in simulation."""
    run, args = start(sim_parser(), argv, preset="demo")
    if args.eval_only:  # evaluated already; `run` is the EvalOnlyResult
        return 0
    begin = time.perf_counter()
    # A full disk or a diverged run ends in one line (the traceback goes to the run dir).
    with run, failures.one_line_failures(run.run_dir, prog="launch_train_sim.py"):
        result = run.train()
    print(f"[dsrl] done in {time.perf_counter() - begin:.0f} s; metrics: {run.run_dir}")
    if result.evaluations:
        print(demo_summary(result, run.run_dir, headline_metric(run.vec_env.spec)))
    return 0


def main_real(argv: Sequence[str] | None = None, *, keyboard: Any = None, robot: Any = None) -> int:
    """`examples/launch_train_real.py`: train on the robot. `keyboard` defaults to the terminal,
    `robot` to DROID's RobotEnv (or the simulated one with `--robot sim`); tests pass scripted
    ones."""
    run, args = start(real_parser(), argv, preset="real", keyboard=keyboard, robot=robot)
    if args.eval_only:  # evaluated already; `run` is the EvalOnlyResult
        return 0
    with run, failures.one_line_failures(run.run_dir, prog="launch_train_real.py"):
        result = run.train()
    print(
        f"[dsrl] done: {result.state.num_online_trajs} trajectories, "
        f"{result.state.grad_steps} gradient steps",
        flush=True,
    )
    return 0
