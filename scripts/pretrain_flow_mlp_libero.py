"""Pretrain the LIBERO CPU proof's base policy: a flow-matching MLP cloned from scripted demos.

1. Demonstrations on the real LIBERO task (`dsrl.envs.libero_scripted`, libero_object task 8 by
   default), in worker processes, without rendering. Each demonstration draws one grasp offset
   and keeps it for the whole episode: along the box (x) uniform in `offset_x`, across the
   fingers (y) from one of the `offset_y` intervals, picked with equal probability. By default
   half the demos grasp centred (y within +-0.5 cm) and half 2.5-3.5 cm off, where the grasp
   slips: the cloned policy has two modes and its noise picks one per chunk. With
   --shared_noise (default) the noise is one vector per chunk, as 'repeat' steering sets it, so
   a latent picks a mode instead of being an off-distribution noise. Small Gaussian noise is
   added on the motion actions; every demonstration is kept, the failed ones included. The
   initial layouts come from robosuite's placement sampler with seeds disjoint from the
   evaluation's. Labels are the executed actions cut into chunks of the
   policy horizon (padded with "hold still, gripper open" after the episode).
2. Flow matching (Pi0's loss), `flow_mlp.train_flow_matching`: AdamW with cosine decay, seeded.
3. Evaluation with the policy's own chunks (`query_freq` steps of each, like the DSRL loop): base
   success with i.i.d. noise, and with the all-zero noise, over `eval_episodes` seeded layouts.
4. Writes config.json + params.npz + params.sha256 (default: dsrl/assets/flow_mlp_libero) and
   prints ONE JSON line.

  python scripts/pretrain_flow_mlp_libero.py          # ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing as mp
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from dsrl.envs.libero_scripted import (  # noqa: E402
    DEFAULT_TASK,
    POLICY_STATE_DIM,
    LiberoPickPlaceEnv,
    demo_seeds,
    record_demo,
)
from dsrl.envs.vector import run_seeded_episodes  # noqa: E402

LIBERO_ASSET_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dsrl", "assets", "flow_mlp_libero"
)
# After the episode the demonstrator holds still with the gripper open.
HOLD_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0], np.float32)


def _env(task_id: int, max_episode_steps: int | None = None) -> LiberoPickPlaceEnv:
    return LiberoPickPlaceEnv(
        suite=DEFAULT_TASK["suite"],
        task_id=task_id,
        init_state="sampler",
        camera_size=64,
        policy_image_size=64,
        max_episode_steps=max_episode_steps,
    )


def _demo_worker(args: tuple) -> list[tuple[np.ndarray, np.ndarray, bool, tuple]]:
    task_id, seeds, offset_x, offset_y, action_noise = args
    env = _env(task_id)
    out = []
    for seed in seeds:
        frames, actions, success, offset = record_demo(
            env, seed, offset_x, offset_y, action_noise, {"state": "policy_state"}, render=False
        )
        out.append((frames["state"], actions, success, offset))
    env.close()
    return out


def collect(task_id, num_demos, seed, offset_x, offset_y, action_noise, workers):
    seeds = demo_seeds(seed, num_demos)
    parts = [(task_id, seeds[w::workers], offset_x, offset_y, action_noise) for w in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        results = [demo for part in pool.map(_demo_worker, parts) for demo in part]
    return results


def to_chunks(demos, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    states, chunks = [], []
    for traj_states, traj_actions, _, _ in demos:
        padded = np.concatenate([traj_actions, np.tile(HOLD_ACTION, (horizon, 1))])
        for t, state in enumerate(traj_states):
            states.append(state)
            chunks.append(padded[t : t + horizon])
    return np.asarray(states, np.float32), np.asarray(chunks, np.float32)


def evaluate_policy(
    policy, task_id, seeds, query_freq, noise_fn, num_envs, max_episode_steps
) -> list[bool]:
    """Episodes on seeded sampler layouts, `num_envs` subprocess workers, one render per chunk."""

    def act(obs):
        state = np.stack([o["policy_state"] for o in obs])
        return policy.sample_actions({"policy_state": state}, noise_fn(num_envs))

    env_fn = functools.partial(_env, task_id, max_episode_steps)
    return run_seeded_episodes(act, env_fn, seeds, num_envs, query_freq)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=LIBERO_ASSET_DIR)
    parser.add_argument("--task_id", type=int, default=DEFAULT_TASK["task_id"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_demos", type=int, default=60)
    # Grasp offsets (m). Along the box (x): uniform in [lo, hi]. Across the fingers (y), where
    # grasps fail beyond ~1.2 cm: one or more intervals [lo, hi]; each demo picks one of them with
    # equal probability, then uniform in it. Two intervals, one that grasps and one too far off,
    # make a two-mode policy whose noise picks the mode (see the module docstring).
    parser.add_argument("--offset_x", type=float, nargs=2, default=(-0.03, 0.03))
    parser.add_argument("--offset_y", type=float, nargs="+", default=(-0.005, 0.005, 0.025, 0.035))
    parser.add_argument("--max_episode_steps", type=int, default=160, help="in evaluation")
    parser.add_argument("--action_noise", type=float, default=0.1)
    parser.add_argument("--train_steps", type=int, default=12000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--noise_dim", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_steps", type=int, default=10, help="Euler steps when sampling")
    parser.add_argument(
        "--shared_noise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one noise vector per chunk (FlowMLPConfig.shared_noise): the noise picks a mode",
    )
    parser.add_argument("--query_freq", type=int, default=8)
    parser.add_argument("--eval_episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--demos_cache", default="", help="npz of demos to reuse / write")
    args = parser.parse_args()
    if len(args.offset_y) % 2:
        parser.error(f"--offset_y takes pairs LO HI (intervals), got {len(args.offset_y)} values")

    start = time.perf_counter()
    if args.demos_cache and os.path.exists(args.demos_cache):
        with np.load(args.demos_cache, allow_pickle=True) as data:
            demos = list(data["demos"])
    else:
        demos = collect(
            args.task_id,
            args.num_demos,
            args.seed,
            args.offset_x,
            args.offset_y,
            args.action_noise,
            args.workers,
        )
        if args.demos_cache:
            arr = np.empty(len(demos), dtype=object)
            arr[:] = demos
            np.savez(args.demos_cache, demos=arr)
    demo_seconds = time.perf_counter() - start
    demo_success = float(np.mean([d[2] for d in demos]))
    print(f"[pretrain] {len(demos)} demos, success {demo_success:.2f}", file=sys.stderr)

    from dsrl.base_policies.flow_mlp import (
        FlowMLPConfig,
        FlowMLPPolicy,
        train_flow_matching,
        write_params_hash,
    )

    config = FlowMLPConfig(
        horizon=args.horizon,
        action_dim=7,
        noise_dim=args.noise_dim,
        state_dim=POLICY_STATE_DIM,
        hidden_dims=(args.hidden,) * args.num_layers,
        num_steps=args.num_steps,
        state_scale=10.0,
        shared_noise=args.shared_noise,
    )
    states, chunks = to_chunks(demos, config.horizon)
    params, losses = train_flow_matching(
        config,
        states,
        chunks,
        steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log_every=2000,
        log=lambda line: print(f"[pretrain] {line}", file=sys.stderr),
    )
    train_seconds = time.perf_counter() - start - demo_seconds
    policy = FlowMLPPolicy(config, params)
    policy.save(args.out)
    write_params_hash(args.out)

    rng = np.random.default_rng(args.seed)
    eval_seeds = [int(s) for s in range(args.eval_episodes)]

    def iid(n):
        return rng.standard_normal((n, *config.noise_shape)).astype(np.float32)

    def zero(n):
        return np.zeros((n, *config.noise_shape), np.float32)

    evaluate = functools.partial(
        evaluate_policy,
        policy,
        args.task_id,
        eval_seeds,
        args.query_freq,
        num_envs=args.workers,
        max_episode_steps=args.max_episode_steps,
    )
    iid_success, zero_success = evaluate(iid), evaluate(zero)
    asset_bytes = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    result = {
        "base_success_iid": float(np.mean(iid_success)),
        "base_success_zero_noise": float(np.mean(zero_success)),
        "eval_episodes": len(eval_seeds),
        "num_demos": len(demos),
        "demo_success": demo_success,
        "num_pairs": len(states),
        "final_loss": losses[-1],
        "demo_seconds": round(demo_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "asset_bytes": asset_bytes,
        "out": args.out,
        "args": vars(args),
        "config": dataclasses.asdict(config),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
