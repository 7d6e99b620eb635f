"""Success-rate curves from a run's metrics.jsonl (used by the demo and scripts/plot_run.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# (metrics key, legend label, line style) of the curves drawn against env steps.
CURVES = (
    ("evaluation_mode/success_rate", "DSRL, actor mode (deterministic)", "-"),
    ("evaluation/success_rate", "DSRL, sampled actions", "--"),
)
# Base-policy baselines, drawn as horizontal lines at their first logged value.
BASELINES = (
    ("evaluation_base_iid/success_rate", "base policy, i.i.d. noise", ":"),
    ("evaluation_base_warmup/success_rate", "base policy, warm-up noise family", "-."),
)


def success_curves(records: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{key: (env_steps, values)} for every curve/baseline key present, one point per step.

    A resumed run may log a step twice (work redone after the last checkpoint); the later record
    wins."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for record in records:
        for key, _, _ in CURVES + BASELINES:
            if key in record and "env_steps" in record:
                out.setdefault(key, {})[int(record["step"])] = (
                    float(record["env_steps"]),
                    float(record[key]),
                )
    return {
        key: ([p[0] for _, p in sorted(points.items())], [p[1] for _, p in sorted(points.items())])
        for key, points in out.items()
    }


def plot_success(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw success vs env steps for `run_dir` into `out` (default run_dir/success.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsrl.utils.logging import read_metrics

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "success_vs_env_steps.png"
    curves = success_curves(read_metrics(run_dir))
    if not any(key in curves for key, _, _ in CURVES):
        raise ValueError(
            f"{run_dir}/metrics.jsonl has no evaluation success rates yet (keys "
            f"{[k for k, _, _ in CURVES]}); run longer than the first eval_interval."
        )
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, label, style in CURVES:
        if key in curves:
            xs, ys = curves[key]
            ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
    for key, label, style in BASELINES:
        if key in curves:
            ax.axhline(curves[key][1][0], linestyle=style, color="grey", label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
