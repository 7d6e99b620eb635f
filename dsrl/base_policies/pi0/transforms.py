"""Robot <-> Pi0 data transforms for LIBERO, Aloha and DROID, batched over a leading axis.

Each robot has a pure pair:
  inputs(obs)  -> {"images": {cam: uint8 (B,h,w,3)}, "image_masks": {cam: bool (B,)},
                   "state": float64 (B, d) robot state in the model's convention}
  outputs(actions (B,H,32), state (B,32)) -> float64 (B, H, action_dim) robot actions,
where `outputs` receives actions and state already unnormalised (openpi's order: Unnormalize,
then AbsoluteActions, then the robot's Outputs). Cameras are openpi's `base_0_rgb`,
`left_wrist_0_rgb`, `right_wrist_0_rgb`; an absent camera is a black image with mask False.

Observation keys accepted (batched; strings as a list of B or one str):
  LIBERO: "agentview_image" / "observation/image", "wrist_image" / "observation/wrist_image"
          uint8 (B,H,W,3) already rotated 180 degrees, "observation/state" / "state" (B, 8)
          (the first when both are given).
  Aloha:  "cam_high" (and optional "cam_left_wrist", "cam_right_wrist", "cam_low") at top level
          or in an "images" dict, HWC or CHW; "state" (B, 14) in Aloha's convention.
  DROID:  "observation/exterior_image_1_left", "observation/wrist_image_left",
          "observation/joint_position" (B,7), "observation/gripper_position" (B,1) or (B,)
          (the "observation/" prefix may be dropped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")

# --------------------------------------------------------------------------------------------
# Images


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """(B,H,W,3) or (B,3,H,W), uint8 or float in [0,1] -> uint8 (B,H,W,3) (openpi's parse)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"Expected batched images (B,H,W,3) or (B,3,H,W), got shape {images.shape}."
        )
    if np.issubdtype(images.dtype, np.floating):
        images = (255 * images).astype(np.uint8)
    if images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    if images.shape[-1] != 3:
        raise ValueError(f"Images must have 3 colour channels, got shape {images.shape}.")
    return images


def resize_with_pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (..., h, w, 3) -> (..., height, width, 3): aspect-preserving PIL bilinear resize, then
    centred zero padding (openpi's client `resize_with_pad`, a tf.image.resize_with_pad clone)."""
    if images.shape[-3:-1] == (height, width):
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.zeros((flat.shape[0], height, width, images.shape[-1]), dtype=np.uint8)
    for i, im in enumerate(flat):
        h, w = im.shape[:2]
        ratio = max(w / width, h / height)
        rh, rw = int(h / ratio), int(w / ratio)
        resized = np.asarray(Image.fromarray(im).resize((rw, rh), resample=Image.BILINEAR))
        top, left = max(0, (height - rh) // 2), max(0, (width - rw) // 2)
        out[i, top : top + rh, left : left + rw] = resized
    return out.reshape(*lead, height, width, images.shape[-1])


def images_to_model(images: np.ndarray) -> np.ndarray:
    """uint8 (...,H,W,3) -> float32 in [-1, 1] (openpi's Observation.from_dict)."""
    return images.astype(np.float32) / 255.0 * 2.0 - 1.0


def _camera_set(base: np.ndarray, extra: dict[str, np.ndarray | None]) -> tuple[dict, dict]:
    """Builds openpi's three-camera dicts; missing cameras are black with mask False."""
    b = base.shape[0]
    images, masks = {"base_0_rgb": base}, {"base_0_rgb": np.ones(b, dtype=bool)}
    for key in IMAGE_KEYS[1:]:
        img = extra.get(key)
        if img is None:
            images[key], masks[key] = np.zeros_like(base), np.zeros(b, dtype=bool)
        else:
            images[key], masks[key] = img, np.ones(b, dtype=bool)
    return images, masks


def _get(obs: dict, *names: str):
    for name in names:
        if name in obs:
            return obs[name]
    raise KeyError(
        f"Observation is missing {names[0]!r} (also accepted: {list(names[1:])}); "
        f"it has keys {sorted(obs)}."
    )


# --------------------------------------------------------------------------------------------
# Delta <-> absolute actions (openpi's DeltaActions / AbsoluteActions)


def make_bool_mask(*dims: int) -> tuple[bool, ...]:
    """make_bool_mask(6, -1) == (True,)*6 + (False,): positive n -> n Trues, negative -> Falses."""
    return tuple(x for d in dims for x in ([d > 0] * abs(d)))


def absolute_actions(actions: np.ndarray, state: np.ndarray, mask: tuple[bool, ...]) -> np.ndarray:
    """(B,H,A) delta actions + (B,S) state -> absolute: dims where mask is True get state added."""
    m = np.asarray(mask)
    k = m.shape[-1]
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., :k] += np.where(m, state[..., :k], 0.0)[..., None, :]
    return out


def delta_actions(actions: np.ndarray, state: np.ndarray, mask: tuple[bool, ...]) -> np.ndarray:
    """Inverse of `absolute_actions`."""
    m = np.asarray(mask)
    k = m.shape[-1]
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., :k] -= np.where(m, state[..., :k], 0.0)[..., None, :]
    return out


