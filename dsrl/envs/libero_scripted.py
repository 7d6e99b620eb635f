"""A LIBERO pick-and-place task with low-dimensional object poses, and its scripted demonstrator.

This is what the CPU proof on a real simulator runs on (`--env libero_cpu`): a real LIBERO task
(by default libero_object task 8, "pick up the chocolate pudding and place it in the basket"), a base
policy that this repository trains itself from scripted demonstrations, and DSRL steering it.

`LiberoPickPlaceEnv` is a `LiberoEnv` whose observations also carry
  "policy_state": float32 (POLICY_STATE_DIM,) = [eef pos (3), gripper qpos (2),
      object pos - eef pos (3), target pos - eef pos (3)]
read by the small base policy (`dsrl/assets/flow_mlp_libero`). The agent still sees only
"pixels" (the agent-view camera) and the 8-d "state", as in the LIBERO preset. By default it
renders only the agent-view camera (`render_wrist=False`): nothing reads the wrist image here,
and every render costs on llvmpipe.

`ScriptedPickPlace` is a state machine on the simulator's poses (above the object, descend,
close, lift, carry above the target, lower, open). `grasp_offset` shifts where it grasps (in
metres, in the table plane). With no offset it succeeds on all 50 of the suite's initial states
of libero_object task 8 (116-121 steps each). Offsets across the fingers' closing axis (y) of
2 cm or more fail, along the box (x) up to 3.5 cm still succeed. (Task 1, the cream cheese, is
not used: the tomato sauce can beside it blocks the hand above the flat box.) The pretraining script draws it per demonstration so that the
demonstrations, and the policy cloned from them, are imprecise in a way that noise can steer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from dsrl.envs.base import Observation
from dsrl.envs.libero import WRIST_CAMERA, LiberoEnv

POLICY_STATE_DIM = 11
# The small Pi0's state (`pi0_state=True`): "policy_state" itself (eef position, gripper qpos,
# object and target relative to the gripper). LIBERO's axis-angle is left out: the scripted
# demonstrations hold the orientation (spread 0.003 rad), so normalised by that spread the
# physics' jitter alone would move the state by standard deviations (docs/finetune_pi0.md).
PI0_STATE_DIM = POLICY_STATE_DIM
# What the DSRL agent may see (`agent_obs`): see LiberoPickPlaceEnv.
AGENT_OBS = ("pixels_state", "policy_state", "robot_state")
# libero_object tasks: the object to pick and the receptacle, as named in the raw observation.
DEFAULT_TASK = {"suite": "libero_object", "task_id": 8}
DEFAULT_OBJECTS = {
    ("libero_object", 1): ("cream_cheese_1", "basket_1"),
    ("libero_object", 6): ("butter_1", "basket_1"),
    ("libero_object", 8): ("chocolate_pudding_1", "basket_1"),
}


def pick_place_state(raw: dict[str, Any], object_name: str, target_name: str) -> np.ndarray:
    """The base policy's input from a raw robosuite observation (see the module docstring)."""
    eef = np.asarray(raw["robot0_eef_pos"], np.float64)
    return np.concatenate(
        [
            eef,
            raw["robot0_gripper_qpos"],
            np.asarray(raw[f"{object_name}_pos"]) - eef,
            np.asarray(raw[f"{target_name}_pos"]) - eef,
        ]
    ).astype(np.float32)


