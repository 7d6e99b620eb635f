"""Where a small LIBERO Pi0 grasps under a given latent: one line per layout.

  python scripts/trace_pi0_libero_grasp.py --policy runs/pi0_small --noise zero --layouts 10

For each layout (the preset's evaluation seeds 0..N-1, one env, 8 of 16 actions per query) it
prints the gripper's offset from the object (`eef - obj`, cm; the state's object-relative
entries negated) at each query, the offset at the first query whose executed actions close the
gripper, and success. It shows which grasp a latent picks, e.g. why the all-zero latent fails
(docs/finetune_pi0.md, "The shipped recipe": on the shipped policy it overshoots the object).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

OBJECT = slice(5, 8)  # the object relative to the gripper in the 11-d pi0_state
QUERY_FREQ = 8  # actions executed per query, as in the preset and the maker


class _Recorder:
    """`policy` for make_pi0_libero.evaluate: samples as it does and keeps, per query, the
    gripper's offset from the object (cm) and whether the executed actions close the gripper."""

    def __init__(self, policy, query_freq: int):
        self.policy, self.query_freq, self.queries = policy, query_freq, []

    def sample_actions(self, batch, noise):
        chunk = self.policy.sample_actions(batch, noise)
        offset = -100 * batch["observation/state"][0, OBJECT]
        self.queries.append((offset, chunk[0, : self.query_freq, 6] > 0))
        return chunk


def trace(policy, noise_fn, layout: int, task_id: int, max_steps: int) -> dict:
    from make_pi0_libero import evaluate

    recorder = _Recorder(policy, QUERY_FREQ)
    (success,) = evaluate(recorder, task_id, [layout], QUERY_FREQ, noise_fn, 1, max_steps)
    closes = [offset for offset, closing in recorder.queries if closing.any()]
    return {
        "layout": layout,
        "success": success,
        "closes_at_cm": None if not closes else [round(float(v), 1) for v in closes[0]],
        "y_by_query_cm": [round(float(offset[1]), 1) for offset, _ in recorder.queries],
    }


def main(argv=None) -> None:
    from dsrl.base_policies.pi0 import shipped
    from dsrl.envs.libero_scripted import DEFAULT_TASK

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default=str(shipped.LIBERO_CPU_DIR), help="a made Pi0 directory")
    p.add_argument("--noise", choices=("zero", "iid"), default="zero")
    p.add_argument("--layouts", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="the i.i.d. noise's generator")
    p.add_argument("--max_episode_steps", type=int, default=180)
    args = p.parse_args(argv)
    policy = shipped.load(pathlib.Path(args.policy))
    shape, rng = policy.noise_shape, np.random.default_rng(args.seed)
    if args.noise == "zero":
        noise_fn = lambda n: np.zeros((n, *shape), np.float32)  # noqa: E731
    else:
        noise_fn = lambda n: rng.standard_normal((n, *shape)).astype(np.float32)  # noqa: E731
    rows = [
        trace(policy, noise_fn, k, DEFAULT_TASK["task_id"], args.max_episode_steps)
        for k in range(args.layouts)
    ]
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"policy": args.policy, "noise": args.noise,
                      "success": float(np.mean([r["success"] for r in rows]))}))  # fmt: skip


if __name__ == "__main__":
    main()
