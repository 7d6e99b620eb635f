"""DSRL-SAC vs DSRL-NA: env steps to reach a success threshold, on the demo or real LIBERO.

    python scripts/compare_algorithms.py                       # 3 seeds each, demo preset
    python scripts/compare_algorithms.py --seeds 0 1 --max_env_steps 8000 --out /tmp/cmp
    python scripts/compare_algorithms.py --preset libero_cpu --seeds 0 1 2 \
        --max_env_steps 5000 --eval_interval 512 --eval_episodes 20    # real LIBERO (README)

Each run is the preset (`dsrl/presets/<preset>.py`) built by the launchers' `build_run`
(`dsrl.training.build`), as `examples/launch_train_sim.py --env <preset> --algorithm
{pixel_sac,dsrl_na}` does, so both algorithms
see the same env, base policy, noise parameterisation, UTD (`multi_grad_step`), batch size,
networks and evaluation seeds. A run stops at its first evaluation with success >= threshold
(`--no_early_stop` runs the whole budget) or when `--max_env_steps` is spent.

Wall time per gradient step is timed after training, in this process, on the run's own filled
buffer with a freshly compiled learner (median over `--timing_blocks` update calls of one block
each, compilation excluded); the critic/actor and the distillation steps of DSRL-NA are both in
its number.

Prints a table, writes `<out>/success_vs_env_steps.png` and `<out>/results.json`, and ends with
ONE JSON line: {"sac_steps_to_0.9", "na_steps_to_0.9" (medians over seeds; null if the median
seed never got there), "na_over_sac", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Before the heavy imports: the entry point may re-execute itself once (dsrl.utils.hugepages).
if __name__ == "__main__":
    from dsrl.utils.hugepages import restart_with_hugepages

    restart_with_hugepages()

ALGORITHMS = {"sac": "pixel_sac", "na": "dsrl_na"}


class _Reached(Exception):
    """Raised from the logger to end a run at its first evaluation above the threshold."""


class _EvalRecorder:
    """A RunLogger stand-in that keeps the evaluation rows and can stop the run."""

    def __init__(self, metric: str, threshold: float, early_stop: bool):
        self.metric, self.threshold, self.early_stop = metric, threshold, early_stop
        self.rows: list[dict[str, float]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.metric in metrics:
            self.rows.append({"step": float(step), **{k: float(v) for k, v in metrics.items()}})
            if self.early_stop and metrics[self.metric] >= self.threshold:
                raise _Reached

    def log_video(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def steps_to_threshold(rows: list[dict[str, float]], metric: str, threshold: float) -> float:
    """Env steps at the first evaluation with `metric` >= threshold; inf if none."""
    for row in rows:
        if row[metric] >= threshold:
            return float(row["env_steps"])
    return float("inf")


def time_updates(config, run, blocks: int) -> float:
    """Seconds per gradient step of a fresh learner on the run's buffer (compile excluded)."""
    from dsrl.training.build import make_agent

    agent = make_agent(config, run.vec_env.spec.observation_spec, run.steering)
    block = config.loop.block
    batch_size = min(config.loop.batch_size, len(run.buffer))  # a tiny budget's small buffer
    agent, _ = agent.update(run.buffer.sample(batch_size, num_batches=block))
    times = []
    for _ in range(blocks):
        batches = run.buffer.sample(batch_size, num_batches=block)
        start = time.perf_counter()
        agent, _ = agent.update(batches)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / block


def run_one(algorithm: str, seed: int, args, logdir: Path) -> dict[str, Any]:
    from dsrl.training import loop
    from dsrl.training.build import build_run
    from dsrl.training.cli import config_overrides
    from dsrl.training.config_io import load_config

    flags = {
        "algorithm": algorithm, "seed": str(seed), "max_env_steps": str(args.max_env_steps),
        "max_steps": str(10**9), "eval_interval": str(args.eval_interval),
        "eval_episodes": str(args.eval_episodes), "wandb_mode": "disabled", "logdir": str(logdir),
    }  # fmt: skip
    overrides = [("loop.num_video_episodes", "0"), ("loop.progress", "false")]
    config = load_config(
        args.preset, flags=flags, overrides=overrides + config_overrides(args.config)
    )
    recorder = _EvalRecorder(args.metric, args.threshold, not args.no_early_stop)
    with build_run(config) as run:
        start = time.perf_counter()
        try:
            loop.train(
                env=run.vec_env,
                steering=run.steering,
                agent=run.agent,
                buffer=run.buffer,
                config=config.loop,
                logger=recorder,
                transition_spec=run.transition_spec,
            )
        except _Reached:
            pass
        wall = time.perf_counter() - start
        sec_per_step = time_updates(config, run, args.timing_blocks)
    return {
        "algorithm": algorithm,
        "seed": seed,
        "steps_to_threshold": steps_to_threshold(recorder.rows, args.metric, args.threshold),
        "final_env_steps": recorder.rows[-1]["env_steps"] if recorder.rows else 0.0,
        "best_success": max((r[args.metric] for r in recorder.rows), default=0.0),
        "wall_s": wall,
        "ms_per_grad_step": 1e3 * sec_per_step,
        "curve": [(r["env_steps"], r[args.metric]) for r in recorder.rows],
    }


