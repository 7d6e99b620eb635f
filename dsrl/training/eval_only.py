"""Evaluation-only runs: a trained agent (or the base policy alone) on fixed seeds, no training.

    python examples/launch_train_sim.py --eval_only runs/dsrl_demo_20250101_120000_s0
    python examples/launch_train_sim.py --eval_only <run_dir> --checkpoint_step 1000 \
        --eval_episodes 50 --num_envs 8 --eval_seeds 0,1,2,3
    python examples/launch_train_sim.py --eval_only --base_policy_only --env libero

From a run directory: its config.json (flags given again override it, e.g. `--eval_episodes`,
`--num_envs`), the agent of the newest intact checkpoint or of `--checkpoint_step`, read without
changing anything in the run directory (no checkpoint clean-up, no metrics appended). Everything
the evaluation writes goes to a new `<run_dir>/eval_<step>_<YYYYmmdd_HHMMSS>/`:

    summary.json  the run, checkpoint step, seeds and, per noise source, the metrics (success
                  rate, return, length, ...) and every episode's seed, success, return, length
    table.txt     the table printed at the end
    videos/       the first `num_video_episodes` episodes of the actor (sampled latents)
    config.json   the config the evaluation ran with

The noise sources are the training loop's (dsrl.training.evaluation): the actor's mode
(deterministic), its sampled latents, and the base policy with i.i.d. noise and with the warm-up
family, each on the same seeds and with the loop's noise generators. The default seeds are the
run's own evaluation seeds (`eval_seeds(seed, eval_episodes)`), so the deterministic success of
the checkpoint an evaluation was logged at is reproduced exactly. `--eval_seeds 0,1,2` gives the
env reset seeds themselves (one episode each); a single number is a base seed in place of the
run's `--seed`.

`--best` evaluates the run's best evaluated actor (`<run_dir>/best/`, dsrl.training.best) in
place of a checkpoint, into `eval_best_<step>_<time>/`. It was chosen on the run's own seeds, so
give it others (`--eval_seeds 1000`) for a score that is not biased upwards.

`--base_policy_only` evaluates the base policy alone (no agent, no checkpoint needed): with a run
directory on its config, else on a preset (`--env`), writing `<logdir>/<prefix>_eval_base_<time>/`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsrl.training import best, build, loop
from dsrl.training.evaluation import (
    ACTOR_MODE,
    ACTOR_SAMPLED,
    BASE_IID,
    BASE_WARMUP,
    EVAL_SOURCES,
    EvalResult,
    critic_calibration,
    eval_seeds,
    evaluate,
    iid_episode_noise,
    mode_episode_noise,
    sampled_episode_noise,
    warmup_episode_noise,
)
from dsrl.training.progress import Progress
from dsrl.utils.checkpoints import RunCheckpointer
from dsrl.utils.logging import RunLogger

SUMMARY_FILE = "summary.json"
TABLE_FILE = "table.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation-only flags (both launchers)."""
    parser.add_argument(
        "--eval_only",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="evaluate, do not train: a run directory (or --resume RUN_DIR), or with "
        "--base_policy_only a preset; writes RUN_DIR/eval_<step>_<time>/",
    )
    parser.add_argument(
        "--checkpoint_step",
        type=int,
        default=None,
        help="with --eval_only: the checkpoint step to evaluate (default: the newest intact)",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="with --eval_only: the run's best evaluated actor (RUN_DIR/best/) instead of a "
        "checkpoint; pass new --eval_seeds, as it was chosen on the run's own",
    )
    parser.add_argument(
        "--eval_seeds",
        default=None,
        help="with --eval_only: env reset seeds '0,1,2' (one episode each), or one base seed "
        "(default: the run's own evaluation seeds)",
    )
    parser.add_argument(
        "--base_policy_only",
        action="store_true",
        help="with --eval_only: evaluate the base policy alone (i.i.d. and warm-up noise)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Eval-only flags without --eval_only, or --eval_only without anything to evaluate, are
    errors naming the fix; `--eval_only RUN_DIR` becomes `args.resume`."""
    eval_only = getattr(args, "eval_only", None)
    given = [
        f"--{name}"
        for name in ("checkpoint_step", "eval_seeds")
        if getattr(args, name, None) is not None
    ]
    for flag in ("base_policy_only", "best"):
        if getattr(args, flag, False):
            given.append(f"--{flag}")
    if not eval_only:
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --eval_only runs; add --eval_only")
        return
    if isinstance(eval_only, str):
        if args.resume and Path(args.resume) != Path(eval_only):
            raise ValueError(
                f"--eval_only {eval_only} and --resume {args.resume} name two runs; pass one"
            )
        args.resume = eval_only
    if not args.resume and not args.base_policy_only:
        raise ValueError(
            "--eval_only needs a run directory (--eval_only RUN_DIR or --resume RUN_DIR), or "
            "--base_policy_only to evaluate the base policy alone on a preset"
        )
    if args.best and (args.base_policy_only or args.checkpoint_step is not None):
        raise ValueError(
            "--best evaluates a run's best actor: pass it without --base_policy_only and "
            "without --checkpoint_step (one agent per evaluation)"
        )
    if args.checkpoint_step is not None and (args.base_policy_only or args.checkpoint_step < 0):
        raise ValueError(
            "--checkpoint_step needs an agent's run directory (not --base_policy_only) and a "
            f"step >= 0, got {args.checkpoint_step}"
        )


def parse_seeds(text: str | None, seed: int, episodes: int) -> list[int]:
    """The env reset seeds of an evaluation: the run's own (`text` None), from a base seed (one
    number) or as listed ('0,1,2')."""
    if text is None:
        return eval_seeds(seed, episodes)
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise ValueError(
            f"--eval_seeds {text!r}: expected non-negative integers, '0,1,2' (reset seeds) or "
            "one base seed"
        )
    if len(values) == 1 and "," not in str(text):
        return eval_seeds(values[0], episodes)
    return values


@dataclasses.dataclass
class EvalOnlyResult:
    out_dir: Path
    summary: dict[str, Any]
    table: str


def _episode_rows(result: EvalResult, seeds: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {
            "seed": int(seed),
            "success": bool(e.success),
            "return": float(e.env_return),
            "length": int(e.length),
            "discarded": bool(e.discarded),
            **({"task_id": e.task_id} if e.task_id is not None else {}),
        }
        for seed, e in zip(seeds, result.episodes, strict=True)
    ]


def _task_lines(summary: dict[str, Any]) -> list[str]:
    """Success per task of a multi-task run (dsrl.envs.libero_suite): one row per task, one column
    per policy, the task's instruction last."""
    tasks = summary.get("tasks") or {}
    if not tasks:
        return []
    sources = [s for s in EVAL_SOURCES if s.key in summary["sources"]]
    lines = ["", "success per task (columns: the policies above, in order)"]
    lines.append(f"{'task':>4} " + " ".join(f"{s.short_label:>7}" for s in sources) + " episodes")
    for task, name in tasks.items():
        cells = []
        for source in sources:
            value = summary["sources"][source.key]["metrics"].get(f"task_{task}/success_rate")
            cells.append(f"{value:>7.2f}" if value is not None else f"{'-':>7}")
        count = summary["sources"][sources[0].key]["metrics"].get(f"task_{task}/episodes", 0)
        lines.append(f"{task:>4} {' '.join(cells)} {int(count):>8}  {name}")
    return lines