class LiberoPickPlaceEnv(LiberoEnv):
    """LiberoEnv plus the "policy_state" key (object and target poses relative to the gripper).

    Args (beyond LiberoEnv's): object_name / target_name: the raw-observation names of the
      object to move and the receptacle (defaults known for libero_object tasks 1, 6, 8);
      render_wrist: also render the wrist camera (off: only the agent view is rendered).
      pi0_state: also return "observation/state" = "policy_state" (PI0_STATE_DIM): Pi0's
        LIBERO transforms read that key before "state", so the small Pi0
        (dsrl/assets/pi0_libero_cpu) sees the object poses while the agent keeps the 8-d
        "state".
      agent_obs: what the DSRL agent sees. "pixels_state" (default): the 64x64 agent view and
        LiberoEnv's 8-d robot "state". "policy_state": no pixels, and "state" is the base
        policy's own "policy_state" (POLICY_STATE_DIM: eef position, gripper, object and target
        relative to the gripper), so the agent reads exactly what the base policy reads about
        the scene and the learner builds state-only networks. "robot_state": no pixels, only
        LiberoEnv's 8-d robot "state" (eef pose, gripper): the agent sees nothing of the layout
        but what the arm's own motion reveals, so its critic cannot tell the episodes' layouts
        apart at the first query and has to score the latents themselves. The cameras the base
        policy needs are rendered either way.
    """

    def __init__(
        self,
        suite: str = DEFAULT_TASK["suite"],
        task_id: int = DEFAULT_TASK["task_id"],
        object_name: str | None = None,
        target_name: str | None = None,
        render_wrist: bool = False,
        pi0_state: bool = False,
        agent_obs: str = "pixels_state",
        **kwargs: Any,
    ):
        if agent_obs not in AGENT_OBS:
            raise ValueError(
                f"LiberoPickPlaceEnv: agent_obs={agent_obs!r} is not one of {AGENT_OBS} "
                "('pixels_state': agent view + robot state; 'policy_state': the base policy's "
                "state vector alone; 'robot_state': the 8-d robot state alone)."
            )
        super().__init__(suite=suite, task_id=task_id, **kwargs)
        self.agent_obs = agent_obs
        if agent_obs != "pixels_state":  # the agent sees "state" alone
            state = self.spec.observation_spec["state"]  # robot_state: LiberoEnv's own
            if agent_obs == "policy_state":
                state = ((POLICY_STATE_DIM,), np.float32)
            self.spec = dataclasses.replace(self.spec, observation_spec={"state": state})
        if object_name is None or target_name is None:
            if (suite, task_id) not in DEFAULT_OBJECTS:
                raise ValueError(
                    f"LiberoPickPlaceEnv: no default object/target for {suite} task {task_id}; "
                    "pass object_name and target_name (raw observation names, e.g. 'bowl_1')."
                )
            default_object, default_target = DEFAULT_OBJECTS[(suite, task_id)]
            object_name = object_name or default_object
            target_name = target_name or default_target
        self.object_name, self.target_name = object_name, target_name
        self._render_wrist = bool(render_wrist)
        self._pi0_state = bool(pi0_state)
        if not self._render_wrist:
            self._camera_observables = (self._camera_observables[0],)

    def _observation(self, raw: dict[str, Any], rendered: bool) -> Observation:
        if rendered and not self._render_wrist:
            # The wrist camera was not rendered: reuse the agent view's buffer shape (black), so
            # the observation keys stay those of LiberoEnv.
            raw = {**raw, f"{WRIST_CAMERA}_image": np.zeros_like(raw["agentview_image"])}
        obs = super()._observation(raw, rendered)
        obs["policy_state"] = pick_place_state(raw, self.object_name, self.target_name)
        if self._pi0_state:
            obs["observation/state"] = obs["policy_state"]
        if self.agent_obs != "pixels_state":
            # The base policy keeps reading the state it read before (Pi0's LIBERO transforms
            # take "observation/state" first): the agent's view changes, the policy's does not.
            obs.setdefault("observation/state", obs["state"])
            obs.pop("pixels", None)
            if self.agent_obs == "policy_state":
                obs["state"] = obs["policy_state"]
        return obs


