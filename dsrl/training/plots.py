"""Success-rate curves from a run's metrics.jsonl (used by the demo and scripts/plot_run.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dsrl.training.evaluation import ACTOR_MODE, ACTOR_SAMPLED, BASE_IID, BASE_WARMUP

# (metrics key, legend label, line style) of the curves drawn against env steps. (The legend
# keeps the figure's own wording, so that the demo's figures stay as they were.)
CURVES = (
    (ACTOR_MODE.metric("success_rate"), "DSRL, actor mode (deterministic)", "-"),
    (ACTOR_SAMPLED.metric("success_rate"), "DSRL, sampled actions", "--"),
)
# Base-policy baselines, drawn as horizontal lines at their first logged value.
BASELINES = (
    (BASE_IID.metric("success_rate"), BASE_IID.label, ":"),
    (BASE_WARMUP.metric("success_rate"), BASE_WARMUP.label, "-."),
)


def success_curves(
    records: list[dict[str, Any]], metric: str = "success_rate"
) -> dict[str, tuple[list[float], list[float]]]:
    """{key: (env_steps, values)} for every curve/baseline key present, one point per step; the
    keys are CURVES' and BASELINES' with `metric` (e.g. "avg_return") for "success_rate".

    A resumed run may log a step twice (work redone after the last checkpoint); the later record
    wins."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    keys = [_metric_key(key, metric) for key, _, _ in CURVES + BASELINES]
    for record in records:
        for key in keys:
            if key in record and "env_steps" in record:
                out.setdefault(key, {})[int(record["step"])] = (
                    float(record["env_steps"]),
                    float(record[key]),
                )
    return {
        key: ([p[0] for _, p in sorted(points.items())], [p[1] for _, p in sorted(points.items())])
        for key, points in out.items()
    }


def _metric_key(success_key: str, metric: str) -> str:
    return success_key.removesuffix("success_rate") + metric


def plot_success(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    metric: str = "success_rate",
) -> Path:
    """Draw `metric` (success rate, or e.g. "avg_return") vs env steps for `run_dir` into `out`
    (default run_dir/success_vs_env_steps.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsrl.utils.logging import read_metrics

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "success_vs_env_steps.png"
    curves = success_curves(read_metrics(run_dir), metric)
    curve_keys = [_metric_key(k, metric) for k, _, _ in CURVES]
    if not any(key in curves for key in curve_keys):
        raise ValueError(
            f"{run_dir}/metrics.jsonl has no evaluation {metric} yet (keys {curve_keys}); run "
            "longer than the first eval_interval."
        )
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, label, style in CURVES:
        if (key := _metric_key(key, metric)) in curves:
            xs, ys = curves[key]
            ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
    for key, label, style in BASELINES:
        if (key := _metric_key(key, metric)) in curves:
            ax.axhline(curves[key][1][0], linestyle=style, color="grey", label=label)
    _mark_best(ax, run_dir, metric)
    ax.set_xlabel("env steps")
    if metric == "success_rate":
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
    else:
        ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _mark_best(ax: Any, run_dir: Path, metric: str) -> None:
    """A star at the run's best evaluated actor (dsrl.training.best), when it kept one by this
    metric; a missing or unreadable best.json draws nothing."""
    from dsrl.training.best import BestRecordError, read_record

    try:
        record = read_record(run_dir)
    except BestRecordError:
        return
    if record is not None and record["metric"] == metric:
        ax.plot(
            [record["env_steps"]], [record["value"]], "*", color="black", markersize=11,
            label=f"best actor (mode), step {record['step']}",
        )  # fmt: skip


class PlotOnEvaluation:
    """A run logger that redraws `run_dir/success_vs_env_steps.png` whenever a logged row holds
    an evaluation success rate (every run's plot at every evaluation, not only the demo's).

    Drawing reads metrics.jsonl and takes a fraction of a second; it happens once per evaluation.
    A plot that cannot be drawn (e.g. matplotlib missing) is reported once and never stops the run.
    Everything else is the wrapped logger's."""

    def __init__(self, logger: Any, run_dir: str | os.PathLike, log: Any = print):
        self.logger = logger
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "success_vs_env_steps.png"
        self._log = log
        self._failed = False

    def log(self, metrics: Any, step: int) -> None:
        self.logger.log(metrics, step=step)
        if self._failed or not any(key in metrics for key, _, _ in CURVES):
            return
        try:
            plot_success(self.run_dir, self.path)
        except Exception as e:  # noqa: BLE001 - a plot must never end a training run
            self._failed = True
            self._log(f"[dsrl] could not draw {self.path} ({e}); plots are off for this run")

    def __getattr__(self, name: str) -> Any:  # log_video, close, run_dir of the logger, ...
        if name == "logger":
            raise AttributeError(name)
        return getattr(self.logger, name)