def task_names(config: Any, results: dict[str, EvalResult]) -> dict[str, str]:
    """{task id: language instruction} of the tasks the evaluation episodes ran (empty for a
    single-task env)."""
    ids = sorted({e.task_id for r in results.values() for e in r.episodes if e.task_id is not None})
    if not ids:
        return {}
    from dsrl.envs.libero_suite import task_languages

    languages = task_languages(config.env.kwargs.get("suite", "libero_90"))
    return {str(t): languages[t] for t in ids}


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'policy':<36} {'success':>7} {'return':>8} {'length':>7}", "-" * 61]
    for source in EVAL_SOURCES:
        if source.key in summary["sources"]:
            m = summary["sources"][source.key]["metrics"]
            lines.append(
                f"{source.label:<36} {m['success_rate']:>7.2f} {m['avg_return']:>8.2f} "
                f"{m['avg_episode_len']:>7.1f}"
            )
    lines += _task_lines(summary)
    where = f"checkpoint step {summary['checkpoint_step']}"
    if summary.get("best"):
        where = f"the best evaluated actor, step {summary['checkpoint_step']}"
    if summary["checkpoint_step"] is None:
        where = "base policy alone"
    lines.append(
        f"{summary['episodes']} episodes per policy ({where}, {summary['env_steps']} env steps "
        f"trained); seeds: {summary['seeds_from']}"
    )
    return "\n".join(lines)


