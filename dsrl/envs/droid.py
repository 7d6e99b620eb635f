"""A real Franka robot through DROID's `RobotEnv`, behind our Env contract.

    env = DroidEnv(DroidConfig(left_camera_id="2455...", right_camera_id="2662...",
                               wrist_camera_id="1383..."), keyboard=TerminalKeyboard())

Robot: `droid.robot_env.RobotEnv(action_space="joint_velocity", gripper_action_space="position")`,
imported lazily (DROID is not on PyPI; `make_robot_env` says how to install it). Actions are 8-d:
7 joint velocities and the gripper position, clipped to [-1, 1] (RobotEnv asserts that range),
the gripper optionally binarised at 0.5 like the reference. `step` keeps `control_hz` (15 Hz).

Observations (each camera's ZED left stream, alpha dropped, BGR -> RGB):
  "pixels": uint8 (S, S, 9) = left, right, wrist cameras, each resized-with-pad to S (128),
            stacked on channels (the agent's view);
  "state":  float32 (8 + F,) = joint positions (7), gripper position (1), then the optional
            F-dim Pi0 prefix feature (`prefix_feature_fn`, e.g. `RemotePolicy.prefix_feature`);
  base-policy keys (openpi's DROID names): "observation/exterior_image_1_left" (the
  `exterior_camera`, 224x224 resized-with-pad), "observation/wrist_image_left",
  "observation/joint_position" (7,), "observation/gripper_position" (1,), "prompt".

Operator protocol (a `dsrl.envs.keyboard.Keyboard`): `reset` pauses until the operator has reset
the scene and pressed Enter; during an episode `q` stops it early; when an episode ends (q or
`max_episode_steps`) the operator labels it `1` (success) or `0` (failure). A success ends the
episode as terminated with reward 1 and info["success"] True; a failure as truncated (the agent
bootstraps). Nothing enters a debugger.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dsrl.envs.base import Env, EnvSpec, Observation
from dsrl.envs.image_utils import resize_with_pad
from dsrl.envs.keyboard import ENTER_KEYS, Keyboard

DROID_INSTALL_HINT = (
    "DROID is not installed (it is not on PyPI). On the robot's control computer: "
    "`git clone https://github.com/droid-dataset/droid && pip install -e droid`, then follow "
    "DROID's hardware setup (Franka NUC / polymetis server, ZED SDK, camera calibration). "
    "See docs/real_robot.md."
)
CAMERAS = ("left", "right", "wrist")
STATE_DIM = 8  # 7 joint positions + gripper position
ACTION_DIM = 8  # 7 joint velocities + gripper position


@dataclasses.dataclass(frozen=True)
class DroidConfig:
    left_camera_id: str = ""
    right_camera_id: str = ""
    wrist_camera_id: str = ""
    prompt: str = "put the spoon on the plate"
    image_size: int = 128  # side of the agent's "pixels"
    policy_image_size: int = 224
    # Which exterior camera Pi0 sees as "exterior_image_1_left" (the reference used the right one).
    exterior_camera: str = "right"
    control_hz: float = 15.0  # <= 0: no rate limiting (simulated robots, tests)
    max_episode_steps: int = 200
    binarize_gripper: bool = True
    # Dims of the Pi0 prefix feature appended to "state" (0 = none; Pi0's width is 2048).
    prefix_feature_dim: int = 0

    def __post_init__(self):
        if self.exterior_camera not in ("left", "right"):
            raise ValueError(
                f"exterior_camera must be 'left' or 'right', got {self.exterior_camera!r}"
            )
        if self.image_size <= 0 or self.policy_image_size <= 0 or self.max_episode_steps <= 0:
            raise ValueError("image sizes and max_episode_steps must be positive")
        if self.prefix_feature_dim < 0:
            raise ValueError("prefix_feature_dim must be >= 0")

    def camera_ids(self) -> dict[str, str]:
        ids = {
            "left": self.left_camera_id,
            "right": self.right_camera_id,
            "wrist": self.wrist_camera_id,
        }
        missing = [name for name, cid in ids.items() if not cid]
        if missing:
            raise ValueError(
                f"camera id(s) for {missing} not set: pass left/right/wrist_camera_id (the ZED "
                "serial numbers; run_real.sh reads LEFT_CAMERA_ID, RIGHT_CAMERA_ID, "
                "WRIST_CAMERA_ID)"
            )
        return ids


def make_robot_env() -> Any:
    """DROID's RobotEnv in joint-velocity mode (imported here so the package never needs it)."""
    try:
        from droid.robot_env import RobotEnv
    except ImportError as e:
        raise ImportError(f"{DROID_INSTALL_HINT} ({e})") from None
    return RobotEnv(action_space="joint_velocity", gripper_action_space="position")


