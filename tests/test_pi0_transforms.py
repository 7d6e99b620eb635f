"""Norm stats and robot transforms: the numeric conventions openpi's checkpoints were trained with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsrl.base_policies.pi0 import normalize as nl
from dsrl.base_policies.pi0 import transforms as tf

RNG = np.random.default_rng(0)


def _stats(d: int) -> nl.NormStats:
    q01 = RNG.uniform(-2, -1, d)
    return nl.NormStats(
        mean=RNG.normal(size=d), std=RNG.uniform(0.1, 2, d), q01=q01, q99=q01 + RNG.uniform(1, 3, d)
    )


@pytest.mark.parametrize("stats_dim", [8, 32])
@pytest.mark.parametrize("use_quantiles", [False, True])
def test_normalize_roundtrip_for_robot_and_padded_stats(stats_dim, use_quantiles):
    stats = _stats(stats_dim)
    x = RNG.normal(size=(5, 8))
    y = nl.normalize(x, stats, use_quantiles)
    np.testing.assert_allclose(nl.unnormalize(y, stats, use_quantiles), x, atol=1e-12)
    # The model works on 32 padded dims: unnormalising a padded vector recovers the robot dims.
    padded = np.concatenate([y, np.zeros((5, 24))], axis=-1)
    back = nl.unnormalize(padded, stats, use_quantiles)
    assert back.shape == (5, 32)
    np.testing.assert_allclose(back[:, :8], x, atol=1e-12)


def test_formulas_match_openpi():
    stats = nl.NormStats(np.array([1.0]), np.array([2.0]), np.array([-1.0]), np.array([3.0]))
    assert nl.normalize(np.array([3.0]), stats)[0] == pytest.approx(2.0 / (2.0 + 1e-6))
    assert nl.normalize(np.array([1.0]), stats, True)[0] == pytest.approx(2 / (4 + 1e-6) * 2 - 1)
    # Dims beyond short stats: z-score pads mean 0 / std 1, quantile leaves them untouched.
    np.testing.assert_allclose(nl.unnormalize(np.array([0.0, 5.0]), stats), [1.0, 5.0 * (1 + 1e-6)])
    np.testing.assert_allclose(nl.unnormalize(np.array([-1.0, 5.0]), stats, True), [-1.0, 5.0])


def test_quantile_mode_needs_quantiles():
    with pytest.raises(ValueError, match="q01 and q99"):
        nl.normalize(np.zeros(2), nl.NormStats(np.zeros(2), np.ones(2)), use_quantiles=True)


def test_norm_stats_json_openpi_format(tmp_path):
    path = tmp_path / "assets" / "physical-intelligence" / "libero" / "norm_stats.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {"norm_stats": {"state": {"mean": [0, 1], "std": [1, 2], "q01": None, "q99": None},
                            "actions": {"mean": [0], "std": [1], "q01": [-1], "q99": [1]}}}
        )
    )  # fmt: skip
    assert nl.list_asset_ids(tmp_path) == ["physical-intelligence/libero"]
    stats = nl.load_checkpoint_norm_stats(tmp_path)
    assert stats["state"].q01 is None and stats["state"].std.dtype == np.float64
    nl.save_norm_stats(tmp_path / "copy", stats)
    again = nl.load_norm_stats(tmp_path / "copy")
    np.testing.assert_array_equal(again["actions"].q99, [1.0])
    with pytest.raises(FileNotFoundError, match="assets/<asset_id>/norm_stats.json"):
        nl.load_norm_stats(tmp_path / "missing")


def test_aloha_gripper_conversions_invert():
    x = np.linspace(0.05, 0.95, 11)
    np.testing.assert_allclose(tf.gripper_to_angular_inv(tf.gripper_to_angular(x)), x, atol=1e-9)
    np.testing.assert_allclose(tf.gripper_from_angular_inv(tf.gripper_from_angular(x)), x)
    actions = RNG.normal(size=(2, 5, 14))
    np.testing.assert_allclose(tf.aloha_actions_from_pi(tf.aloha_actions_to_pi(actions)), actions)


def test_aloha_inputs_flip_joints_map_cameras_and_outputs():
    state = RNG.uniform(0.1, 0.9, size=(2, 14))
    top = RNG.integers(0, 255, (2, 3, 224, 224), dtype=np.uint8)  # CHW, as openpi's client sends
    out = tf.aloha_inputs({"images": {"cam_high": top, "cam_low": top}, "state": state})
    flip = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])
    joints = [i for i in range(14) if i not in (6, 13)]
    np.testing.assert_allclose(out["state"][:, joints], (state * flip)[:, joints])
    np.testing.assert_allclose(out["state"][:, [6, 13]], tf.gripper_to_angular(state[:, [6, 13]]))
    np.testing.assert_array_equal(out["images"]["base_0_rgb"], top.transpose(0, 2, 3, 1))
    assert out["image_masks"]["base_0_rgb"].all()
    for cam in ("left_wrist_0_rgb", "right_wrist_0_rgb"):  # cam_low has no Pi0 slot
        assert not out["image_masks"][cam].any() and not out["images"][cam].any()
    acts = RNG.normal(size=(2, 4, 32))
    robot = tf.aloha_outputs(acts, None)
    assert robot.shape == (2, 4, 14)
    np.testing.assert_allclose(robot[..., 1], -acts[..., 1])
    np.testing.assert_allclose(robot[..., 6], tf.gripper_from_angular(acts[..., 6]))
    with pytest.raises(ValueError, match="Unknown Aloha cameras"):
        tf.aloha_inputs({"cam_high": top, "cam_top": top, "state": state})


def test_libero_delta_to_absolute_on_first_six_dims():
    actions = RNG.normal(size=(2, 3, 32))
    state = RNG.normal(size=(2, 32))
    mask = tf.make_bool_mask(6, -1)
    assert mask == (True,) * 6 + (False,)
    out = tf.absolute_actions(actions, state, mask)
    np.testing.assert_allclose(out[..., :6], actions[..., :6] + state[:, None, :6])
    np.testing.assert_array_equal(out[..., 6:], actions[..., 6:])
    np.testing.assert_allclose(tf.delta_actions(out, state, mask), actions)
    assert tf.libero_outputs(out, state).shape == (2, 3, 7)


def test_libero_and_droid_inputs():
    img = RNG.integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
    lib = tf.libero_inputs(
        {"agentview_image": img, "wrist_image": img[:, ::-1], "state": np.ones((3, 8))}
    )
    assert lib["image_masks"]["right_wrist_0_rgb"].tolist() == [False] * 3
    assert lib["image_masks"]["left_wrist_0_rgb"].all() and lib["state"].shape == (3, 8)
    droid = tf.droid_inputs(
        {"observation/exterior_image_1_left": img, "observation/wrist_image_left": img,
         "observation/joint_position": np.zeros((3, 7)), "observation/gripper_position": np.ones(3)}
    )  # fmt: skip
    np.testing.assert_array_equal(droid["state"], np.c_[np.zeros((3, 7)), np.ones(3)])
    assert tf.droid_outputs(RNG.normal(size=(3, 10, 32)), None).shape == (3, 10, 8)
    with pytest.raises(KeyError, match="wrist_image"):
        tf.libero_inputs({"agentview_image": img, "state": np.ones((3, 8))})


def test_resize_with_pad_letterboxes_and_keeps_224():
    img = np.full((1, 480, 640, 3), 200, np.uint8)
    out = tf.resize_with_pad(img, 224, 224)
    assert out.shape == (1, 224, 224, 3)
    # 640x480 -> 224x168, centred: 28 black rows above and below.
    assert (out[0, :28] == 0).all() and (out[0, -28:] == 0).all()
    assert (out[0, 28:-28] == 200).all()
    same = RNG.integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    assert tf.resize_with_pad(same, 224, 224) is same
    np.testing.assert_allclose(tf.images_to_model(np.array([0, 255], np.uint8)), [-1.0, 1.0])