def run(
    config: Any,
    args: argparse.Namespace,
    *,
    keyboard: Any = None,
    robot: Any = None,
    log: Any = print,
) -> EvalOnlyResult:
    """Evaluate as `args` asks (see the module docstring) and write the eval folder."""
    cfg = config.loop
    run_dir = Path(args.resume) if args.resume else None
    episodes = cfg.eval_episodes
    explicit = args.eval_seeds is not None and "," in str(args.eval_seeds)
    if episodes < 1 and not explicit:
        raise ValueError(
            f"eval_episodes is {episodes} in this config; pass --eval_episodes N (or "
            "--eval_seeds 0,1,2) to evaluate"
        )
    seeds = parse_seeds(args.eval_seeds, cfg.seed, episodes)
    seeds_from = (
        f"the run's evaluation seeds (seed {cfg.seed})"
        if args.eval_seeds is None
        else f"--eval_seeds {args.eval_seeds}"
    )
    with contextlib.ExitStack() as resources:
        base_policy = build.make_base_policy(config)
        if callable(getattr(base_policy, "close", None)):
            resources.callback(base_policy.close)
        steering = build.make_steering(config, base_policy)
        vec_env = build.make_vec_env(config, base_policy, resources, keyboard, robot)
        agent, state, step = None, loop.LoopState(), None
        if not args.base_policy_only:
            agent, state = _restore_agent(config, args, run_dir, vec_env, steering, resources)
            step = state.grad_steps
        out_dir = _out_dir(config, run_dir, step, best=args.best)
        logger = RunLogger(out_dir, config.to_tree(), project="", wandb_mode="disabled")
        resources.callback(logger.close)
        log(f"[dsrl] evaluating {'the base policy' if agent is None else f'step {step}'} of "
            f"{run_dir or config.env.name} on {len(seeds)} seeds -> {out_dir}")  # fmt: skip
        results = _evaluate_sources(vec_env, steering, agent, seeds, cfg)
        _log_results(logger, results, agent is not None, step or 0, cfg.video_fps)
        summary = {
            "run_dir": str(run_dir) if run_dir else None,
            "env": config.env.name,
            "checkpoint_step": step,
            "best": bool(args.best),
            "env_steps": state.env_steps,
            "episodes": len(seeds),
            "seeds": [int(s) for s in seeds],
            "seeds_from": seeds_from,
            "num_envs": int(vec_env.num_envs),
            "tasks": task_names(config, results),
            "sources": {
                s.key: {
                    "label": s.label,
                    "metrics": results[s.key].metrics,
                    "episodes": _episode_rows(results[s.key], seeds),
                }
                for s in EVAL_SOURCES
                if s.key in results
            },
        }
        table = format_table(summary)
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        (out_dir / TABLE_FILE).write_text(table + "\n")
    log(table)
    log(f"[dsrl] evaluation written to {out_dir}")
    return EvalOnlyResult(out_dir=out_dir, summary=summary, table=table)


