"""A medium-level Hopper dataset made here: SAC in Hopper-v5's action space, stopped when its
sampled policy first returns `target_return`, then rolled out (sampling, as D4RL's "medium"
data was collected) into DPPO's train.npz layout (`dsrl.base_policies.diffusion.dataset`).

D4RL's hopper-medium-v2 is 1M steps of a SAC policy stopped early (about a third of expert);
its clone is the DSRL paper's Hopper starting point (about 1.4-1.5k). This recipe is the same
idea, small enough for a CPU: 256 x 2 ReLU networks, one gradient step per env step (taken in
blocks of `block` steps after `block` env steps, so that one jitted scan does a block), and the
repository's SAC steps (`dsrl.agents.sac`) on the raw action.

Deterministic given the seed on a CPU (seeded env resets, numpy and JAX keys).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dsrl.agents import sac
from dsrl.networks.ensemble import StateActionEnsemble
from dsrl.networks.policies import TanhGaussianPolicy

ENV_ID = "Hopper-v5"


@dataclasses.dataclass(frozen=True)
class ActionSACConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    init_temperature: float = 1.0
    random_steps: int = 5_000  # uniform actions before the first update
    block: int = 50  # env steps collected, then as many gradient steps in one scan
    target_return: float = 1000.0  # stop when the sampled policy's eval mean first passes it
    eval_every: int = 5_000
    eval_episodes: int = 5
    max_env_steps: int = 300_000
    seed: int = 0

    def __post_init__(self):
        if self.random_steps < self.batch_size or self.block < 1:
            raise ValueError("random_steps must be >= batch_size and block >= 1.")
        if self.eval_every % self.block:
            raise ValueError(f"eval_every={self.eval_every} must be a multiple of block.")


class SACState(flax.struct.PyTreeNode):
    actor: Any  # TrainState of the TanhGaussianPolicy
    critic: Any  # TrainState of the 2-head StateActionEnsemble
    target: Any  # target critic params
    temp: Any  # TrainState of log(alpha)


def init_sac(cfg: ActionSACConfig, obs_dim: int, action_dim: int) -> SACState:
    actor_def = TanhGaussianPolicy(cfg.hidden_dims, action_dim, activations=nn.relu)
    critic_def = StateActionEnsemble(cfg.hidden_dims, num_qs=2, use_layer_norm=False)
    k_actor, k_critic = jax.random.split(jax.random.PRNGKey(cfg.seed))
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    actor_params = actor_def.init(k_actor, obs)["params"]
    critic_params = critic_def.init(k_critic, obs, act)["params"]
    return SACState(
        actor=sac.make_train_state(actor_def.apply, actor_params, cfg.lr),
        critic=sac.make_train_state(critic_def.apply, critic_params, cfg.lr),
        target=critic_params,
        temp=sac.make_temperature(cfg.init_temperature, cfg.lr),
    )


def _sac_update(cfg: ActionSACConfig, target_entropy: float) -> Callable:
    """A jitted (state, batches with a leading block axis, key) -> (state, mean critic loss)."""

    def one_step(carry, batch):
        state, key = carry
        key, k_next, k_actor = jax.random.split(key, 3)
        actor, critic = state.actor, state.critic
        alpha = sac.temperature(state.temp)
        next_dist = actor.apply_fn({"params": actor.params}, batch["next_obs"])
        next_actions, next_log_probs = next_dist.sample_and_log_prob(k_next)
        next_qs = critic.apply_fn({"params": state.target}, batch["next_obs"], next_actions)
        y = batch["rewards"] + cfg.gamma * batch["masks"] * (
            next_qs.min(axis=0) - alpha * next_log_probs
        )
        critic, metrics = sac.critic_step(
            critic, lambda p: critic.apply_fn({"params": p}, batch["obs"], batch["actions"]), y
        )
        target = sac.target_update(critic.params, state.target, cfg.tau)
        actor, log_probs, _ = sac.actor_step(
            actor,
            lambda p: actor.apply_fn({"params": p}, batch["obs"]),
            lambda a: critic.apply_fn({"params": critic.params}, batch["obs"], a),
            alpha,
            "min",
            k_actor,
        )
        temp, _ = sac.temperature_step(state.temp, log_probs, target_entropy)
        return (SACState(actor, critic, target, temp), key), metrics["critic_loss"]

    @jax.jit
    def update(state, batches, key):
        (state, _), losses = jax.lax.scan(one_step, (state, key), batches)
        return state, losses.mean()

    return update


@jax.jit
def _act(actor, obs, key):
    dist = actor.apply_fn({"params": actor.params}, obs[None])
    return dist.sample(key)[0], dist.mode()[0]


class Replay:
    """A flat numpy replay buffer of (obs, action, reward, mask, next_obs)."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.masks = np.zeros(capacity, np.float32)
        self.size = 0

    def add(self, obs, action, reward, terminated, next_obs):
        i = self.size
        self.obs[i], self.actions[i], self.next_obs[i] = obs, action, next_obs
        self.rewards[i], self.masks[i] = reward, 0.0 if terminated else 1.0
        self.size += 1

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, shape)
        return {
            "obs": self.obs[idx],
            "actions": self.actions[idx],
            "rewards": self.rewards[idx],
            "masks": self.masks[idx],
            "next_obs": self.next_obs[idx],
        }


