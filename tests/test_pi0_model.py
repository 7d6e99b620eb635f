"""The JAX Pi0 / Pi0.5 model: parameter tree, masks, positions, sampler, prefix-cache reuse.

Runs the `tiny` configuration (random weights); the full and dummy sizes are only checked through
`param_shapes`, which allocates nothing. A straightforward uncached implementation written here
(openpi's training-style single pass over prefix + suffix through both experts) is the reference
the cached, batched and camera-skipping paths must reproduce.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.base_policies.pi0 import gemma
from dsrl.base_policies.pi0 import model as pi0_model
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.siglip import SigLIP

RIGHT = "right_wrist_0_rgb"


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _flat(tree) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(k.key for k in path): tuple(x.shape)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "pi05"])
def model(request) -> pi0_model.Pi0:
    return pi0_model.Pi0.create(Pi0Config.tiny(pi05=request.param), seed=1)


@pytest.fixture(scope="module")
def pi0() -> pi0_model.Pi0:
    return pi0_model.Pi0.create(Pi0Config.tiny(), seed=1)


def _noise(model, *lead, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(*lead, *model.noise_shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Parameter tree (must match openpi checkpoints exactly)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "params", "leaves"),
    [
        (Pi0Config.full(), 3_238_048_528, 50),
        (Pi0Config.dummy(), 429_337_808, 50),
        (Pi0Config.full(pi05=True), 3_353_433_872, 51),
    ],
    ids=["full", "dummy", "pi05_full"],
)
def test_param_tree_matches_openpi_counts(config, params, leaves):
    shapes = pi0_model.param_shapes(config)
    assert _count(shapes) == params
    assert len(jax.tree.leaves(shapes)) == leaves
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))


def test_param_tree_names_and_shapes():
    full = _flat(pi0_model.param_shapes(Pi0Config.full()))
    assert full["PaliGemma/img/embedding/kernel"] == (14, 14, 3, 1152)
    assert full["PaliGemma/img/pos_embedding"] == (1, 256, 1152)
    mha = "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0"
    assert full[f"{mha}/query/kernel"] == (27, 1152, 16, 72)
    assert full[f"{mha}/out/kernel"] == (27, 16, 72, 1152)
    assert full["PaliGemma/img/head/kernel"] == (1152, 2048)
    assert full["PaliGemma/llm/embedder/input_embedding"] == (257_152, 2048)
    assert full["PaliGemma/llm/layers/attn/kv_einsum/w"] == (18, 2, 1, 2048, 256)
    assert full["PaliGemma/llm/layers/attn/q_einsum_1/w"] == (18, 8, 1024, 256)
    assert full["PaliGemma/llm/layers/attn/attn_vec_einsum_1/w"] == (18, 8, 256, 1024)
    assert full["PaliGemma/llm/layers/mlp/gating_einsum"] == (18, 2, 2048, 16_384)
    assert full["PaliGemma/llm/layers/pre_ffw_norm_1/scale"] == (18, 1024)
    assert full["action_time_mlp_in/kernel"] == (2048, 1024)
    assert full["state_proj/kernel"] == (32, 1024)

    pi05 = _flat(pi0_model.param_shapes(Pi0Config.full(pi05=True)))
    assert pi05["PaliGemma/llm/layers/pre_attention_norm_1/Dense_0/kernel"] == (18, 1024, 3072)
    assert pi05["PaliGemma/llm/final_norm_1/Dense_0/bias"] == (3072,)
    assert pi05["time_mlp_in/kernel"] == (1024, 1024)
    assert not any(k.startswith(("state_proj", "action_time_mlp")) for k in pi05)
    assert "PaliGemma/llm/layers/pre_attention_norm_1/scale" not in pi05


def test_hand_built_vision_tree_equals_flax_module_tree():
    for config in (Pi0Config.tiny(), Pi0Config.full()):
        image = jax.ShapeDtypeStruct((1, *config.image_resolution, 3), jnp.float32)
        module = SigLIP(config.vision, config.paligemma.width)
        flax_tree = jax.eval_shape(module.init, jax.random.key(0), image)["params"]
        assert _flat(flax_tree) == _flat(pi0_model.param_shapes(config)["PaliGemma"]["img"])


def test_config_presets_and_errors():
    assert Pi0Config.from_name("pi05").max_token_len == 200
    assert Pi0Config.from_name("dummy").vision_variant == "So400m/14"
    assert Pi0Config.from_name("full").prefix_len == 816
    assert Pi0Config.from_name("tiny", action_horizon=5).action_horizon == 5
    with pytest.raises(ValueError, match="Unknown Pi0 variant"):
        Pi0Config.from_name("huge")
    with pytest.raises(ValueError, match="must share depth"):
        Pi0Config(paligemma_variant="gemma_2b", action_expert_variant="dummy")
    with pytest.raises(ValueError, match="divisible by the patch"):
        Pi0Config.tiny(image_resolution=(30, 30))


# ---------------------------------------------------------------------------------------------
# Layer numerics against hand-computed values
# ---------------------------------------------------------------------------------------------


def test_time_embedding_at_zero_and_formula():
    emb = np.asarray(pi0_model.posemb_sincos(jnp.array([0.0, 0.3]), 1024, 4e-3, 4.0))
    np.testing.assert_array_equal(emb[0], np.r_[np.zeros(512), np.ones(512)])
    # First channel has the shortest period (4e-3), the 512th the longest (4.0); sin then cos.
    np.testing.assert_allclose(emb[1, 0], np.sin(2 * np.pi * 0.3 / 4e-3), atol=1e-4)
    np.testing.assert_allclose(emb[1, 511], np.sin(2 * np.pi * 0.3 / 4.0), atol=1e-6)
    np.testing.assert_allclose(emb[1, 512 + 511], np.cos(2 * np.pi * 0.3 / 4.0), atol=1e-6)


def test_rope_is_half_split():
    x = jnp.asarray([[[[1.0, 2.0, 3.0, 4.0]]]])  # (B=1, T=1, heads=1, H=4)
    out = np.asarray(gemma.apply_rope(x, jnp.asarray([[5]])))[0, 0, 0]
    # pairs are (x[0], x[2]) at frequency 1 and (x[1], x[3]) at frequency 1/100
    a0, a1 = 5.0, 5.0 / 100.0
    expected = [
        1 * np.cos(a0) - 3 * np.sin(a0),
        2 * np.cos(a1) - 4 * np.sin(a1),
        3 * np.cos(a0) + 1 * np.sin(a0),
        4 * np.cos(a1) + 2 * np.sin(a1),
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_rms_norm_one_plus_scale():
    x = jnp.asarray([[3.0, 4.0]])
    y, gate = gemma.rms_norm(x, {"scale": jnp.asarray([0.0, 1.0])}, None)
    rms = np.sqrt((9 + 16) / 2 + 1e-6)
    np.testing.assert_allclose(np.asarray(y)[0], [3 / rms, 2 * 4 / rms], rtol=1e-6)
    assert gate is None


def test_text_embedding_scaled_by_sqrt_width_in_table_dtype():
    table = jnp.ones((4, 2048), jnp.bfloat16)
    out = gemma.embed_tokens(
        {"embedder": {"input_embedding": table}}, jnp.asarray([[1]]), "float32"
    )
    # sqrt(2048) = 45.2548 is rounded to bfloat16 (45.25) before multiplying, as Gemma does.
    np.testing.assert_array_equal(np.asarray(out), 45.25)


# ---------------------------------------------------------------------------------------------
# Masks and positions, written out by hand
# ---------------------------------------------------------------------------------------------


def test_prefix_mask_and_positions_by_hand():
    # camera A (2 tokens, valid), camera B (2 tokens, masked), prompt of 3 slots with 2 valid.
    mask = jnp.asarray([[1, 1, 0, 0, 1, 1, 0]], bool)
    attn, positions = pi0_model.prefix_attention(mask)
    np.testing.assert_array_equal(np.asarray(positions)[0], [0, 1, 1, 1, 2, 3, 3])
    v = [1, 1, 0, 0, 1, 1, 0]
    expected = np.array([[v[i] and v[j] for j in range(7)] for i in range(7)], bool)
    np.testing.assert_array_equal(np.asarray(attn)[0], expected)


def test_suffix_mask_by_hand():
    pi0 = pi0_model.suffix_attention(Pi0Config.tiny(action_horizon=3))
    # rows are queries: state sees itself only; actions see state and all actions
    expected = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(pi0, expected)
    pi05 = pi0_model.suffix_attention(Pi0Config.tiny(action_horizon=3, pi05=True))
    np.testing.assert_array_equal(pi05, np.ones((3, 3), bool))


def test_libero_layout_positions(pi0):
    """Tiny config: 16 tokens per camera, right wrist masked, prompt with 5 of 16 slots valid."""
    config = pi0.config
    obs = pi0_model.fake_observation(config, 1, masked_cameras=(RIGHT,), prompt_len=5)
    obs, _ = pi0_model.prepare_observation(config, obs)
    _, mask = pi0_model._embed_prefix(config, pi0.params, obs, config.image_keys)
    _, positions = pi0_model.prefix_attention(mask)
    expected = np.r_[np.arange(32), np.full(16, 31), np.arange(32, 37), np.full(11, 36)]
    np.testing.assert_array_equal(np.asarray(positions)[0], expected)
    np.testing.assert_array_equal(
        np.asarray(mask)[0], np.r_[np.ones(32), np.zeros(16), np.ones(5), np.zeros(11)]
    )


# ---------------------------------------------------------------------------------------------
# A reference: one uncached joint pass over prefix + suffix per step (openpi's training layout)
# ---------------------------------------------------------------------------------------------


def _make_attn_mask(input_mask, ar):
    cum = jnp.cumsum(jnp.broadcast_to(ar, input_mask.shape), axis=1)
    return (cum[:, None, :] <= cum[:, :, None]) & input_mask[:, None, :] & input_mask[:, :, None]


def _reference_joint(params, configs, streams, mask, positions, cond):
    """Both experts over the concatenated sequence, layer by layer, with the full (T, T) mask."""
    layers = params["layers"]
    xs = list(streams)
    lens = [x.shape[1] for x in xs]
    for layer in range(configs[0].depth):
        sel = jax.tree.map(lambda w, layer=layer: w[layer], layers)
        qs, ks, vs, gates = [], [], [], []
        for i, x in enumerate(xs):  # expert 1 is the only one that may be adaptive (Pi0.5)
            norm = sel[gemma._suffix("pre_attention_norm", i)]
            h, g = gemma.rms_norm(x, norm, cond if i == 1 else None)
            gates.append(g)
            qs.append(
                jnp.einsum("btd,ndh->btnh", h, sel["attn"][gemma._suffix("q_einsum", i)]["w"])
            )
            kv = jnp.einsum("bsd,ckdh->cbskh", h, sel["attn"][gemma._suffix("kv_einsum", i)]["w"])
            ks.append(kv[0])
            vs.append(kv[1])
        q, k, v = (jnp.concatenate(y, axis=1) for y in (qs, ks, vs))
        q = gemma.apply_rope(q, positions) * configs[0].head_dim ** -0.5
        k = gemma.apply_rope(k, positions)
        logits = jnp.einsum("btnh,bsh->bnts", q, k[:, :, 0])
        probs = jax.nn.softmax(jnp.where(mask[:, None], logits, -2.3819763e38), axis=-1)
        enc = jnp.einsum("bnts,bsh->btnh", probs, v[:, :, 0])
        start, new = 0, []
        for i, (x, n) in enumerate(zip(xs, lens, strict=True)):
            w = sel["attn"][gemma._suffix("attn_vec_einsum", i)]["w"]
            y = jnp.einsum("btnh,nhd->btd", enc[:, start : start + n], w)
            x = x + (y if gates[i] is None else y * gates[i])
            h, g = gemma.rms_norm(
                x, sel[gemma._suffix("pre_ffw_norm", i)], cond if i == 1 else None
            )
            mlp = sel[gemma._suffix("mlp", i)]
            y = gemma.feed_forward(h, mlp["gating_einsum"], mlp["linear"])
            new.append(x + (y if g is None else y * g))
            start += n
        xs = new
    out, _ = gemma.rms_norm(xs[1], params["final_norm_1"], cond)
    return out


def _reference_sample(model, obs, noise, num_steps):
    """openpi's algorithm, literally: every camera through SigLIP on its own, no cache, no K."""
    fn = jax.jit(functools.partial(_reference_sample_impl, model.config, num_steps=num_steps))
    return np.asarray(fn(model.params, obs, noise))


