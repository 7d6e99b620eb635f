"""A scripted demonstrator for robosuite's PickPlaceCan and Lift, reading robomimic's low-dim state.

It makes the demonstrations behind the CPU proofs' diffusion base policies
(scripts/make_diffusion_can.py). The state is the raw (unnormalized) vector of
`dsrl.envs.robomimic.RobomimicEnv`: eef position (0:3), eef quaternion (3:7), gripper joints
(7:9), then robosuite's object-state, whose first 3 entries are the object's position. The action
is OSC_POSE's delta: position in [-1, 1] (x 5 cm per step), rotation left at 0 (the gripper keeps
pointing down over these short motions), gripper -1 open / +1 closed.

Phases, each ended by a position tolerance or a step count:
  above  move over the object at `hover` height, gripper open
  down   descend to the object's centre + `grasp_height`
  close  close the gripper for `close_steps`
  lift   rise to `carry_height` (absolute z)
  carry  (Can only) move over `place_xy` at carry height
  drop   (Can only) descend to `drop_height`
  release  open the gripper for `close_steps`
  leave  rise away (robosuite counts a placement only once the gripper is > ~7 cm from the can)

`grasp_height` is what makes the demos two-mode: at 0 the fingers close on the can's body; a few
centimetres above its top they close on air and the rest of the episode carries nothing (a
failure). A cloned policy then chooses, at the height where some demos closed, between closing
and descending further, and its noise makes that choice. `grasp_offset` moves the grasp off the
object's axis instead (approach and descent both aim there): across the fingers (y) the can is
placed from a centred grasp and missed from 3.5 cm off, where the fingers close on its edge.
"""

from __future__ import annotations

import dataclasses

import numpy as np

OBJECT_POS = slice(9, 12)  # the first 3 entries of robosuite's object-state
EEF_POS = slice(0, 3)
POSITION_GAIN = 10.0  # action = gain * error, clipped: 5 cm per step saturates beyond 10 cm
# Where the Can task counts a success (robosuite: the can's own bin in bin2, index 3), in the
# robot's world frame; robosuite's target_bin_placements[3] for bin2 at (0.1, 0.28, 0.8).
CAN_PLACE_XY = (0.1975, 0.4025)


@dataclasses.dataclass
class ScriptedPickPlace:
    """Stateful: call `act(state)` once per env step from reset; a new instance per episode."""

    grasp_height: float = 0.0  # above the object's centre (m); > ~0.08 closes on air for the can
    grasp_offset: tuple[float, float] = (0.0, 0.0)  # xy from the object's centre (m)
    hover: float = 0.15  # approach height above the object's centre
    carry_height: float = 1.02  # absolute z of the carry (bins at 0.8)
    place_xy: tuple[float, float] | None = CAN_PLACE_XY  # None: lift only (the Lift task)
    drop_height: float = 0.95
    close_steps: int = 10
    tolerance: float = 0.01
    # A phase that has not met its tolerance after this many steps moves on anyway (a can
    # resting on a bin's divider, OSC's steady error under load): demos stay short.
    phase_timeout: int = 60
    phase: str = "above"
    _count: int = 0

    def act(self, state: np.ndarray) -> np.ndarray:
        self._count += 1
        state = np.asarray(state, np.float64)
        eef, obj = state[EEF_POS], state[OBJECT_POS]
        target, gripper = eef, -1.0
        dx, dy = self.grasp_offset
        if self.phase == "above":
            target = np.array([obj[0] + dx, obj[1] + dy, obj[2] + self.hover])
            self._advance_if(np.linalg.norm(target - eef) < 2 * self.tolerance, "down")
        elif self.phase == "down":
            # Tracking the object's xy (plus the offset) keeps the fingers placed while they descend.
            target = np.array([obj[0] + dx, obj[1] + dy, obj[2] + self.grasp_height])
            self._advance_if(abs(target[2] - eef[2]) < self.tolerance, "close")
        elif self.phase == "close":
            target, gripper = eef, 1.0
            self._advance_after(self.close_steps, "lift")
        elif self.phase == "lift":
            target, gripper = np.array([eef[0], eef[1], self.carry_height]), 1.0
            done = abs(target[2] - eef[2]) < 2 * self.tolerance
            self._advance_if(done, "carry" if self.place_xy is not None else "hold")
        elif self.phase == "carry":
            target, gripper = np.array([*self.place_xy, self.carry_height]), 1.0
            # The can's weight leaves OSC a ~2 cm steady error; the bin is 20 x 25 cm.
            self._advance_if(np.linalg.norm(target[:2] - eef[:2]) < 3 * self.tolerance, "drop")
        elif self.phase == "drop":
            target, gripper = np.array([*self.place_xy, self.drop_height]), 1.0
            self._advance_if(abs(target[2] - eef[2]) < 2 * self.tolerance, "release")
        elif self.phase == "release":
            target = eef
            self._advance_after(self.close_steps, "leave")
        elif self.phase == "leave":
            target = np.array([eef[0], eef[1], self.carry_height + 0.1])
        else:  # hold (Lift): keep the object up
            target, gripper = np.array([eef[0], eef[1], self.carry_height]), 1.0
        action = np.zeros(7, np.float32)
        action[:3] = np.clip(POSITION_GAIN * (target - eef), -1.0, 1.0)
        action[6] = gripper
        return action

    def _advance_if(self, done: bool, phase: str) -> None:
        if done or self._count >= self.phase_timeout:
            self.phase, self._count = phase, 0

    def _advance_after(self, steps: int, phase: str) -> None:
        if self._count >= steps:
            self.phase, self._count = phase, 0