def _restore_agent(config, args, run_dir, vec_env, steering, resources) -> tuple[Any, Any]:
    """(agent, loop counters) of the run's newest intact checkpoint, of --checkpoint_step or
    (--best) of its best evaluated actor, read without changing anything in the run directory."""
    template = build.make_agent(config, vec_env.spec.observation_spec, steering)
    if args.best:
        record = best.read_record(run_dir)  # a damaged best.json: BestRecordError names it
        if record is None or not (best.best_dir(run_dir) / "checkpoints").is_dir():
            raise FileNotFoundError(
                f"{run_dir} has no best actor ({best.best_dir(run_dir)}): it is written at the "
                "run's evaluations when --keep_best is on (runs made before dsrl kept one have "
                "none); evaluate a checkpoint instead (drop --best)"
            )
        run_dir = best.best_dir(run_dir)
    checkpointer = RunCheckpointer(run_dir, read_only=True)
    resources.callback(checkpointer.close)
    restored = checkpointer.restore(
        loop.checkpoint_template(template), step=args.checkpoint_step, load_buffer=False
    )
    if restored is None:
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint to evaluate yet; wait for its first "
            "checkpoint_interval, or pass --base_policy_only"
        )
    tree, _ = restored
    return tree["agent"], loop.LoopState.from_tree(tree["counters"])


def _out_dir(config: Any, run_dir: Path | None, step: int | None, best: bool = False) -> Path:
    """A new folder for this evaluation: in the run directory, or for the base policy alone on
    a preset, under the log directory."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    if run_dir is not None:
        name = f"eval_{step}_{stamp}" if step is not None else f"eval_base_{stamp}"
        if best:
            name = f"eval_best_{step}_{stamp}"
        out_dir = run_dir / name
    else:
        out_dir = Path(config.log.logdir) / f"{config.log.prefix}_eval_base_{stamp}"
    out_dir.mkdir(parents=True, exist_ok=False)
    return out_dir


def _evaluate_sources(vec_env, steering, agent, seeds, cfg) -> dict[str, EvalResult]:
    """Every noise source on the same seeds, with the training loop's noise streams; videos of
    the first one (the actor's sampled latents, or the base policy alone)."""
    results: dict[str, EvalResult] = {}
    num_sources = 4 if agent is not None else 2
    bar = Progress(cfg.progress, 0, 0).evaluation(num_sources * len(seeds))

    def run_source(key: str, source: Any, videos: int = 0) -> None:
        bar.set_description(f"eval {key}")
        results[key] = evaluate(
            vec_env,
            steering,
            source,
            seeds,
            num_video_episodes=videos,
            step_penalty=cfg.use_step_penalty,
            on_chunk=lambda steps, queries, ended: bar.update(ended),
        )

    videos = cfg.num_video_episodes
    if agent is not None:
        # The loop's per-episode noise: the run's evaluation of this checkpoint, exactly.
        run_source(ACTOR_SAMPLED.key, sampled_episode_noise(steering, agent), videos)
        first_q: dict[int, float] = {}
        run_source(ACTOR_MODE.key, mode_episode_noise(steering, agent, first_q))
        mode = results[ACTOR_MODE.key]
        mode.metrics |= critic_calibration(mode.episodes, first_q, cfg.discount)
        videos = 0
    run_source(BASE_IID.key, iid_episode_noise(steering, cfg.seed, BASE_IID.stream), videos)
    run_source(BASE_WARMUP.key, warmup_episode_noise(steering, cfg.seed, BASE_WARMUP.stream))
    bar.close()
    return results


def _log_results(
    logger: Any, results: dict[str, EvalResult], has_agent: bool, step: int, fps: int
) -> None:
    """The results under the training loop's metric names, and the videos."""
    row = {
        s.metric(name): value
        for s in EVAL_SOURCES
        if s.key in results
        for name, value in results[s.key].metrics.items()
    }
    logger.log(row, step=step)
    video_source = ACTOR_SAMPLED if has_agent else BASE_IID
    for i, frames in enumerate(results[video_source.key].videos):
        logger.log_video(f"eval_video/{i}", frames, step=step, fps=fps)
