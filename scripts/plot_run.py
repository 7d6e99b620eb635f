"""Plot success rate vs env steps of a DSRL run (from its metrics.jsonl).

    python scripts/plot_run.py runs/dsrl_demo_20250101_120000_s0 [--out success.png]

Draws the actor's deterministic (mode) and sampled evaluation success against env steps, with
the base policy's success (i.i.d. noise, and the warm-up noise family) as horizontal lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsrl.training.plots import plot_success  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    parser.add_argument(
        "--out", default=None, help="PNG path (default run_dir/success_vs_env_steps.png)"
    )
    args = parser.parse_args(argv)
    if not (Path(args.run_dir) / "metrics.jsonl").is_file():
        parser.error(f"{args.run_dir} has no metrics.jsonl: pass a run directory")
    try:
        out = plot_success(args.run_dir, args.out)
    except ValueError as e:
        parser.error(str(e))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
