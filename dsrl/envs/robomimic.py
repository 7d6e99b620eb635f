"""Robosuite Lift / PickPlaceCan / NutAssemblySquare with robomimic's low-dimensional
observations, as a state-based DSRL env.

Robomimic's low-dim datasets (and DPPO's and the authors' DSRL runs on them) read four keys,
in this order: robot0_eef_pos (3), robot0_eef_quat (4), robot0_gripper_qpos (2) and "object"
(robosuite's "object-state": 10 for Lift, 14 for Can and Square), so the state is 19 / 23 / 23-d.
The robot is a Panda under robosuite's OSC_POSE controller at 20 Hz (robomimic's setting); the
7-d action is a delta pose + gripper in [-1, 1].

Reward, as the release defines it: robosuite's sparse reward (1 while the task is solved, else
0) minus `reward_offset` (1), so -1 per step and 0 on solved steps, summed over the executed
chunk (`reward_convention="env_sum"`). A success does not end the episode: it runs to its time
limit (300 steps for Lift and Can, 400 for Square), as in the release. info["success"] says
whether the task is solved at that step. `end_on_success=True` (the CPU proofs) ends the episode
at the first solved step instead (terminated, mask 0): the release's remaining steps would earn
0 each while the object stays put, and a CPU pays for every simulated step.

Observation: {"state": float32 (d,), "policy_state": the same vector for the base policy};
`normalization_path` (DPPO's normalization.npz) maps it to [-1, 1] and actions from [-1, 1].
`agent_obs="robot_state"` gives the DSRL agent the robot's 9 entries alone (end-effector
position and quaternion, gripper fingers, normalized as above): nothing of the object, so at
the first query every placement looks the same to its critic, which then has to score the latent
(the LIBERO band preset's `agent_obs`); the base policy still reads the whole vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation
from dsrl.envs.state_common import POLICY_STATE, MinMaxNormalization, state_observation

# Short names (the release's) -> (robosuite env, release episode length).
ROBOMIMIC_TASKS = {
    "lift": ("Lift", 300),
    "can": ("PickPlaceCan", 300),
    "square": ("NutAssemblySquare", 400),
}
LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
ROBOT_DIM = 9  # the first three keys: 3 + 4 + 2
AGENT_OBS = ("full", "robot_state")
# robomimic's "object" is robosuite's "object-state" observable.
_ROBOSUITE_KEYS = {"object": "object-state"}
ACTION_DIM = 7


def low_dim_state(raw: dict[str, np.ndarray]) -> np.ndarray:
    """robomimic's low-dim vector from a robosuite observation dict."""
    return np.concatenate([np.ravel(raw[_ROBOSUITE_KEYS.get(k, k)]) for k in LOW_DIM_KEYS])


class RobomimicEnv(Env):
    """One robosuite env with robomimic's low-dim observation (see the module docstring)."""

    def __init__(
        self,
        task: str = "can",
        max_episode_steps: int | None = None,
        normalization_path: str | None = None,
        reward_offset: float = 1.0,
        seed: int | None = None,
        end_on_success: bool = False,
        agent_obs: str = "full",
    ):
        if agent_obs not in AGENT_OBS:
            raise ValueError(
                f"RobomimicEnv: agent_obs={agent_obs!r} is not one of {AGENT_OBS} ('full': the "
                "whole low-dim state; 'robot_state': the robot's 9 entries alone)"
            )
        self._agent_dim = ROBOT_DIM if agent_obs == "robot_state" else None
        if task not in ROBOMIMIC_TASKS:
            raise ValueError(
                f"unknown Robomimic task {task!r}; choose one of {sorted(ROBOMIMIC_TASKS)}"
            )
        env_name, default_steps = ROBOMIMIC_TASKS[task]
        steps = default_steps if max_episode_steps is None else int(max_episode_steps)
        if steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        import robosuite  # imported here: the registry must not import simulators
        from robosuite.controllers import load_controller_config

        self._env = robosuite.make(
            env_name,
            robots="Panda",
            controller_configs=load_controller_config(default_controller="OSC_POSE"),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            reward_shaping=False,
            control_freq=20,
            ignore_done=True,  # our step counter owns the time limit
            hard_reset=False,
        )
        raw = self._env.reset()
        obs_dim = int(low_dim_state(raw).shape[0])
        self._norm = MinMaxNormalization(normalization_path, obs_dim, ACTION_DIM, task)
        self._reward_offset = float(reward_offset)
        self._end_on_success = bool(end_on_success)
        self.spec = EnvSpec(
            name=f"robomimic_{task}",
            observation_spec={
                "state": ((self._agent_dim or obs_dim,), np.float32),
                POLICY_STATE: ((obs_dim,), np.float32),
            },
            action_dim=ACTION_DIM,
            max_episode_steps=steps,
            max_reward=1.0 - self._reward_offset,
            reward_convention="env_sum",
        )
        self._seed = seed
        self._steps = 0
        self._over = True

    def reset(self, seed: int | None = None) -> Observation:
        seed = self._seed if seed is None and self._seed is not None else seed
        self._seed = None  # the constructor's seed applies to the first episode only
        if seed is not None:
            # robosuite 1.4 draws object placements from numpy's global generator.
            np.random.seed(int(seed))  # noqa: NPY002 - the generator robosuite reads
        raw = self._env.reset()
        self._steps, self._over = 0, False
        return self._observation(raw)

    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        action = self._checked_action(action, self._over)
        action = np.clip(self._norm.action(action), -1.0, 1.0)
        raw, _, _, _ = self._env.step(action)
        self._steps += 1
        success = bool(self._env._check_success())
        reward = float(success) - self._reward_offset
        terminated = success and self._end_on_success
        truncated = not terminated and self._steps >= self.spec.max_episode_steps
        self._over = terminated or truncated
        obs = self._observation(raw)
        return obs, reward, terminated, truncated, {"success": success}

    def _observation(self, raw: dict[str, np.ndarray]) -> Observation:
        obs = state_observation(self._norm.observation(low_dim_state(raw)))
        if self._agent_dim is not None:
            obs["state"] = obs["state"][: self._agent_dim].copy()
        return obs

    def check_success(self) -> bool:
        return bool(self._env._check_success())

    def close(self) -> None:
        self._env.close()
