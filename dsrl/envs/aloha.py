"""Aloha TransferCube (gym-aloha 0.1.5, dm_control) behind the dsrl Env contract.

Observation keys returned by `reset` / `step`:
  For the SAC agent:
    "pixels": uint8 (image_size, image_size, 3), the `top` camera resized. The DSRL reference
        stretches the 480x640 frame to 64x64 (`agent_resize="stretch"`, the default);
        `agent_resize="pad"` letterboxes it instead and keeps the aspect ratio.
    "state": float32 (14,), gym-aloha's `agent_pos` (joint positions, normalised grippers).
  For the base policy (Pi0 `pi0_aloha_sim`):
    "cam_high": uint8 (policy_image_size, policy_image_size, 3), the `top` camera
        resize_with_pad'ed (480x640 -> 168x224 between black bars), as openpi's client does.
    "prompt": str, "Transfer cube" (pi0_aloha_sim's default prompt).

Speed. gym-aloha's task renders three 480x640 cameras every step although it returns only `top`;
this wrapper builds the same task with an observation function that renders `top` only (~3x
faster, same returned image) and renders nothing on `step(action, render=False)`. On skipped
steps the image keys repeat the last rendered images and must not be shown to a policy.

Rewards follow gym-aloha: 0..4 by stage (touched, lifted, transfer attempted, transferred);
success, and termination, is reward == 4.

dm_control picks its GL backend at import, so this module sets MUJOCO_GL=egl (unless already set)
before importing it. Do not render Aloha and LIBERO in the same process: after robosuite creates
its EGL context, dm_control silently renders wrong images. The VectorEnv keeps each env in its
own subprocess.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import collections  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from dsrl.envs.base import Env, EnvSpec, Observation  # noqa: E402
from dsrl.envs.image_utils import resize, resize_with_pad  # noqa: E402

TOP_CAMERA = "top"
MAX_REWARD = 4.0
PROMPT = "Transfer cube"


def _make_task(render_size: tuple[int, int]):
    """gym-aloha's TransferCubeTask with an observation that renders only the top camera."""
    from gym_aloha.tasks.sim import TransferCubeTask

    class TopCameraTransferCubeTask(TransferCubeTask):
        render_enabled = True

        def get_observation(self, physics):
            obs = collections.OrderedDict()
            obs["qpos"] = self.get_qpos(physics)
            obs["qvel"] = self.get_qvel(physics)
            obs["env_state"] = self.get_env_state(physics)
            if self.render_enabled:
                height, width = render_size
                obs["images"] = {TOP_CAMERA: physics.render(height, width, camera_id=TOP_CAMERA)}
            return obs

    return TopCameraTransferCubeTask()


def _refuse_process_with_robosuite_gl() -> None:
    """Fails loudly where dm_control would silently render garbage (see the module docstring)."""
    egl = sys.modules.get("robosuite.renderers.context.egl_context")
    if egl is not None and getattr(egl, "EGL_DISPLAY", None) is not None:
        raise RuntimeError(
            "AlohaEnv cannot render in this process: robosuite (LIBERO) already created its EGL "
            "context here, after which dm_control silently returns wrong images. Build the Aloha "
            "env in its own process, e.g. VectorEnv([functools.partial(make_env, 'aloha')])."
        )


