"""Pi0Policy end to end on a tiny random checkpoint written in openpi's layout."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest

from dsrl.base_policies.base import BasePolicy
from dsrl.base_policies.pi0 import Pi0Policy, save_openpi_checkpoint
from dsrl.base_policies.pi0 import model as model_lib
from dsrl.base_policies.pi0 import normalize as nl
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.tokenizer import PaligemmaTokenizer, train_sentencepiece_model

CFG = Pi0Config.tiny()
H = CFG.action_horizon
PROMPT = "pick up the cream cheese and put it in the tray"


def _tokenizer_file(path):
    corpus = [PROMPT, "Transfer cube", "pick up the bowl"] * 50
    path.write_bytes(train_sentencepiece_model(corpus, vocab_size=40))
    return path


def _stats(d_state, d_act, seed):
    rng = np.random.default_rng(seed)
    return {
        "state": nl.NormStats(rng.normal(size=d_state), rng.uniform(0.5, 2, d_state)),
        "actions": nl.NormStats(rng.normal(size=d_act), rng.uniform(0.5, 2, d_act)),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pi0")
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32),
        model_lib.param_shapes(CFG),
    )
    ckpt = save_openpi_checkpoint(
        params,
        root / "pi0_tiny",
        norm_stats=_stats(8, 7, 1),
        asset_id="physical-intelligence/libero",
    )
    return ckpt, _tokenizer_file(root / "tok.model")


@pytest.fixture(scope="module")
def libero(files):
    ckpt, tok = files
    return Pi0Policy.from_checkpoint(
        ckpt, "libero", variant=CFG, dtype="float32", tokenizer_path=tok
    )


def _libero_obs(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "agentview_image": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
        "state": rng.normal(size=(batch, 8)).astype(np.float32),
        "prompt": [PROMPT] * batch,
        "pixels": np.zeros((batch, 64, 64, 3), np.uint8),  # the agent's key: ignored
    }


def _noise(batch, seed):
    return np.random.default_rng(seed).standard_normal((batch, H, 32)).astype(np.float32)


def test_contract_and_determinism(libero):
    assert isinstance(libero, BasePolicy)
    assert libero.noise_shape == (H, 32) and libero.action_dim == 7
    obs, noise = _libero_obs(2), _noise(2, 0)
    a = libero.sample_actions(obs, noise)
    assert a.shape == (2, H, 7) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(libero.sample_actions(obs, noise), a)
    b = libero.sample_actions(obs, _noise(2, 1))
    assert np.abs(a - b).max() > 1e-3


def test_batched_equals_per_example_and_infer(libero):
    obs, noise = _libero_obs(2, seed=3), _noise(2, 4)
    batched = libero.sample_actions(obs, noise)
    for i in range(2):
        single = {k: (v[i : i + 1] if k != "prompt" else v[i : i + 1]) for k, v in obs.items()}
        np.testing.assert_allclose(
            libero.sample_actions(single, noise[i : i + 1]), batched[i : i + 1], atol=1e-4
        )
        unbatched = {k: (v[i] if k != "prompt" else v[i]) for k, v in obs.items()}
        out = libero.infer(unbatched, noise[i])
        assert out["actions"].shape == (H, 7) and "infer_ms" in out["policy_timing"]
        np.testing.assert_allclose(out["actions"], batched[i], atol=1e-4)


def test_multi_noise_matches_single_calls(libero):
    obs = _libero_obs(2, seed=5)
    noise = np.random.default_rng(6).standard_normal((2, 3, H, 32)).astype(np.float32)
    multi = libero.sample_actions_multi(obs, noise)
    assert multi.shape == (2, 3, H, 7)
    np.testing.assert_allclose(multi[:, 1], libero.sample_actions(obs, noise[:, 1]), atol=1e-4)


def test_libero_actions_are_absolute_wrt_state(libero):
    """The output chunk shifts with the state on the 6 delta dims (pi0_libero's AbsoluteActions)."""
    obs, noise = _libero_obs(2, seed=7), _noise(2, 8)
    base = libero.sample_actions(obs, noise)
    model_out = np.asarray(
        libero.model.sample_actions(None, libero.prepare(obs)[0], noise=noise, num_steps=10)
    )
    stats = libero.norm_stats
    expected = nl.unnormalize(model_out, stats["actions"])[..., :7]
    expected[..., :6] += obs["state"][:, None, :6]
    np.testing.assert_allclose(base, expected, atol=1e-4)


def test_other_robots_shapes(libero):
    model, tok = libero.model, libero.tokenizer
    rng = np.random.default_rng(0)
    aloha = Pi0Policy(model, tok, _stats(14, 14, 2), "aloha")  # default prompt "Transfer cube"
    out = aloha.sample_actions(
        {"cam_high": rng.integers(0, 256, (2, 480, 640, 3), dtype=np.uint8),
         "state": rng.uniform(0.1, 0.9, (2, 14))},
        _noise(2, 0),
    )  # fmt: skip
    assert out.shape == (2, H, 14) and aloha.action_dim == 14
    droid = Pi0Policy(model, tok, _stats(8, 8, 3), "droid", prompt="pick up the bowl")
    img = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    out = droid.sample_actions(
        {"observation/exterior_image_1_left": img, "observation/wrist_image_left": img,
         "observation/joint_position": np.zeros((2, 7)), "observation/gripper_position": np.ones((2, 1))},
        _noise(2, 0),
    )  # fmt: skip
    assert out.shape == (2, H, 8)


def test_bad_inputs_are_explained(libero):
    obs = _libero_obs(2)
    with pytest.raises(ValueError, match=r"noise must be float32 \(B, H, 32\)"):
        libero.sample_actions(obs, np.zeros((2, H, 7), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        libero.sample_actions(obs, np.full((2, H, 32), np.nan, np.float32))
    no_prompt = {k: v for k, v in obs.items() if k != "prompt"}
    with pytest.raises(ValueError, match="No prompt"):
        libero.sample_actions(no_prompt, _noise(2, 0))
    with pytest.raises(ValueError, match="max_token_len"):
        Pi0Policy(
            libero.model, PaligemmaTokenizer(libero.tokenizer._sp, max_len=7), libero.norm_stats
        )


def _openpi_installed() -> bool:
    # The `openpi/` submodule directory at the repo root is importable as an empty namespace
    # package even when openpi is not installed: look for a real openpi module instead.
    try:
        return importlib.util.find_spec("openpi.policies") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _openpi_installed(), reason="openpi is not installed")
@pytest.mark.slow
def test_parity_with_openpi_on_dummy_checkpoint(tmp_path):
    """Our Pi0Policy and openpi's own Policy agree on a random `dummy` checkpoint."""
    from dsrl.base_policies.pi0.openpi_backend import OpenpiPolicy

    cfg = Pi0Config.dummy(dtype="float32")
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32),
        model_lib.param_shapes(cfg),
    )
    save_openpi_checkpoint(
        params, tmp_path, norm_stats=_stats(8, 7, 1), asset_id="physical-intelligence/libero"
    )
    # Both in bfloat16 (openpi always restores bf16) on openpi's own pi0_libero pipeline.
    ours = Pi0Policy.from_checkpoint(tmp_path, "libero", variant=cfg, dtype="bfloat16")
    dummy = {"paligemma_variant": "dummy", "action_expert_variant": "dummy"}
    theirs = OpenpiPolicy("pi0_libero", str(tmp_path), robot="libero", model_overrides=dummy)
    obs = {**_libero_obs(1), "prompt": PROMPT}
    noise = np.random.default_rng(1).standard_normal((1, 50, 32)).astype(np.float32)
    np.testing.assert_allclose(
        ours.sample_actions(obs, noise), theirs.sample_actions(obs, noise), atol=1e-2
    )
