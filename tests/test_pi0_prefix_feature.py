"""Pi0's prefix feature (the real-robot agent's VLM embedding): final-normed PaliGemma prefix
hidden states averaged over the VALID prefix tokens, from the model up to the websocket server.

The reference implementation is written here as a plain per-layer loop over the full prefix (every
camera encoded, attention written out with explicit masks), independent of the scanned, cached,
camera-skipping path in `gemma.prefix_forward`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.base_policies.pi0 import Pi0Policy, gemma
from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0 import normalize as nl
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.tokenizer import PaligemmaTokenizer, train_sentencepiece_model
from dsrl.base_policies.remote import RemotePolicy
from dsrl.serving import PolicyServer

RIGHT = "right_wrist_0_rgb"
PROMPT = "pick up the bowl"


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "pi05"])
def model(request) -> pi0_model.Pi0:
    return pi0_model.Pi0.create(Pi0Config.tiny(pi05=request.param), seed=3)


@pytest.fixture(scope="module")
def pi0() -> pi0_model.Pi0:
    return pi0_model.Pi0.create(Pi0Config.tiny(), seed=3)


def _obs(config: Pi0Config, batch: int = 3, seed: int = 0) -> pi0_model.Observation:
    """Random observation: RIGHT camera masked for example 0 only (so it is still encoded), and
    prompts of different valid lengths per example, the padding slots holding random token ids."""
    obs = pi0_model.fake_observation(config, batch, seed=seed)
    rng = np.random.default_rng(seed + 100)
    length = config.max_token_len
    valid = np.arange(length)[None, :] < rng.integers(2, length - 2, (batch, 1))
    tokens = rng.integers(1, config.vocab_size, (batch, length)).astype(np.int32)
    masks = dict(obs.image_masks)
    masks[RIGHT] = np.arange(batch) != 0
    return dataclasses.replace(
        obs, image_masks=masks, tokenized_prompt=tokens, tokenized_prompt_mask=valid
    )


def _feature(model, obs) -> np.ndarray:
    return np.asarray(model.prefix_feature(obs))


def _reference_feature(model: pi0_model.Pi0, obs: pi0_model.Observation) -> np.ndarray:
    """All cameras encoded, a Python loop over the Gemma layers, numpy masked mean."""
    config, params = model.config, model.params
    cfg = config.paligemma
    clean, _ = pi0_model.prepare_observation(config, obs)
    tokens, mask = pi0_model._embed_prefix(config, params, clean, config.image_keys)
    llm = params["PaliGemma"]["llm"]
    layers = llm["layers"]
    attn_ok = mask[:, None, None, :] & mask[:, None, :, None]  # (B, 1, Q, K)
    pos = jnp.cumsum(mask, axis=1) - 1
    groups = cfg.num_heads // cfg.num_kv_heads
    x = tokens.astype(jnp.float32)
    for i in range(cfg.depth):
        h, _ = gemma.rms_norm(x, {"scale": layers["pre_attention_norm"]["scale"][i]}, None)
        q = jnp.einsum("bpd,ndh->bpnh", h, layers["attn"]["q_einsum"]["w"][i])
        k, v = jnp.einsum("bpd,cvdh->cbpvh", h, layers["attn"]["kv_einsum"]["w"][i])
        q = gemma.apply_rope(q, pos) * cfg.head_dim**-0.5
        k = jnp.repeat(gemma.apply_rope(k, pos), groups, axis=2)
        v = jnp.repeat(v, groups, axis=2)
        logits = jnp.einsum("bqnh,bknh->bnqk", q, k)
        probs = jax.nn.softmax(jnp.where(attn_ok, logits, -1e30), axis=-1)
        out = jnp.einsum("bnqk,bknh->bqnh", probs, v).reshape(*x.shape[:2], -1)
        x = x + out @ layers["attn"]["attn_vec_einsum"]["w"][i].reshape(-1, cfg.width)
        h, _ = gemma.rms_norm(x, {"scale": layers["pre_ffw_norm"]["scale"][i]}, None)
        mlp = layers["mlp"]
        x = x + gemma.feed_forward(h, mlp["gating_einsum"][i], mlp["linear"][i])
    hidden, _ = gemma.rms_norm(x, llm["final_norm"], None)
    hidden, mask = np.asarray(hidden, np.float64), np.asarray(mask)
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def test_feature_is_the_masked_mean_of_final_hidden_states(model):
    obs = _obs(model.config)
    feature = _feature(model, obs)
    assert feature.shape == (3, model.config.paligemma.width) and feature.dtype == np.float32
    np.testing.assert_allclose(feature, _reference_feature(model, obs), rtol=1e-4, atol=1e-5)


def test_full_config_feature_width_is_2048():
    config = Pi0Config.full()
    obs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        pi0_model.fake_observation(Pi0Config.tiny(image_resolution=config.image_resolution)),
    )
    obs = dataclasses.replace(
        obs,
        tokenized_prompt=jax.ShapeDtypeStruct((1, config.max_token_len), jnp.int32),
        tokenized_prompt_mask=jax.ShapeDtypeStruct((1, config.max_token_len), bool),
    )
    out = jax.eval_shape(
        lambda p, o: pi0_model.encode_prefix(config, p, o, config.image_keys, True).feature,
        pi0_model.param_shapes(config),
        obs,
    )
    assert out.shape == (1, 2048) and out.dtype == jnp.float32


def test_feature_ignores_padding_slots_and_masked_cameras(pi0):
    config = pi0.config
    obs = _obs(config, seed=1)
    base = _feature(pi0, obs)
    rng = np.random.default_rng(7)
    pad = ~obs.tokenized_prompt_mask
    other_pad = np.where(pad, rng.integers(1, config.vocab_size, pad.shape), obs.tokenized_prompt)
    images = dict(obs.images)
    right = np.array(images[RIGHT])
    right[0] = rng.uniform(-1, 1, right[0].shape)  # example 0's RIGHT camera is masked
    images[RIGHT] = right
    changed = dataclasses.replace(obs, tokenized_prompt=other_pad.astype(np.int32), images=images)
    np.testing.assert_allclose(_feature(pi0, changed), base, rtol=1e-6, atol=1e-6)


def test_feature_depends_on_valid_prompt_tokens_and_unmasked_images(pi0):
    config = pi0.config
    obs = _obs(config, seed=2)
    base = _feature(pi0, obs)
    tokens = np.array(obs.tokenized_prompt)
    tokens[1, 0] = (tokens[1, 0] % (config.vocab_size - 1)) + 1  # a valid slot of example 1
    by_token = _feature(pi0, dataclasses.replace(obs, tokenized_prompt=tokens))
    images = dict(obs.images)
    base_cam = np.array(images[config.image_keys[0]])
    base_cam[2] = -base_cam[2]
    images[config.image_keys[0]] = base_cam
    by_image = _feature(pi0, dataclasses.replace(obs, images=images))
    for changed, row in ((by_token, 1), (by_image, 2)):
        assert np.abs(changed[row] - base[row]).max() > 1e-3
        others = [r for r in range(3) if r != row]
        np.testing.assert_allclose(changed[others], base[others], rtol=1e-5, atol=1e-6)


def test_batch_consistency_across_camera_skipping(pi0):
    """Each example alone (its masked camera then skipped altogether) gives its batched row."""
    obs = _obs(pi0.config, seed=5)
    batched = _feature(pi0, obs)
    for i in range(3):
        single = jax.tree.map(lambda x, i=i: np.asarray(x)[i : i + 1], obs)
        _, encoded = pi0_model.prepare_observation(pi0.config, single)
        assert (RIGHT in encoded) == (i != 0)
        np.testing.assert_allclose(_feature(pi0, single)[0], batched[i], rtol=1e-5, atol=1e-6)


def test_one_prefix_pass_gives_cache_and_feature(model):
    obs = _obs(model.config, seed=6)
    fast = model.encode_prefix(obs)
    full = model.encode_prefix(obs, return_feature=True)
    assert fast.feature is None
    np.testing.assert_allclose(np.asarray(full.feature), _feature(model, obs), rtol=1e-6, atol=1e-6)
    for a, b in ((full.k, fast.k), (full.v, fast.v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_actions_and_feature_from_one_call(pi0):
    """K noises per observation; the single-noise form is covered through Pi0Policy below."""
    obs = _obs(pi0.config, seed=6)
    noise = np.random.default_rng(0).normal(size=(3, 2, *pi0.noise_shape)).astype(np.float32)
    actions, feature = pi0.sample_actions_and_feature(obs, noise, num_steps=3)
    expected = pi0.sample_actions_multi(obs, noise, num_steps=3)
    np.testing.assert_allclose(np.asarray(actions), np.asarray(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(feature), _feature(pi0, obs), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="noise must be"):
        pi0.sample_actions_and_feature(obs, noise[:2], num_steps=3)


# ---------------------------------------------------------------------------------------------
# Pi0Policy (DROID) and the websocket server
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def droid(pi0, tmp_path_factory) -> Pi0Policy:
    corpus = [PROMPT, "put the cup in the sink", "open the drawer"] * 50
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    path.write_bytes(train_sentencepiece_model(corpus, vocab_size=40))
    tokenizer = PaligemmaTokenizer(path, max_len=pi0.config.max_token_len)
    rng = np.random.default_rng(1)
    stats = {
        "state": nl.NormStats(rng.normal(size=8), rng.uniform(0.5, 2, 8)),
        "actions": nl.NormStats(rng.normal(size=8), rng.uniform(0.5, 2, 8)),
    }
    return Pi0Policy(pi0, tokenizer, stats, "droid", prompt=PROMPT)


def _droid_obs(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation/exterior_image_1_left": rng.integers(0, 256, (batch, 64, 64, 3), np.uint8),
        "observation/wrist_image_left": rng.integers(0, 256, (batch, 64, 64, 3), np.uint8),
        "observation/joint_position": rng.normal(size=(batch, 7)).astype(np.float32),
        "observation/gripper_position": rng.uniform(0, 1, (batch, 1)).astype(np.float32),
        "prompt": [PROMPT] * batch,
    }


def _unbatch(obs: dict, i: int) -> dict:
    return {k: v[i] for k, v in obs.items()}


def test_policy_feature_uses_the_robot_pipeline(droid):
    obs = _droid_obs(2)
    feature = droid.prefix_feature(obs)
    assert feature.shape == (2, droid.prefix_feature_dim) and feature.dtype == np.float32
    assert droid.metadata["prefix_feature_dim"] == droid.config.paligemma.width
    model_obs, _ = droid.prepare(obs)
    np.testing.assert_allclose(feature, _feature(droid.model, model_obs), rtol=1e-6, atol=1e-6)
    # the prompt is part of the feature
    other = droid.prefix_feature({**obs, "prompt": ["open the drawer"] * 2})
    assert np.abs(other - feature).max() > 1e-3
    noise = np.random.default_rng(0).standard_normal((2, *droid.noise_shape)).astype(np.float32)
    actions, feat = droid.sample_actions_and_prefix_feature(obs, noise)
    np.testing.assert_allclose(actions, droid.sample_actions(obs, noise), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feat, feature, rtol=1e-6, atol=1e-6)
    out = droid.infer(_unbatch(obs, 1), noise[1], return_prefix_feature=True)
    np.testing.assert_allclose(out["prefix_feature"], feature[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["actions"], actions[1], rtol=1e-5, atol=1e-5)


def test_feature_through_the_websocket_server(droid, monkeypatch):
    obs = _droid_obs(2, seed=3)
    expected = droid.prefix_feature(obs)
    noise = np.random.default_rng(4).standard_normal((2, *droid.noise_shape)).astype(np.float32)
    expected_actions = droid.sample_actions(obs, noise)
    with (
        PolicyServer(droid, port=0).running() as srv,
        RemotePolicy("127.0.0.1", srv.port) as remote,
    ):
        assert remote.metadata["prefix_feature_dim"] == droid.prefix_feature_dim
        for i in range(2):
            feature = remote.prefix_feature(_unbatch(obs, i))
            assert feature.shape == (droid.prefix_feature_dim,) and feature.dtype == np.float32
            np.testing.assert_allclose(feature, expected[i], rtol=1e-5, atol=1e-6)
        # Actions + feature in one request use ONE prefix pass: the separate feature call is
        # never made.
        monkeypatch.setattr(
            droid, "prefix_feature", lambda _: pytest.fail("second prefix pass"), raising=True
        )
        reply = remote.request(
            {"method": "infer", "obs": _unbatch(obs, 0), "noise": noise[0],
             "return_prefix_feature": True}
        )  # fmt: skip
        np.testing.assert_allclose(reply["prefix_feature"], expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reply["actions"], expected_actions[0], rtol=1e-5, atol=1e-5)
        reply = remote.request(
            {"method": "infer_batch", "obs": obs, "noise": noise, "return_prefix_feature": True}
        )
        np.testing.assert_allclose(reply["prefix_feature"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reply["actions"], expected_actions, rtol=1e-5, atol=1e-5)
