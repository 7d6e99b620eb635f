"""The demo task dressed as a LIBERO env, so that Pi0 can drive it without any simulator asset.

What it is for: timing the training loop with the full-size Pi0 where LIBERO's and robosuite's
assets (over 1 GB) cannot go, e.g. `scripts/gpu_check.py`'s loop section on a lent GPU machine
without network. It learns nothing useful: a random-weight Pi0 moves the demo agent at random.
For learning, use `demo` (with its flow MLP) or `libero`.

It keeps LIBERO's layout (`dsrl.envs.libero`), so that the LIBERO preset and Pi0's "libero" robot
transforms run on it unchanged:
  "pixels": uint8 (image_size, image_size, 3), the demo render (a multiple of 16);
  "state": float32 (8,), the demo's [x, y, vx, vy] padded with zeros to LIBERO's 8 dims;
  "agentview_image", "wrist_image": uint8 (policy_image_size, policy_image_size, 3), the render
      scaled up (nearest neighbour), the wrist view shifted so that the two cameras differ;
  "prompt": a fixed instruction.
Actions are LIBERO's 7-d; the first two drive the demo agent, the rest are ignored. Rewards,
success and episode ends are the demo task's. `suite`, `task_id` and `init_state`, which the
LIBERO preset sets, are accepted and ignored: there is only one task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation
from dsrl.envs.demo import DemoEnv

ACTION_DIM = 7  # LIBERO's: eef delta-pos 3, axis-angle 3, gripper 1
STATE_DIM = 8  # LIBERO's agent state
PROMPT = "move to the goal that the coloured strip points at"
_LIBERO_TASK_KWARGS = ("suite", "task_id", "init_state")


class DemoPi0Env(Env):
    """See the module docstring."""

    def __init__(
        self,
        image_size: int = 64,
        policy_image_size: int = 224,
        max_episode_steps: int = 48,
        **libero_task: Any,
    ):
        unknown = sorted(set(libero_task) - set(_LIBERO_TASK_KWARGS))
        if unknown:
            raise TypeError(
                f"DemoPi0Env got unknown option(s) {unknown}; valid options: image_size, "
                f"policy_image_size, max_episode_steps (and, ignored, {list(_LIBERO_TASK_KWARGS)})."
            )
        if policy_image_size < 1:
            raise ValueError(f"DemoPi0Env: policy_image_size={policy_image_size} must be >= 1.")
        self._demo = DemoEnv(image_size=image_size, max_episode_steps=max_episode_steps)
        self._policy_size = policy_image_size
        # Nearest-neighbour index of each policy pixel in the agent render.
        self._rows = np.linspace(0, image_size - 1, policy_image_size).round().astype(int)
        self.spec = EnvSpec(
            name="demo_pi0",
            observation_spec={
                "pixels": ((image_size, image_size, 3), np.uint8),
                "state": ((STATE_DIM,), np.float32),
            },
            action_dim=ACTION_DIM,
            max_episode_steps=max_episode_steps,
            max_reward=1.0,
            prompt=PROMPT,
            video_key="agentview_image",
        )
        self._images: dict[str, np.ndarray] = {}
        self._episode_over = True

    def reset(self, seed: int | None = None) -> Observation:
        self._episode_over = False
        return self._observation(self._demo.reset(seed=seed), rendered=True)

    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        action = self._checked_action(action, self._episode_over)
        obs, reward, terminated, truncated, info = self._demo.step(action[:2], render=render)
        self._episode_over = terminated or truncated
        return self._observation(obs, rendered=render), reward, terminated, truncated, info

    def _observation(self, demo_obs: Observation, rendered: bool) -> Observation:
        if rendered or not self._images:
            pixels = demo_obs["pixels"]
            big = pixels[self._rows][:, self._rows]
            self._images = {
                "pixels": pixels,
                "agentview_image": big,
                "wrist_image": np.ascontiguousarray(np.roll(big, self._policy_size // 8, axis=1)),
            }
        state = np.zeros(STATE_DIM, np.float32)
        state[:4] = demo_obs["state"]
        return {**self._images, "state": state, "prompt": PROMPT}