class AlohaEnv(Env):
    """Aloha bimanual cube transfer. See the module docstring for observation keys.

    Args:
      image_size: side of the agent's "pixels" (the reference uses 64).
      agent_resize: "stretch" (the reference, aspect distorted) or "pad" (letterbox).
      policy_image_size: side of the base-policy "cam_high" image (Pi0 wants 224).
      render_size: (height, width) of the top camera render; gym-aloha's is (480, 640).
      max_episode_steps: 400 in the DSRL reference (gym-aloha registers 300).
      seed: seeds the cube positions of resets called with seed=None.
    """

    video_key = "cam_high"

    def __init__(
        self,
        image_size: int = 64,
        agent_resize: str = "stretch",
        policy_image_size: int = 224,
        render_size: tuple[int, int] = (480, 640),
        max_episode_steps: int = 400,
        seed: int | None = None,
    ):
        from dm_control import mujoco
        from dm_control.rl import control
        from gym_aloha.constants import ASSETS_DIR, DT

        _refuse_process_with_robosuite_gl()
        if agent_resize not in ("stretch", "pad"):
            raise ValueError(f"agent_resize must be 'stretch' or 'pad', got {agent_resize!r}.")
        self._image_size = int(image_size)
        self._agent_resize = agent_resize
        self._policy_image_size = int(policy_image_size)
        self._rng = np.random.default_rng(seed)
        physics = mujoco.Physics.from_xml_path(
            str(ASSETS_DIR / "bimanual_viperx_transfer_cube.xml")
        )
        self._task = _make_task(tuple(render_size))
        # Same construction as gym-aloha (its time limit is infinite; ours is max_episode_steps).
        self._env = control.Environment(
            physics,
            self._task,
            time_limit=float("inf"),
            control_timestep=DT,
            n_sub_steps=None,
            flat_observation=False,
        )
        self.spec = EnvSpec(
            name="aloha/transfer_cube",
            observation_spec={
                "pixels": ((self._image_size, self._image_size, 3), np.uint8),
                "state": ((14,), np.float32),
            },
            action_dim=14,
            max_episode_steps=int(max_episode_steps),
            max_reward=MAX_REWARD,
            prompt=PROMPT,
            video_key=self.video_key,
        )
        self._elapsed = 0
        self._episode_over = True
        self._images: dict[str, np.ndarray] = {}
        self.last_raw_observation: dict[str, Any] = {}

    @property
    def physics(self):
        """The dm_control Physics (e.g. to place the cube in tests)."""
        return self._env.physics

    def _observation(self, raw: dict[str, Any]) -> Observation:
        self.last_raw_observation = raw
        if "images" in raw:
            top = raw["images"][TOP_CAMERA]
            side, size = self._image_size, self._policy_image_size
            agent = (
                resize(top, side, side, "bicubic")
                if self._agent_resize == "stretch"
                else resize_with_pad(top, side, side)
            )
            self._images = {"pixels": agent, "cam_high": resize_with_pad(top, size, size)}
        state = np.asarray(raw["qpos"], dtype=np.float32)
        return {**self._images, "state": state, "prompt": PROMPT}

    def reset(self, seed: int | None = None) -> Observation:
        from gym_aloha.tasks import sim as aloha_sim
        from gym_aloha.utils import sample_box_pose

        if seed is None:
            seed = int(self._rng.integers(2**31))
        # gym-aloha's task reads the cube pose from a module-level slot at reset (one env per
        # process, so the global is ours); the pose is a pure function of the seed.
        aloha_sim.BOX_POSE[0] = sample_box_pose(seed)
        self._task.random.seed(seed)
        self._task.render_enabled = True
        timestep = self._env.reset()
        self._elapsed = 0
        self._episode_over = False
        return self._observation(timestep.observation)

    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        action = self._checked_action(action, self._episode_over)
        self._task.render_enabled = render
        timestep = self._env.step(action)
        self._elapsed += 1
        reward = float(timestep.reward)
        success = reward == MAX_REWARD
        truncated = not success and self._elapsed >= self.spec.max_episode_steps
        self._episode_over = success or truncated
        return (
            self._observation(timestep.observation),
            reward,
            success,
            truncated,
            {"success": success},
        )

    def render_current(self) -> Observation:
        """The observation of the current state with a freshly rendered top camera."""
        self._task.render_enabled = True
        return self._observation(self._task.get_observation(self.physics))

    def task_reward(self) -> float:
        """The task's own staged reward (0..4) for the current physics state."""
        return float(self._task.get_reward(self.physics))