def _reference_sample_impl(config, params, obs, noise, num_steps):
    siglip = SigLIP(config.vision, config.paligemma.width)
    llm = params["PaliGemma"]["llm"]
    tokens, masks = [], []
    for key in config.image_keys:
        t = siglip.apply({"params": params["PaliGemma"]["img"]}, jnp.asarray(obs.images[key]))
        tokens.append(t)
        masks.append(jnp.repeat(jnp.asarray(obs.image_masks[key])[:, None], t.shape[1], axis=1))
    tokens.append(gemma.embed_tokens(llm, jnp.asarray(obs.tokenized_prompt), jnp.float32))
    masks.append(jnp.asarray(obs.tokenized_prompt_mask))
    prefix, prefix_mask = jnp.concatenate(tokens, 1), jnp.concatenate(masks, 1)
    b, h = noise.shape[0], config.action_horizon
    ar_suffix = [True] + [False] * (h - 1) if config.pi05 else [True, True] + [False] * (h - 1)
    ar = jnp.asarray([False] * prefix.shape[1] + ar_suffix)
    x, time, dt = jnp.asarray(noise), 1.0, -1.0 / num_steps
    for _ in range(num_steps):
        temb = pi0_model.posemb_sincos(jnp.full((b,), time), config.action_expert.width, 4e-3, 4.0)
        a = pi0_model._dense(params["action_in_proj"], x)
        if config.pi05:
            cond = jax.nn.swish(pi0_model._dense(params["time_mlp_in"], temb))
            cond = jax.nn.swish(pi0_model._dense(params["time_mlp_out"], cond))[:, None]
            suffix = a
        else:
            cond = None
            at = jnp.concatenate([a, jnp.repeat(temb[:, None], h, axis=1)], -1)
            at = pi0_model._dense(params["action_time_mlp_in"], at)
            at = pi0_model._dense(params["action_time_mlp_out"], jax.nn.swish(at))
            state = pi0_model._dense(params["state_proj"], jnp.asarray(obs.state))[:, None]
            suffix = jnp.concatenate([state, at], axis=1)
        input_mask = jnp.concatenate([prefix_mask, jnp.ones(suffix.shape[:2], bool)], axis=1)
        mask = _make_attn_mask(input_mask, ar)
        positions = jnp.cumsum(input_mask, axis=1) - 1
        configs = (config.paligemma, config.action_expert)
        out = _reference_joint(llm, configs, [prefix, suffix], mask, positions, cond)
        v = pi0_model._dense(params["action_out_proj"], out[:, -h:])
        x, time = x + dt * v, time + dt
    return x