def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _fmt_steps(value: float) -> str:
    return "never" if not np.isfinite(value) else f"{value:.0f}"


def plot(
    results: list[dict[str, Any]], path: Path, metric: str, threshold: float, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"pixel_sac": "tab:blue", "dsrl_na": "tab:orange"}
    labels = {"pixel_sac": "DSRL-SAC", "dsrl_na": "DSRL-NA"}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    seen = set()
    for res in results:
        xs, ys = zip(*res["curve"], strict=True) if res["curve"] else ((), ())
        alg = res["algorithm"]
        ax.plot(xs, ys, color=colours[alg], alpha=0.8, marker="o", markersize=3,
                label=None if alg in seen else labels[alg])  # fmt: skip
        seen.add(alg)
    ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}: DSRL-SAC vs DSRL-NA (one line per seed)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from dsrl.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="demo", choices=sorted(PRESETS), help="libero_cpu: real LIBERO"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--algorithms", nargs="+", choices=sorted(ALGORITHMS), default=["sac", "na"]
    )
    parser.add_argument("--max_env_steps", type=int, default=12_000)
    parser.add_argument("--eval_interval", type=int, default=100, help="in gradient steps")
    parser.add_argument("--eval_episodes", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument(
        "--metric",
        default="evaluation_mode/success_rate",
        choices=("evaluation_mode/success_rate", "evaluation/success_rate"),
        help="deterministic actor (default) or sampled latents",
    )
    parser.add_argument("--no_early_stop", action="store_true")
    parser.add_argument("--timing_blocks", type=int, default=5)
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    parser.epilog = "Other arguments go to the launcher, e.g. --config.agent.num_qs=2."
    args, extra = parser.parse_known_args(argv)
    args.config = extra
    out = Path(args.out or tempfile.mkdtemp(prefix="dsrl_compare_"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:  # seed-major: a cut-short comparison still pairs the algorithms
        for key in args.algorithms:
            res = run_one(ALGORITHMS[key], seed, args, out / "runs")
            results.append(res)
            print(
                f"[compare] {key} seed {seed}: steps to {args.threshold} = "
                f"{_fmt_steps(res['steps_to_threshold'])}, best {res['best_success']:.2f}, "
                f"{res['ms_per_grad_step']:.1f} ms/grad step, {res['wall_s']:.0f} s",
                flush=True,
            )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    summary: dict[str, Any] = {}
    header = f"{'algorithm':<10} {'seed':>4} {'env steps to ' + str(args.threshold):>18} " \
        f"{'best':>5} {'ms/grad step':>12} {'wall s':>7}"  # fmt: skip
    lines = [header, "-" * len(header)]
    for key in args.algorithms:
        rows = [r for r in results if r["algorithm"] == ALGORITHMS[key]]
        for r in rows:
            lines.append(
                f"{key:<10} {r['seed']:>4} {_fmt_steps(r['steps_to_threshold']):>18} "
                f"{r['best_success']:>5.2f} {r['ms_per_grad_step']:>12.1f} {r['wall_s']:>7.0f}"
            )
        med_steps = _median([r["steps_to_threshold"] for r in rows])
        med_ms = _median([r["ms_per_grad_step"] for r in rows])
        lines.append(f"{key:<10} {'med':>4} {_fmt_steps(med_steps):>18} {'':>5} {med_ms:>12.1f}")
        summary[f"{key}_steps_to_{args.threshold}"] = med_steps if np.isfinite(med_steps) else None
        summary[f"{key}_ms_per_grad_step"] = round(med_ms, 2)
        summary[f"{key}_seeds_reached"] = int(
            sum(np.isfinite(r["steps_to_threshold"]) for r in rows)
        )
    print("\n".join(lines))
    png = out / "success_vs_env_steps.png"
    plot(results, png, args.metric, args.threshold, args.preset)
    print(f"plot: {png}")

    sac = summary.get(f"sac_steps_to_{args.threshold}")
    na = summary.get(f"na_steps_to_{args.threshold}")
    summary["na_over_sac"] = round(na / sac, 3) if sac and na else None
    summary.update(
        {
            "metric": args.metric,
            "preset": args.preset,
            "seeds": args.seeds,
            "max_env_steps": args.max_env_steps,
            "eval_episodes": args.eval_episodes,
            "eval_interval_grad_steps": args.eval_interval,
        }
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