def extract_observation(raw: Mapping[str, Any], camera_ids: Mapping[str, str]) -> dict[str, Any]:
    """DROID `get_observation()` -> {"left"/"right"/"wrist": RGB uint8 (H,W,3), "joints" (7,),
    "gripper" (1,)}. Each camera is read from its ZED left stream (key "<serial>_left")."""
    images = raw.get("image", {})
    out: dict[str, Any] = {}
    for name, cid in camera_ids.items():
        keys = [k for k in images if str(cid) in k and "left" in k]
        if not keys:
            raise KeyError(
                f"no image for the {name} camera (id {cid!r}) in the robot observation; "
                f"available: {sorted(images)}. Check the camera id environment variables."
            )
        bgr = np.asarray(images[keys[0]])[..., :3]
        out[name] = np.ascontiguousarray(bgr[..., ::-1])
    state = raw["robot_state"]
    out["joints"] = np.asarray(state["joint_positions"], np.float32).reshape(7)
    out["gripper"] = np.asarray(state["gripper_position"], np.float32).reshape(1)
    return out


class DroidEnv(Env):
    """Env contract over a DROID RobotEnv (or anything with its `reset/step/get_observation`)."""

    def __init__(
        self,
        config: DroidConfig,
        *,
        robot: Any | None = None,
        keyboard: Keyboard,
        prefix_feature_fn: Callable[[Observation], np.ndarray] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        printer: Callable[[str], None] | None = None,
    ):
        if (prefix_feature_fn is None) != (config.prefix_feature_dim == 0):
            raise ValueError(
                "prefix_feature_dim > 0 needs a prefix_feature_fn and vice versa (the state "
                "layout must be declared up front: 8 + prefix_feature_dim)"
            )
        self.config = config
        self._camera_ids = config.camera_ids()
        self.robot = robot if robot is not None else make_robot_env()
        self.keyboard = keyboard
        self.prefix_feature_fn = prefix_feature_fn
        self._clock, self._sleep = clock, sleep
        self._print = printer or (lambda text: print(text, flush=True))
        s = config.image_size
        self.spec = EnvSpec(
            name="droid",
            observation_spec={
                "pixels": ((s, s, 3 * len(CAMERAS)), np.uint8),
                "state": ((STATE_DIM + config.prefix_feature_dim,), np.float32),
            },
            action_dim=ACTION_DIM,
            max_episode_steps=config.max_episode_steps,
            max_reward=1.0,
            prompt=config.prompt,
        )
        self._steps = 0
        self._next_step_time = 0.0
        self._last_obs: Observation | None = None
        self.episodes = 0

    # ------------------------------------------------------------------------------- env API

    def reset(self, seed: int | None = None) -> Observation:
        """Pause for the operator's scene reset, then home the robot. `seed` is ignored."""
        del seed
        from dsrl.utils.interrupt import interruptible

        with interruptible():  # Ctrl-C here stops the run now, not after an Enter
            self.keyboard.wait(
                ENTER_KEYS,
                f"[dsrl] episode {self.episodes + 1}: reset the scene, then press Enter to start",
            )
        self.robot.reset()
        self._steps = 0
        self._next_step_time = self._clock()
        self._last_obs = self._observe()
        return self._last_obs

    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self._last_obs is None:
            raise RuntimeError("DroidEnv.step before reset()")
        action = np.asarray(action, np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"DROID action must be 8 finite numbers (7 joint velocities + gripper), got "
                f"shape {action.shape}"
            )
        action = np.clip(action, -1.0, 1.0)
        if self.config.binarize_gripper:
            action[-1] = 1.0 if action[-1] > 0.5 else 0.0
        self._wait_for_tick()
        self.robot.step(action)
        self._steps += 1
        stopped = self.keyboard.poll() == "q"
        done = stopped or self._steps >= self.config.max_episode_steps
        # Render the observation that ends the episode too: it is the last next_observation.
        obs = self._observe() if (render or done) else self._last_obs
        self._last_obs = obs
        success = False
        if done:
            self.episodes += 1
            why = "stopped by operator" if stopped else f"{self._steps} steps"
            key = self.keyboard.wait(
                ("1", "0"), f"[dsrl] episode over ({why}). Success? press 1 (yes) or 0 (no)"
            )
            success = key == "1"
        info = {"success": success, "stopped_by_operator": stopped}
        return obs, float(success), success, done and not success, info

    def close(self) -> None:
        self.keyboard.close()

    # ------------------------------------------------------------------------------- helpers

    def _wait_for_tick(self) -> None:
        if self.config.control_hz <= 0:
            return
        now = self._clock()
        if self._next_step_time > now:
            self._sleep(self._next_step_time - now)
            now = self._next_step_time
        self._next_step_time = now + 1.0 / self.config.control_hz

    def _observe(self) -> Observation:
        cfg = self.config
        raw = extract_observation(self.robot.get_observation(), self._camera_ids)
        s, p = cfg.image_size, cfg.policy_image_size
        pixels = np.concatenate([resize_with_pad(raw[name], s, s) for name in CAMERAS], axis=-1)
        obs: Observation = {
            "pixels": pixels,
            "observation/exterior_image_1_left": resize_with_pad(raw[cfg.exterior_camera], p, p),
            "observation/wrist_image_left": resize_with_pad(raw["wrist"], p, p),
            "observation/joint_position": raw["joints"],
            "observation/gripper_position": raw["gripper"],
            "prompt": cfg.prompt,
        }
        state = [raw["joints"], raw["gripper"]]
        if self.prefix_feature_fn is not None:
            feature = np.asarray(self.prefix_feature_fn(obs), np.float32).reshape(-1)
            if feature.shape != (cfg.prefix_feature_dim,):
                raise ValueError(
                    f"prefix feature has {feature.size} dims but prefix_feature_dim="
                    f"{cfg.prefix_feature_dim}; set it to the policy's width (Pi0: 2048)"
                )
            state.append(feature)
        obs["state"] = np.concatenate(state).astype(np.float32)
        return obs