def rollout(
    env, act: Callable[[np.ndarray], np.ndarray], seed: int, max_steps: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """One episode: states (L, d), actions (L, a), rewards (L,), terminated."""
    obs, _ = env.reset(seed=seed)
    states, actions, rewards = [], [], []
    for _ in range(max_steps):
        action = np.asarray(act(obs), np.float32)
        states.append(np.asarray(obs, np.float32))
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return np.stack(states), np.stack(actions), np.asarray(rewards, np.float32), bool(terminated)


def sampling_policy(actor, key: jax.Array) -> Callable[[np.ndarray], np.ndarray]:
    """obs -> a sampled action (the policy's own stochasticity), keys split per call."""
    state = {"key": key}

    def act(obs):
        state["key"], sub = jax.random.split(state["key"])
        return np.asarray(_act(actor, jnp.asarray(obs, jnp.float32), sub)[0])

    return act


def train_until(
    cfg: ActionSACConfig, log: Callable[[str], None] = print
) -> tuple[SACState, list[dict]]:
    """SAC on Hopper-v5 until the sampled policy's mean eval return first reaches
    `cfg.target_return` (or `cfg.max_env_steps`). Returns the state and the eval history."""
    import gymnasium as gym

    env, eval_env = gym.make(ENV_ID), gym.make(ENV_ID)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    state = init_sac(cfg, obs_dim, action_dim)
    update = _sac_update(cfg, target_entropy=-float(action_dim))  # SAC's default, -|A|
    replay = Replay(cfg.max_env_steps, obs_dim, action_dim)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.PRNGKey(cfg.seed + 1)
    history, episode, start = [], 0, time.time()
    obs, _ = env.reset(seed=cfg.seed * 100_000)
    loss = float("nan")
    for step in range(1, cfg.max_env_steps + 1):
        if step <= cfg.random_steps:
            action = rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
        else:
            key, sub = jax.random.split(key)
            action = np.asarray(_act(state.actor, jnp.asarray(obs, jnp.float32), sub)[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, action, reward, terminated, next_obs)
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=cfg.seed * 100_000 + episode)
        if step >= cfg.random_steps and step % cfg.block == 0:
            key, sub = jax.random.split(key)
            state, loss = update(state, replay.sample(rng, (cfg.block, cfg.batch_size)), sub)
        if step % cfg.eval_every == 0:
            key, sub = jax.random.split(key)
            act = sampling_policy(state.actor, sub)
            returns = [
                float(rollout(eval_env, act, seed=900_000 + cfg.seed * 1000 + i)[2].sum())
                for i in range(cfg.eval_episodes)
            ]
            history.append({"env_steps": step, "mean_return": float(np.mean(returns))})
            log(
                f"env step {step:7d}  eval return {np.mean(returns):7.1f}  "
                f"critic loss {float(loss):.3f}  {time.time() - start:6.0f}s"
            )
            if np.mean(returns) >= cfg.target_return:
                break
    env.close()
    eval_env.close()
    return state, history


def collect_dataset(
    actor, num_steps: int, seed: int, log: Callable[[str], None] = print
) -> dict[str, np.ndarray]:
    """Whole episodes of the sampled policy until `num_steps` transitions: DPPO's npz keys
    (states, actions, traj_lengths) plus rewards and terminals."""
    import gymnasium as gym

    env = gym.make(ENV_ID)
    act = sampling_policy(actor, jax.random.PRNGKey(seed + 7))
    parts, total, episode = [], 0, 0
    while total < num_steps:
        states, actions, rewards, terminated = rollout(
            env, act, seed=500_000 + seed * 10_000 + episode
        )
        parts.append((states, actions, rewards, terminated))
        total += len(states)
        episode += 1
        if episode % 20 == 0:
            log(f"dataset: {episode} episodes, {total} steps")
    env.close()
    terminals = [np.eye(1, len(s), len(s) - 1)[0] * t for s, _, _, t in parts]
    return {
        "states": np.concatenate([p[0] for p in parts]),
        "actions": np.concatenate([p[1] for p in parts]),
        "rewards": np.concatenate([p[2] for p in parts]),
        "terminals": np.concatenate(terminals).astype(np.bool_),
        "traj_lengths": np.asarray([len(p[0]) for p in parts], np.int64),
        "episode_returns": np.asarray([p[2].sum() for p in parts], np.float32),
    }