def test_matches_uncached_reference(model):
    """Cache reuse, camera skipping and K-batching together reproduce the plain algorithm."""
    obs = pi0_model.fake_observation(model.config, 2, masked_cameras=(RIGHT,), prompt_len=11)
    noise = _noise(model, 2)
    ours = np.asarray(model.sample_actions(None, obs, noise=noise, num_steps=3))
    ref = _reference_sample(model, obs, noise, num_steps=3)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    assert ours.shape == (2, *model.noise_shape) and ours.dtype == np.float32
    assert np.all(np.isfinite(ours))


# ---------------------------------------------------------------------------------------------
# Sampler behaviour
# ---------------------------------------------------------------------------------------------


def test_same_noise_same_actions_other_noise_other_actions(model):
    obs = pi0_model.fake_observation(model.config, 2)
    a = np.asarray(model.sample_actions(None, obs, noise=_noise(model, 2, seed=0), num_steps=3))
    key = jax.random.key(5)
    b = np.asarray(model.sample_actions(key, obs, noise=_noise(model, 2, seed=0), num_steps=3))
    c = np.asarray(model.sample_actions(None, obs, noise=_noise(model, 2, seed=1), num_steps=3))
    np.testing.assert_array_equal(a, b)  # rng is unused once noise is given
    assert np.abs(a - c).mean() > 1e-2
    # the observation matters too
    other = pi0_model.fake_observation(model.config, 2, seed=7)
    d = np.asarray(model.sample_actions(None, other, noise=_noise(model, 2, seed=0), num_steps=3))
    assert np.abs(a - d).mean() > 1e-3


