"""Pretrain the demo's base policy: a flow-matching MLP on mode-mixing demonstrations.

1. Demonstrations in DemoEnv: the scripted demonstrator (`dsrl.envs.demo.scripted_action`) drives
   to the fork, then to a goal drawn 50/50 per demo REGARDLESS of the cue, with small Gaussian
   action perturbations for state coverage. Labels are the executed actions, cut into chunks of
   the policy horizon (padded with zero "stay" actions after the goal).
2. Flow matching (Pi0's loss), `flow_mlp.train_flow_matching`: AdamW with cosine decay, seeded.
3. Evaluation over seeded episodes: base success with i.i.d. noise (should be ~0.5: the policy
   cannot see the cue), with noise from the agent's warm-up family (`repeat` mode, N(0,1) clipped
   to +-action_magnitude), and a per-query best-of-K oracle over i.i.d. and over `repeat` noise
   (should be ~1.0: steering the noise CAN solve the task).
4. Writes config.json + params.npz (default: the shipped asset dir) and prints ONE JSON line.

  python scripts/pretrain_flow_mlp.py                  # about a minute on 2 CPU cores
  python scripts/pretrain_flow_mlp.py --out /tmp/flow --train_steps 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from dsrl.base_policies.flow_mlp import (  # noqa: E402
    DEMO_ASSET_DIR,
    FlowMLPConfig,
    FlowMLPPolicy,
    train_flow_matching,
)
from dsrl.envs.demo import (  # noqa: E402
    DemoEnv,
    DemoEnvConfig,
    evaluate_noise_strategy,
    scripted_action,
)
from dsrl.steering import make_noise_param  # noqa: E402


def collect_demonstrations(
    num_demos: int, horizon: int, seed: int, env_config: DemoEnvConfig, action_noise: float
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Returns states float32 (N, 2), action chunks float32 (N, horizon, 2), stats."""
    rng = np.random.default_rng(seed)
    env = DemoEnv(env_config)
    states, chunks, lengths, reached = [], [], [], 0
    for demo in range(num_demos):
        obs = env.reset(seed=seed * 1_000_003 + demo)
        side = int(rng.integers(2))  # the demonstrator's goal, independent of the cue
        traj_states, traj_actions = [], []
        for _ in range(env_config.max_episode_steps):
            position = env.state.position
            action = scripted_action(position, side, env_config)
            action = action + action_noise * rng.standard_normal(2).astype(np.float32)
            traj_states.append(obs["policy_state"])
            traj_actions.append(action)
            obs, _, terminated, truncated, info = env.step(action, render=False)
            goal = env_config.left_goal if side == 0 else env_config.right_goal
            if np.linalg.norm(env.state.position - np.asarray(goal)) <= env_config.goal_radius:
                reached += 1
                break
            if terminated or truncated:
                break
        actions = np.asarray(traj_actions, np.float32)
        # After the goal the demonstrator stays put: pad chunks with zero actions.
        padded = np.concatenate([actions, np.zeros((horizon, 2), np.float32)])
        for t, state in enumerate(traj_states):
            states.append(state)
            chunks.append(padded[t : t + horizon])
        lengths.append(len(traj_states))
    stats = {"demo_reached_own_goal": reached / num_demos, "demo_mean_len": float(np.mean(lengths))}
    return np.asarray(states, np.float32), np.asarray(chunks, np.float32), stats


def evaluate(
    policy: FlowMLPPolicy,
    env_config: DemoEnvConfig,
    num_episodes: int,
    query_freq: int,
    action_magnitude: float,
    oracle_k: int,
    seed: int,
) -> dict[str, float]:
    seeds = [10_000 + seed * 100_003 + i for i in range(num_episodes)]
    repeat = make_noise_param("repeat", policy.noise_shape, action_magnitude)

    def iid(rng, n):
        return repeat.sample_iid_noise(rng, n)

    def repeat_warmup(rng, n):
        return repeat.to_noise(repeat.sample_warmup(rng, n))

    def rate(noise_fn, k=0):
        success = evaluate_noise_strategy(
            policy, seeds, noise_fn, query_freq, env_config, oracle_candidates=k, rng_seed=seed
        )
        return float(np.mean(success))

    return {
        "base_success_iid": rate(iid),
        "base_success_repeat_warmup": rate(repeat_warmup),
        f"oracle_best_of_{oracle_k}_iid": rate(iid, oracle_k),
        f"oracle_best_of_{oracle_k}_repeat": rate(repeat_warmup, oracle_k),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEMO_ASSET_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_demos", type=int, default=2000)
    parser.add_argument("--action_noise", type=float, default=0.1)
    parser.add_argument("--train_steps", type=int, default=15000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--noise_dim", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_steps", type=int, default=10, help="Euler steps when sampling")
    parser.add_argument("--eval_episodes", type=int, default=200)
    parser.add_argument("--query_freq", type=int, default=8)
    parser.add_argument("--action_magnitude", type=float, default=1.0)
    parser.add_argument("--oracle_k", type=int, default=16)
    args = parser.parse_args()

    start = time.perf_counter()
    env_config = DemoEnvConfig()
    config = FlowMLPConfig(
        horizon=args.horizon,
        noise_dim=args.noise_dim,
        hidden_dims=(args.hidden,) * args.num_layers,
        num_steps=args.num_steps,
    )
    states, chunks, demo_stats = collect_demonstrations(
        args.num_demos, config.horizon, args.seed, env_config, args.action_noise
    )
    print(f"[pretrain] {len(states)} (state, chunk) pairs, {demo_stats}", file=sys.stderr)
    params, losses = train_flow_matching(
        config,
        states,
        chunks,
        steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log=lambda line: print(f"[pretrain] {line}", file=sys.stderr),
    )
    train_seconds = time.perf_counter() - start
    policy = FlowMLPPolicy(config, params)
    policy.save(args.out)
    metrics = evaluate(
        policy,
        env_config,
        args.eval_episodes,
        args.query_freq,
        args.action_magnitude,
        args.oracle_k,
        args.seed,
    )
    asset_bytes = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    result = {
        **metrics,
        **demo_stats,
        "final_loss": losses[-1],
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "asset_bytes": asset_bytes,
        "out": args.out,
        "config": dataclasses.asdict(config),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
