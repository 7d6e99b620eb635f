"""What each served robot must send: the observation keys, their shapes and dtypes, checked
before inference so that a wrong input gets an error naming the key, what was expected and what
came (not a failure deep inside the policy, nor a silently wrong action).

A spec is a tuple of `Field`s. The server takes it from `observation_spec=` or from the policy:
its `observation_spec` ({key: (shape, dtype)}), else a flow policy's state key and size, else a
Pi0 policy's robot (the keys its input transform reads, `dsrl.base_policies.pi0.transforms`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from dsrl.serving.protocol import RequestError

# Kinds of value a field holds; any other kind is a numpy dtype that must match exactly.
NUMBER = "number"  # bool, int or float array (the policy converts it)
IMAGE = "image"  # uint8, or float in [0, 1], (H, W, 3) or (3, H, W)
STRING = "string"  # one str; a batch may send one str for all or a list of B str

_KIND_TEXT = {NUMBER: "a numeric array", IMAGE: "a uint8 or float image array", STRING: "a str"}
_IMAGE_SHAPES = ((None, None, 3), (3, None, None))


@dataclasses.dataclass(frozen=True)
class Field:
    """One observation entry. `names`: the accepted keys, the first present one is used (as the
    policy's transform does); `shapes`: accepted shapes of ONE observation (None: any size)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int | None, ...], ...]
    kind: Any
    required: bool = True

    def describe(self) -> str:
        also = f" (or {', '.join(map(repr, self.names[1:]))})" if len(self.names) > 1 else ""
        return f"{self.names[0]!r}{also}"


def _robot_fields(robot: str) -> tuple[Field, ...]:
    if robot == "droid":
        return (
            Field(
                ("observation/exterior_image_1_left", "exterior_image_1_left"),
                _IMAGE_SHAPES,
                IMAGE,
            ),
            Field(("observation/wrist_image_left", "wrist_image_left"), _IMAGE_SHAPES, IMAGE),
            Field(("observation/joint_position", "joint_position"), ((7,),), NUMBER),
            Field(("observation/gripper_position", "gripper_position"), ((1,), ()), NUMBER),
        )
    if robot == "libero":
        return (
            Field(("agentview_image", "observation/image", "image"), _IMAGE_SHAPES, IMAGE),
            Field(("wrist_image", "observation/wrist_image"), _IMAGE_SHAPES, IMAGE),
            Field(("observation/state", "state"), ((None,),), NUMBER),
        )
    if robot in ("aloha", "aloha_real"):  # cameras may sit in an "images" map: not checked here
        return (Field(("agent_pos", "state"), ((14,),), NUMBER),)
    return ()


def spec_for_policy(
    policy: Any, observation_spec: Mapping[str, tuple[Any, Any]] | None = None
) -> tuple[Field, ...]:
    """The fields a request for `policy` must carry (empty: nothing known, nothing checked)."""
    if observation_spec is None:
        observation_spec = getattr(policy, "observation_spec", None)
    if observation_spec:
        return tuple(
            Field((key,), (tuple(shape),), STRING if dtype is str else dtype)
            for key, (shape, dtype) in observation_spec.items()
        )
    config = getattr(policy, "config", None)
    if hasattr(config, "state_key") and hasattr(config, "state_dim"):  # a flow policy
        return (Field((config.state_key,), ((int(config.state_dim),),), NUMBER),)
    robot = getattr(getattr(policy, "robot", None), "name", None)
    if robot is None:
        return ()
    # Without a default prompt the policy cannot run on an observation that has none.
    prompt_required = hasattr(policy, "prompt") and policy.prompt is None
    return (*_robot_fields(robot), Field(("prompt",), ((),), STRING, prompt_required))


def check_fields(obs: Mapping[str, Any], fields: tuple[Field, ...], batch: int | None) -> None:
    """Every required field present, every present field of the right kind and shape."""
    for field in fields:
        key = next((name for name in field.names if name in obs), None)
        if key is None:
            if field.required:
                raise RequestError(
                    "missing_key",
                    f"observation lacks {field.describe()}: the served policy needs "
                    f"{_needed(fields)}; it got keys {sorted(map(str, obs))[:20]}",
                )
            continue
        if field.kind == STRING:
            _check_string(key, obs[key], batch)
        else:
            _check_array(key, obs[key], field, batch)


def _needed(fields: tuple[Field, ...]) -> str:
    return ", ".join(f.describe() for f in fields if f.required)


def _check_string(key: str, value: Any, batch: int | None) -> None:
    if isinstance(value, str):
        return
    if batch is not None:
        values = value.tolist() if isinstance(value, np.ndarray) else value
        if isinstance(values, list) and len(values) == batch:
            if all(isinstance(v, str) for v in values):
                return
    form = "a str" if batch is None else f"a str or a list of {batch} str"
    raise RequestError("bad_dtype", f"obs[{key!r}] must be {form}, got {_describe_value(value)}")


def _check_array(key: str, value: Any, field: Field, batch: int | None) -> None:
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise RequestError(
            "bad_dtype",
            f"obs[{key!r}] must be {_expected_dtype(field.kind)}, got {_describe_value(value)}",
        )
    if not _dtype_ok(value.dtype, field.kind):
        raise RequestError(
            "bad_dtype",
            f"obs[{key!r}] has dtype {value.dtype}, expected {_expected_dtype(field.kind)}",
        )
    lead = () if batch is None else (batch,)
    wants = [(*lead, *shape) for shape in field.shapes]
    if not any(_shape_ok(value.shape, want) for want in wants):
        expected = " or ".join(str(_show_shape(w)) for w in wants)
        raise RequestError(
            "bad_shape", f"obs[{key!r}] has shape {value.shape}, expected {expected}"
        )


def _dtype_ok(dtype: np.dtype, kind: Any) -> bool:
    if kind == NUMBER:
        return dtype.kind in "biuf"
    if kind == IMAGE:
        return dtype == np.uint8 or dtype.kind == "f"
    return kind is None or dtype == np.dtype(kind)


def _expected_dtype(kind: Any) -> str:
    if kind in _KIND_TEXT:
        return _KIND_TEXT[kind]
    return "a numpy array" if kind is None else f"a {np.dtype(kind)} numpy array"


def _shape_ok(shape: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(shape) == len(want) and all(
        w is None or w == s for w, s in zip(want, shape, strict=True)
    )


def _show_shape(shape: tuple[int | None, ...]) -> str:
    return (
        "("
        + ", ".join("any" if d is None else str(d) for d in shape)
        + (",)" if len(shape) == 1 else ")")
    )


def _describe_value(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    text = repr(value)
    text = text if len(text) <= 40 else f"{text[:40]}..."
    return f"{type(value).__name__} {text}"