class SimulatedRobotEnv:
    """DROID's RobotEnv interface backed by the demo task, for dry runs and tests.

    `step` takes the 8-d joint-velocity action and drives the demo agent with its first two
    dims; `get_observation` returns DROID's layout: BGRA images under "<serial>_left" for each
    camera (the demo's render, upscaled) and "robot_state" with joint/gripper/cartesian state.

    Like a real arm, it has no episodes of its own: the operator (DroidEnv) decides when one
    ends. The demo task does end (at its goal, or after `max_episode_steps`); from then on the
    simulated robot holds still until the next `reset`, whatever the preset's episode length.
    """

    def __init__(
        self,
        camera_ids: Mapping[str, str],
        image_shape=(90, 160),
        seed: int = 0,
        max_episode_steps: int = 200,
    ):
        from dsrl.envs.demo import DemoEnv

        self._demo = DemoEnv(max_episode_steps=max_episode_steps)
        self._camera_ids = dict(camera_ids)
        self._image_shape = image_shape
        self._seed = seed
        self._obs = self._demo.reset(seed=seed)
        self.resets = 0
        self.actions: list[np.ndarray] = []

    def reset(self, randomize: bool = False) -> None:
        self.resets += 1
        self._obs = self._demo.reset(seed=self._seed + self.resets)

    def step(self, action: np.ndarray) -> dict:
        action = np.asarray(action)
        assert action.shape == (ACTION_DIM,) and action.max() <= 1 and action.min() >= -1
        self.actions.append(action.copy())
        if not self._demo.state.done:  # after the demo task ended the arm holds still
            self._obs, *_ = self._demo.step(action[:2].astype(np.float32), render=True)
        return {}

    def get_observation(self) -> dict:
        h, w = self._image_shape
        rgb = self._obs["pixels"]
        rows = np.linspace(0, rgb.shape[0] - 1, h).astype(int)
        cols = np.linspace(0, rgb.shape[1] - 1, w).astype(int)
        big = rgb[rows][:, cols]
        bgra = np.concatenate([big[..., ::-1], np.full((h, w, 1), 255, np.uint8)], axis=-1)
        images = {}
        for i, cid in enumerate(self._camera_ids.values()):
            images[f"{cid}_left"] = np.roll(bgra, 7 * i, axis=1)  # distinguishable views
            images[f"{cid}_right"] = bgra
        state = self._obs["state"]
        joints = np.zeros(7, np.float32)
        joints[: state.size] = state
        return {
            "image": images,
            "robot_state": {
                "joint_positions": joints.tolist(),
                "gripper_position": 0.0,
                "cartesian_position": [0.0] * 6,
            },
        }