def test_rng_draws_noise_when_none_given(pi0):
    obs = pi0_model.fake_observation(pi0.config, 2)
    a = pi0.sample_actions(jax.random.key(0), obs, num_steps=3)
    b = pi0.sample_actions(jax.random.key(0), obs, num_steps=3)
    c = pi0.sample_actions(jax.random.key(1), obs, num_steps=3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_k_noises_against_one_prefix_equal_separate_calls(model):
    obs = pi0_model.fake_observation(model.config, 2, masked_cameras=(RIGHT,))
    noise = _noise(model, 2, 3)
    multi = np.asarray(model.sample_actions_multi(obs, noise, num_steps=3))
    assert multi.shape == (2, 3, *model.noise_shape)
    for k in range(3):
        single = np.asarray(model.sample_actions(None, obs, noise=noise[:, k], num_steps=3))
        np.testing.assert_allclose(multi[:, k], single, rtol=1e-5, atol=1e-5)
    # the explicit two-stage API gives the same
    cache = model.encode_prefix(obs)
    np.testing.assert_allclose(np.asarray(model.denoise(cache, noise, 3)), multi, atol=1e-5)


def test_masked_camera_is_skipped_with_identical_actions(pi0):
    config = pi0.config
    obs = pi0_model.fake_observation(config, 2, masked_cameras=(RIGHT,))
    noise = _noise(pi0, 2)
    skipped = np.asarray(pi0.sample_actions(None, obs, noise=noise, num_steps=3))
    clean, encoded = pi0_model.prepare_observation(config, obs)
    assert encoded == config.image_keys[:2]
    assert pi0.encode_prefix(obs).prefix_len == 2 * config.tokens_per_image + config.max_token_len
    encoded_all = pi0_model._sample_jit(
        pi0.params, clean, noise, config=config, num_steps=3, encoded=config.image_keys
    )
    np.testing.assert_allclose(skipped, np.asarray(encoded_all), rtol=1e-5, atol=1e-5)
    # a masked camera's pixels cannot leak into the actions
    noisy_pixels = dataclasses.replace(
        obs, images={**obs.images, RIGHT: np.ones_like(obs.images[RIGHT])}
    )
    np.testing.assert_array_equal(
        np.asarray(pi0.sample_actions(None, noisy_pixels, noise=noise, num_steps=3)), skipped
    )
    # masked for only one batch element: still encoded (the other element sees it)
    partial = dataclasses.replace(
        obs, image_masks={**obs.image_masks, RIGHT: np.array([True, False])}
    )
    assert pi0_model.prepare_observation(config, partial)[1] == config.image_keys


def test_prompt_padding_is_invisible(pi0):
    obs = pi0_model.fake_observation(pi0.config, 2, prompt_len=5)
    changed = np.array(obs.tokenized_prompt)
    changed[:, 5:] = 7  # different token ids in padded slots
    other = dataclasses.replace(obs, tokenized_prompt=changed)
    noise = _noise(pi0, 2)
    np.testing.assert_allclose(
        np.asarray(pi0.sample_actions(None, obs, noise=noise, num_steps=3)),
        np.asarray(pi0.sample_actions(None, other, noise=noise, num_steps=3)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_compiles_once_per_shape(pi0):
    obs_a = pi0_model.fake_observation(pi0.config, 2, seed=3)
    pi0.sample_actions(None, obs_a, noise=_noise(pi0, 2, seed=3), num_steps=3)
    size = pi0_model._sample_jit._cache_size()
    for seed in (4, 5):
        obs = pi0_model.fake_observation(pi0.config, 2, seed=seed)
        noise = _noise(pi0, 2, seed=seed)
        pi0.sample_actions(None, obs, noise=noise, num_steps=3).block_until_ready()
    assert pi0_model._sample_jit._cache_size() == size


def test_bfloat16_compute_tracks_float32(pi0):
    config16 = dataclasses.replace(pi0.config, dtype="bfloat16")
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), pi0.params)
    model16 = pi0_model.Pi0.create(config16, params16)
    obs = pi0_model.fake_observation(pi0.config, 1)
    noise = _noise(pi0, 1)
    a32 = np.asarray(pi0.sample_actions(None, obs, noise=noise, num_steps=3))
    a16 = np.asarray(model16.sample_actions(None, obs, noise=noise, num_steps=3))
    assert a16.dtype == np.float32
    assert np.abs(a16 - a32).mean() < 0.05 * np.abs(a32).mean()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(pi0):
    config = pi0.config
    obs = pi0_model.fake_observation(config, 2)
    with pytest.raises(ValueError, match=r"lacks cameras \['right_wrist_0_rgb'\]"):
        images = {k: v for k, v in obs.images.items() if k != RIGHT}
        pi0.sample_actions(None, dataclasses.replace(obs, images=images), noise=_noise(pi0, 2))
    with pytest.raises(ValueError, match="resize"):
        images = {**obs.images, RIGHT: np.zeros((2, 64, 64, 3), np.float32)}
        pi0.sample_actions(None, dataclasses.replace(obs, images=images), noise=_noise(pi0, 2))
    with pytest.raises(ValueError, match="uint8"):
        images = {**obs.images, RIGHT: np.zeros((2, 32, 32, 3), np.uint8)}
        pi0.sample_actions(None, dataclasses.replace(obs, images=images), noise=_noise(pi0, 2))
    with pytest.raises(ValueError, match="zero-padded"):
        pi0.sample_actions(None, dataclasses.replace(obs, state=np.zeros((2, 8))), noise=None)
    with pytest.raises(ValueError, match="noise must be"):
        pi0.sample_actions(None, obs, noise=np.zeros((2, 5, 32), np.float32))
    with pytest.raises(ValueError, match="noise must be"):
        pi0.sample_actions_multi(obs, _noise(pi0, 2))