def draw_grasp_offset(
    rng: np.random.Generator, offset_x: tuple[float, float], offset_y: tuple[float, ...]
) -> tuple[float, float]:
    """One demonstration's grasp offset (m): x uniform in `offset_x`; y uniform in one of the
    intervals `offset_y` = (lo0, hi0, lo1, hi1, ...), each picked with equal probability. With a
    centred interval and one 2.5-3.5 cm off (where grasps slip) the demonstrations, and the policy
    cloned from them, have a mode that succeeds and one that fails."""
    if len(offset_y) < 2 or len(offset_y) % 2:
        raise ValueError(f"offset_y takes pairs LO HI (intervals), got {offset_y}.")
    y_low, y_high = offset_y[2 * int(rng.integers(len(offset_y) // 2)) :][:2]
    return float(rng.uniform(*offset_x)), float(rng.uniform(y_low, y_high))


@dataclasses.dataclass
class ScriptedPickPlace:
    """Pick the object, place it in the target, from poses (OSC_POSE delta actions, 7-d).

    Phases: 0 above the object, 1 descend (and hold there `dwell_steps`, open), 2 close (for
    `close_steps`), 3 lift, 4 carry above the target, 5 lower, 6 open (and stay). Positions are
    servoed with a clipped proportional law. A dwell and a longer close make the demonstrations
    forgiving of a clone that closes or lifts a few steps early (the small Pi0's failure,
    docs/finetune_pi0.md).
    """

    grasp_offset: tuple[float, float] = (0.0, 0.0)
    hover_height: float = 0.12
    grasp_height: float = 0.015
    carry_height: float = 0.25
    release_height: float = 0.14
    gain: float = 12.0
    close_steps: int = 12
    dwell_steps: int = 0
    phase: int = 0
    _count: int = 0

    def reset(self) -> None:
        self.phase, self._count = 0, 0

    def act(self, policy_state: np.ndarray) -> np.ndarray:
        s = np.asarray(policy_state, np.float64)
        eef, obj, target = s[:3], s[:3] + s[5:8], s[:3] + s[8:11]
        grasp = obj + np.array([*self.grasp_offset, 0.0])
        gripper = -1.0
        if self.phase == 0:
            goal = grasp + [0, 0, self.hover_height]
            if np.linalg.norm((goal - eef)[:2]) < 0.01 and abs(goal[2] - eef[2]) < 0.03:
                self.phase = 1
        if self.phase == 1:
            goal = grasp + [0, 0, self.grasp_height]
            if abs(goal[2] - eef[2]) < 0.008:
                self._count += 1
                if self._count > self.dwell_steps:
                    self.phase, self._count = 2, 0
        if self.phase == 2:
            goal, gripper = grasp + [0, 0, self.grasp_height], 1.0
            self._count += 1
            if self._count >= self.close_steps:
                self.phase = 3
        if self.phase == 3:
            goal, gripper = np.array([eef[0], eef[1], self.carry_height]), 1.0
            if eef[2] > self.carry_height - 0.03:
                self.phase = 4
        if self.phase == 4:
            goal, gripper = np.array([target[0], target[1], self.carry_height]), 1.0
            if np.linalg.norm((goal - eef)[:2]) < 0.015:
                self.phase = 5
        if self.phase == 5:
            goal, gripper = np.array([target[0], target[1], target[2] + self.release_height]), 1.0
            if eef[2] < goal[2] + 0.02:
                self.phase = 6
        if self.phase == 6:
            goal, gripper = eef, -1.0
        action = np.zeros(7)
        action[:3] = np.clip(self.gain * (goal - eef), -1.0, 1.0)
        action[6] = gripper
        return action


def demo_seeds(seed: int, num_demos: int) -> list[int]:
    """Reset seeds of the demonstrations: far from the evaluation layouts (seeds 0..N-1)."""
    return [1_000_000 + seed * 10_007 + i for i in range(num_demos)]


def record_demo(
    env: LiberoPickPlaceEnv,
    seed: int,
    offset_x: tuple[float, float],
    offset_y: tuple[float, ...],
    action_noise: float,
    keys: Mapping[str, str],
    render: bool,
    scripted: Mapping[str, Any] | None = None,
    linger_steps: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, bool, tuple[float, float]]:
    """One scripted demonstration from layout `seed`: the grasp offset (`draw_grasp_offset`) and
    Gaussian noise of std `action_noise` on the motion actions, both from the seed's generator.
    Returns ({name: observation[key] at each step for name, key in keys}, the executed actions
    float32 (T, 7), success, the grasp offset); the episode ends at success or at the env's
    step limit. `render`: render the cameras on every step (only when `keys` read images).
    `scripted`: other `ScriptedPickPlace` fields (e.g. dwell_steps, close_steps).
    `linger_steps`: end the episode this many steps after the demonstrator opens over the target
    (phase 6) if it has not succeeded by then; None runs to the step limit. A failed demo then
    stops soon after its release instead of recording the arm standing still."""
    rng = np.random.default_rng(seed)
    offset = draw_grasp_offset(rng, offset_x, offset_y)
    demonstrator = ScriptedPickPlace(grasp_offset=offset, **(scripted or {}))
    obs = env.reset(seed=seed)
    frames: dict[str, list] = {name: [] for name in keys}
    actions, success, released = [], False, 0
    for _ in range(env.spec.max_episode_steps):
        action = demonstrator.act(obs["policy_state"])
        released += demonstrator.phase == 6
        if linger_steps is not None and released > linger_steps:
            break
        action[:3] = np.clip(action[:3] + action_noise * rng.standard_normal(3), -1, 1)
        for name, key in keys.items():
            frames[name].append(obs[key])
        actions.append(action.astype(np.float32))
        obs, _, terminated, truncated, _ = env.step(action, render=render)
        if terminated or truncated:
            success = bool(terminated)
            break
    return {k: np.asarray(v) for k, v in frames.items()}, np.asarray(actions), success, offset
