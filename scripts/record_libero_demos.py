"""Record scripted LIBERO demonstrations in LeRobot's v2 layout (for scripts/finetune_pi0.py).

  nice -n 10 python scripts/record_libero_demos.py --out demos/libero_object_8 --episodes 3

Runs `ScriptedPickPlace` (dsrl/envs/libero_scripted.py) from the suite's fixed initial states
--first_init_state, +1, ... and records, per control step, both cameras as Pi0 sees them
(agent view -> "image", wrist -> "wrist_image", uint8 224x224, rotated 180 degrees as openpi's
LIBERO client does), the 8-d "state" (eef pos, axis-angle, gripper qpos), the 7-d "actions" and
the task's instruction as the prompt. Only successful episodes are kept unless --keep_failures.
Both cameras are rendered on every step, which dominates the cost on a CPU (~0.25 s a step).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from dsrl.data import lerobot as lr  # noqa: E402
from dsrl.envs.libero_scripted import DEFAULT_TASK  # noqa: E402

# robosuite's control frequency for LIBERO (one action per 50 ms).
LIBERO_FPS = 20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, required=True, help="a new dataset directory")
    p.add_argument("--suite", default=DEFAULT_TASK["suite"])
    p.add_argument("--task_id", type=int, default=DEFAULT_TASK["task_id"])
    p.add_argument("--episodes", type=int, default=50, help="initial states to record")
    p.add_argument("--first_init_state", type=int, default=0)
    p.add_argument("--image_size", type=int, default=224, help="Pi0's input size")
    p.add_argument("--max_steps", type=int, help="per episode (default: the suite's)")
    p.add_argument("--video", action="store_true", help="mp4 videos instead of PNG in parquet")
    p.add_argument("--keep_failures", action="store_true")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error("--episodes must be >= 1")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"--out {args.out} is not empty: choose a new directory (nothing is overwritten).")
    return args


def record_episode(env, init_state: int, max_steps: int) -> tuple[lr.Episode, bool]:
    """One demonstration from a fixed initial state: (episode, success)."""
    from dsrl.envs.libero_scripted import ScriptedPickPlace

    env.init_state = init_state
    demonstrator = ScriptedPickPlace()
    obs = env.reset(seed=init_state)
    frames = {"image": [], "wrist_image": [], "state": [], "actions": []}
    success = False
    for _ in range(max_steps):
        action = demonstrator.act(obs["policy_state"]).astype(np.float32)
        frames["image"].append(obs["agentview_image"])
        frames["wrist_image"].append(obs["wrist_image"])
        frames["state"].append(obs["state"])
        frames["actions"].append(action)
        obs, _, terminated, truncated, _ = env.step(action, render=True)
        if terminated or truncated:
            success = bool(terminated)
            break
    episode = lr.Episode(
        images={k: np.stack(frames[k]) for k in ("image", "wrist_image")},
        state=np.stack(frames["state"]).astype(np.float32),
        actions=np.stack(frames["actions"]),
        prompt=obs["prompt"],
    )
    return episode, success


def main(argv=None) -> int:
    from tqdm import tqdm

    from dsrl.envs.libero_scripted import LiberoPickPlaceEnv

    args = parse_args(argv)
    env = LiberoPickPlaceEnv(
        suite=args.suite,
        task_id=args.task_id,
        # The last index asked for: the env checks it is one of the task's initial states.
        init_state=args.first_init_state + args.episodes - 1,
        policy_image_size=args.image_size,
        render_wrist=True,
        max_episode_steps=args.max_steps,
    )
    writer = lr.LeRobotWriter(args.out, fps=LIBERO_FPS, video=args.video)
    kept, failed, start = 0, [], time.perf_counter()
    bar = tqdm(range(args.first_init_state, args.first_init_state + args.episodes), desc="demos")
    try:
        for init_state in bar:
            episode, success = record_episode(env, init_state, env.spec.max_episode_steps)
            if success or args.keep_failures:
                writer.add(episode)
                kept += 1
            if not success:
                failed.append(init_state)
            bar.set_postfix(kept=kept, steps=len(episode.state))
    finally:
        env.close()
    summary = {
        "dataset": str(args.out),
        "episodes": kept,
        "frames": writer.num_frames,
        "failed_init_states": failed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
