"""Env wrappers the run builder applies by config.

`DropAgentState` is the reference's `--add_states 0`: the agent sees the image only. Its "state"
becomes a zero-length vector (the learner's networks then concatenate nothing after the image
features), while the base policy keeps reading the robot state under a key its transforms accept
(`policy_state_key`, e.g. LIBERO's "observation/state", Aloha's "agent_pos"), so Pi0 is unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dsrl.envs.base import Env, Observation

# Where each env's base policy finds the robot state once the agent's "state" is emptied. The
# demo's flow policy reads its own "policy_state" and Pi0-DROID its "observation/joint_position"
# keys: nothing to keep for them.
POLICY_STATE_KEYS = {"libero": "observation/state", "aloha": "agent_pos"}


class DropAgentState(Env):
    """`env` with the agent's "state" replaced by float32 (0,) (and kept for the base policy
    under `policy_state_key` when given)."""

    def __init__(self, env: Env, policy_state_key: str | None = None):
        self.env = env
        self.policy_state_key = policy_state_key
        spec = dict(env.spec.observation_spec)
        spec["state"] = ((0,), np.float32)
        self.spec = dataclasses.replace(env.spec, observation_spec=spec)

    def _drop(self, obs: Observation) -> Observation:
        obs = dict(obs)
        if self.policy_state_key:
            obs.setdefault(self.policy_state_key, obs["state"])
        obs["state"] = np.zeros((0,), np.float32)
        return obs

    def reset(self, seed: int | None = None) -> Observation:
        return self._drop(self.env.reset(seed))

    def step(self, action: np.ndarray, render: bool = True):
        obs, reward, terminated, truncated, info = self.env.step(action, render=render)
        return self._drop(obs), reward, terminated, truncated, info

    def __getattr__(self, name: str) -> Any:  # render_current, task attributes, ...
        if name == "env":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        attr = getattr(self.env, name)
        if name == "render_current" and callable(attr):
            return lambda *a, **k: self._drop(attr(*a, **k))
        return attr

    def close(self) -> None:
        self.env.close()


def make_agent_env(name: str, add_states: bool = True, **kwargs: Any) -> Env:
    """`dsrl.envs.make_env(name, **kwargs)`, without the agent's state unless `add_states`
    (a module-level function: env workers are built from it in fresh processes)."""
    from dsrl.envs import make_env

    env = make_env(name, **kwargs)
    if add_states:
        return env
    return DropAgentState(env, POLICY_STATE_KEYS.get(name))