# --------------------------------------------------------------------------------------------
# LIBERO


def libero_inputs(obs: dict) -> dict:
    base = to_uint8_hwc(_get(obs, "agentview_image", "observation/image", "image"))
    wrist = to_uint8_hwc(_get(obs, "wrist_image", "observation/wrist_image"))
    images, masks = _camera_set(base, {"left_wrist_0_rgb": wrist})
    # "observation/state" first: an env that extends the agent's "state" (a task one-hot, see
    # dsrl.envs.libero_suite) or empties it (--add_states 0) keeps the robot state there.
    state = np.asarray(_get(obs, "observation/state", "state"), dtype=np.float64)
    return {"images": images, "image_masks": masks, "state": state}


def libero_outputs(actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(B,H,32) absolute actions -> (B,H,7): eef delta-pos 3, axis-angle 3, gripper 1."""
    del state
    return np.asarray(actions[..., :7])


# --------------------------------------------------------------------------------------------
# Aloha (openpi's adapt_to_pi conversions between Aloha's runtime and pi's internal space)

_ALOHA_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float64)
_ALOHA_GRIPPERS = [6, 13]
# Interbotix gripper geometry and range constants, as in openpi's aloha_policy.
_LINEAR_OPEN, _LINEAR_CLOSED = 0.01844, 0.05800
_ARM_LENGTH, _HORN_RADIUS = 0.036, 0.022
_PI_ANGLE_MIN, _PI_ANGLE_MAX = 0.5476, 1.6296
_JOINT_MIN, _JOINT_MAX = -0.6213, 1.4910


def gripper_to_angular(value: np.ndarray) -> np.ndarray:
    """Aloha normalised linear gripper position -> pi's normalised angular position."""
    linear = value * (_LINEAR_CLOSED - _LINEAR_OPEN) + _LINEAR_OPEN
    r, arm = _HORN_RADIUS, _ARM_LENGTH
    angle = np.arcsin(np.clip((r**2 + linear**2 - arm**2) / (2 * r * linear), -1.0, 1.0))
    return (angle - _PI_ANGLE_MIN) / (_PI_ANGLE_MAX - _PI_ANGLE_MIN)


def gripper_to_angular_inv(value: np.ndarray) -> np.ndarray:
    """Inverse of `gripper_to_angular` (the positive root of the horn geometry's quadratic)."""
    angle = value * (_PI_ANGLE_MAX - _PI_ANGLE_MIN) + _PI_ANGLE_MIN
    r, arm = _HORN_RADIUS, _ARM_LENGTH
    s = np.sin(angle)
    linear = r * s + np.sqrt(r**2 * s**2 - r**2 + arm**2)
    return (linear - _LINEAR_OPEN) / (_LINEAR_CLOSED - _LINEAR_OPEN)


def gripper_from_angular(value: np.ndarray) -> np.ndarray:
    """pi's gripper action (radians from its zero) -> Aloha's normalised gripper joint command."""
    return (value + _PI_ANGLE_MIN - _JOINT_MIN) / (_JOINT_MAX - _JOINT_MIN)


def gripper_from_angular_inv(value: np.ndarray) -> np.ndarray:
    """Inverse of `gripper_from_angular` (how openpi encoded Aloha actions for training)."""
    return value * (_JOINT_MAX - _JOINT_MIN) + _JOINT_MIN - _PI_ANGLE_MIN


def aloha_state_to_pi(state: np.ndarray) -> np.ndarray:
    """(..., 14) Aloha state -> pi convention (joint flips, gripper linear -> angular)."""
    out = np.asarray(state, dtype=np.float64) * _ALOHA_FLIP
    out[..., _ALOHA_GRIPPERS] = gripper_to_angular(out[..., _ALOHA_GRIPPERS])
    return out


def aloha_actions_from_pi(actions: np.ndarray) -> np.ndarray:
    """(..., 14) pi actions -> Aloha joint commands (joint flips, gripper angular -> joint)."""
    out = np.asarray(actions, dtype=np.float64) * _ALOHA_FLIP
    out[..., _ALOHA_GRIPPERS] = gripper_from_angular(out[..., _ALOHA_GRIPPERS])
    return out


def aloha_actions_to_pi(actions: np.ndarray) -> np.ndarray:
    """Inverse of `aloha_actions_from_pi` (openpi's training-time action encoding)."""
    out = np.asarray(actions, dtype=np.float64) * _ALOHA_FLIP
    out[..., _ALOHA_GRIPPERS] = gripper_from_angular_inv(out[..., _ALOHA_GRIPPERS])
    return out


_ALOHA_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")


def aloha_inputs(obs: dict) -> dict:
    cams = obs.get("images", obs)
    unknown = {k for k in cams if k.startswith("cam_")} - set(_ALOHA_CAMERAS)
    if unknown:
        raise ValueError(f"Unknown Aloha cameras {sorted(unknown)}; expected {_ALOHA_CAMERAS}.")
    base = to_uint8_hwc(_get(cams, "cam_high"))
    # cam_low is accepted but unused, as in openpi (Pi0 has no slot for it).
    extra = {
        "left_wrist_0_rgb": cams.get("cam_left_wrist"),
        "right_wrist_0_rgb": cams.get("cam_right_wrist"),
    }
    extra = {k: None if v is None else to_uint8_hwc(v) for k, v in extra.items()}
    images, masks = _camera_set(base, extra)
    # "agent_pos" first: with --add_states 0 the agent's "state" is empty and the robot state
    # travels under "agent_pos" (dsrl.envs.wrappers.POLICY_STATE_KEYS).
    state = np.asarray(_get(obs, "agent_pos", "state"), dtype=np.float64)
    if state.shape[-1] != 14:
        raise ValueError(f"Aloha state must be 14-d, got shape {state.shape}.")
    return {"images": images, "image_masks": masks, "state": aloha_state_to_pi(state)}


def aloha_outputs(actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    del state
    return aloha_actions_from_pi(actions[..., :14])


# --------------------------------------------------------------------------------------------
# DROID


def droid_inputs(obs: dict) -> dict:
    base = to_uint8_hwc(_get(obs, "observation/exterior_image_1_left", "exterior_image_1_left"))
    wrist = to_uint8_hwc(_get(obs, "observation/wrist_image_left", "wrist_image_left"))
    images, masks = _camera_set(base, {"left_wrist_0_rgb": wrist})
    joints = np.asarray(_get(obs, "observation/joint_position", "joint_position"), np.float64)
    gripper = np.asarray(_get(obs, "observation/gripper_position", "gripper_position"), np.float64)
    if gripper.ndim == joints.ndim - 1:
        gripper = gripper[..., None]
    return {
        "images": images,
        "image_masks": masks,
        "state": np.concatenate([joints, gripper], axis=-1),
    }


def droid_outputs(actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(B,H,32) -> (B,H,8): 7 joint velocities + gripper position."""
    del state
    return np.asarray(actions[..., :8])


# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RobotTransforms:
    """Everything robot-specific a Pi0 policy needs."""

    name: str
    action_dim: int
    inputs: Callable[[dict], dict]
    outputs: Callable[[np.ndarray, np.ndarray], np.ndarray]
    # openpi's AbsoluteActions mask applied before `outputs` (None: the model predicts absolute).
    delta_action_mask: tuple[bool, ...] | None
    default_asset_id: str
    default_prompt: str | None = None


ROBOTS: dict[str, RobotTransforms] = {
    # pi0_libero: extra_delta_transform=True -> AbsoluteActions on the first 6 dims.
    "libero": RobotTransforms(
        "libero", 7, libero_inputs, libero_outputs, make_bool_mask(6, -1),
        "physical-intelligence/libero",
    ),
    # openpi's LIBERO data config with extra_delta_transform=False: LIBERO's OSC actions are
    # already deltas, and the model predicts them as they are (no AbsoluteActions). The small
    # Pi0 made here (scripts/make_pi0_libero.py) uses it: see docs/finetune_pi0.md for why.
    "libero_no_delta": RobotTransforms(
        "libero_no_delta", 7, libero_inputs, libero_outputs, None,
        "physical-intelligence/libero",
    ),
    # pi0_aloha_sim: absolute joint actions, default prompt "Transfer cube".
    "aloha": RobotTransforms(
        "aloha", 14, aloha_inputs, aloha_outputs, None,
        "lerobot/aloha_sim_transfer_cube_human", "Transfer cube",
    ),
    # Real Aloha fine-tunes (pi0_aloha_towel, ...): delta joints, absolute grippers.
    "aloha_real": RobotTransforms(
        "aloha_real", 14, aloha_inputs, aloha_outputs, make_bool_mask(6, -1, 6, -1), "trossen",
    ),
    "droid": RobotTransforms("droid", 8, droid_inputs, droid_outputs, None, "droid"),
}  # fmt: skip


def get_robot(robot: str | RobotTransforms) -> RobotTransforms:
    if isinstance(robot, RobotTransforms):
        return robot
    if robot not in ROBOTS:
        raise ValueError(f"Unknown robot {robot!r}; choose one of {sorted(ROBOTS)}.")
    return ROBOTS[robot]
