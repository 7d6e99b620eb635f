"""Env steps until a DSRL run's mean evaluation return first rises a given fraction over its base
policy's (from the run's metrics.jsonl; for envs without a success, e.g. Gym locomotion).

    python scripts/return_lift.py logs/DSRL_gym_hopper_cpu/<run dir> [--lift 0.4]

The base is the base policy's mean return with i.i.d. noise at the run's first evaluation; the
curve is the actor's mode (deterministic latents). Prints ONE JSON line: base, target, best,
last, env_steps_to_target (null if never reached) and the curve.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsrl.training.evaluation import ACTOR_MODE, BASE_IID  # noqa: E402
from dsrl.training.plots import success_curves  # noqa: E402
from dsrl.utils.logging import read_metrics  # noqa: E402


def lift_summary(run_dir: str | Path, lift: float) -> dict:
    curves = success_curves(read_metrics(run_dir), "avg_return")
    base_key, mode_key = BASE_IID.metric("avg_return"), ACTOR_MODE.metric("avg_return")
    if base_key not in curves or mode_key not in curves:
        raise ValueError(f"{run_dir} has no evaluation of the base and the actor yet.")
    base = curves[base_key][1][0]
    steps, returns = curves[mode_key]
    target = base * (1.0 + lift)
    reached = [s for s, r in zip(steps, returns, strict=True) if r >= target]
    return {
        "run_dir": str(run_dir),
        "base_iid_return": round(base, 1),
        "target": round(target, 1),
        "best_return": round(max(returns), 1),
        "last_return": round(returns[-1], 1),
        "last_env_steps": int(steps[-1]),
        "env_steps_to_target": int(reached[0]) if reached else None,
        "curve": [[int(s), round(r, 1)] for s, r in zip(steps, returns, strict=True)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    parser.add_argument("--lift", type=float, default=0.4, help="0.4: +40%% over the base")
    args = parser.parse_args(argv)
    if not (Path(args.run_dir) / "metrics.jsonl").is_file():
        parser.error(f"{args.run_dir} has no metrics.jsonl: pass a run directory")
    try:
        print(json.dumps(lift_summary(args.run_dir, args.lift)))
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
