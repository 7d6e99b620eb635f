"""Networks: shapes, bounds, the spatial softmax, the vmapped ensemble, gradient blocking."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.data.augmentations import color_jitter, random_crop
from dsrl.networks import (
    MLP,
    PixelMultiplexer,
    SpatialSoftmax,
    StateActionEnsemble,
    TanhGaussianPolicy,
    make_encoder,
    reduce_ensemble,
)

KEY = jax.random.PRNGKey(0)


def _pixels(b=2, hw=32, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, hw, hw, c), np.uint8))


def test_small_encoder_matches_reference_layout():
    enc = make_encoder("small")  # 4 x 32, strides 2,1,1,1, VALID: 64 -> 31 -> 29 -> 27 -> 25
    params = enc.init(KEY, _pixels(hw=64))
    assert enc.apply(params, _pixels(hw=64)).shape == (2, 25 * 25 * 32)
    kernels = [params["params"][f"Conv_{i}"]["kernel"].shape for i in range(4)]
    assert kernels == [(3, 3, 3, 32)] + [(3, 3, 32, 32)] * 3
    # uint8 input is scaled by 1/255: the same image as floats gives the same features.
    pix = _pixels(hw=64)
    np.testing.assert_allclose(
        enc.apply(params, pix), enc.apply(params, pix.astype(jnp.float32) / 255.0), atol=1e-5
    )


@pytest.mark.parametrize(
    "name,pooling,dim",
    [("small", "spatial_softmax", 32), ("impala", "flatten", 3 * 3 * 16), ("resnet", "avg", 16)],
)
def test_encoders_and_poolings(name, pooling, dim):
    enc = make_encoder(name, features=(8, 16), strides=(2, 1), pooling=pooling)
    pix = _pixels(b=3, hw=12, c=6)  # two stacked cameras
    out = jax.jit(lambda p: enc.apply(enc.init(KEY, p), p))(pix)
    assert out.shape == (3, dim) and bool(jnp.all(jnp.isfinite(out)))
    if pooling == "spatial_softmax":
        assert float(jnp.abs(out).max()) <= 1.0


def test_spatial_softmax_is_expected_coordinate():
    h, w, c = 9, 7, 2
    fmap = np.full((1, h, w, c), -50.0, np.float32)
    fmap[0, 2, 5, 0] = 50.0  # channel 0 peaks at row 2, col 5
    fmap[0, :, :, 1] = 0.0  # channel 1 uniform: expectation at the centre
    out = SpatialSoftmax().apply({}, jnp.asarray(fmap))
    xs, ys = np.linspace(-1, 1, w), np.linspace(-1, 1, h)
    np.testing.assert_allclose(out[0], [xs[5], 0.0, ys[2], 0.0], atol=1e-5)
    # A blend of two peaks lands at the weighted mean of their coordinates.
    fmap2 = np.full((1, h, w, 1), -50.0, np.float32)
    fmap2[0, 0, 0, 0] = fmap2[0, h - 1, w - 1, 0] = 10.0
    np.testing.assert_allclose(SpatialSoftmax().apply({}, jnp.asarray(fmap2))[0], [0, 0], atol=1e-5)
    # Learnable temperature is a parameter and sharpens/softens the expectation.
    sm = SpatialSoftmax(temperature=2.0, learnable_temperature=True)
    params = sm.init(KEY, jnp.asarray(fmap))
    np.testing.assert_allclose(np.exp(params["params"]["log_temperature"]), 2.0, rtol=1e-6)


@pytest.mark.parametrize("action_magnitude", [1.0, 2.5])
def test_tanh_gaussian_bounds_logprob_and_mode(action_magnitude):
    policy = TanhGaussianPolicy((16, 16), action_dim=4, action_magnitude=action_magnitude)
    feats = jax.random.normal(KEY, (512, 10)) * 30.0  # large inputs push samples to the bound
    params = policy.init(KEY, feats)
    dist = policy.apply(params, feats)
    actions, log_probs = dist.sample_and_log_prob(jax.random.PRNGKey(1))
    assert actions.shape == (512, 4) and log_probs.shape == (512,)
    assert float(jnp.abs(actions).max()) <= action_magnitude
    assert float(dist.scale.min()) >= np.exp(-20) and float(dist.scale.max()) <= np.exp(2) + 1e-5
    np.testing.assert_allclose(dist.mode(), action_magnitude * np.tanh(dist.loc), rtol=1e-6)
    # log-prob equals distrax's Chain([rescale, Tanh]) on N(loc, scale), the reference's form.
    ref = distrax.Transformed(
        distrax.MultivariateNormalDiag(dist.loc[:8], dist.scale[:8]),
        distrax.Block(
            distrax.Chain([distrax.ScalarAffine(0.0, action_magnitude), distrax.Tanh()]), 1
        ),
    )
    a_small = action_magnitude * jnp.tanh(dist.loc[:8] + 0.3 * dist.scale[:8])
    ours = type(dist)(dist.loc[:8], dist.scale[:8], action_magnitude).log_prob(a_small)
    np.testing.assert_allclose(ours, ref.log_prob(a_small), rtol=1e-3, atol=1e-3)
    # At init the output layers are tiny: mean ~ 0 and std ~ 1.
    small = policy.apply(params, jnp.ones((2, 10)))
    assert float(jnp.abs(small.loc).max()) < 0.1 and float(jnp.abs(small.scale - 1).max()) < 0.1


def test_ensemble_is_one_vmap_with_distinct_heads():
    ens = StateActionEnsemble((16, 16), num_qs=5)
    feats, acts = jax.random.normal(KEY, (7, 6)), jax.random.normal(KEY, (7, 3))
    params = ens.init(KEY, feats, acts)
    qs = ens.apply(params, feats, acts)
    assert qs.shape == (5, 7)
    kernel = params["params"]["heads"]["MLP_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (5, 9, 16)  # stacked on a leading head axis, [action, features] input
    assert "LayerNorm_0" in params["params"]["heads"]["MLP_0"]
    assert float(jnp.std(qs, axis=0).min()) > 1e-4  # heads are initialised independently
    # Action chunks (B, H, A) are flattened.
    chunk_ens = StateActionEnsemble((8,), num_qs=2)
    p2 = chunk_ens.init(KEY, feats, jnp.zeros((7, 4, 3)))
    assert chunk_ens.apply(p2, feats, jnp.zeros((7, 4, 3))).shape == (2, 7)


def test_reduce_ensemble_mean_min_and_redq_subset():
    qs = jnp.arange(20.0).reshape(10, 2)
    np.testing.assert_allclose(reduce_ensemble(qs, "mean"), qs.mean(0))
    np.testing.assert_allclose(reduce_ensemble(qs, "min"), qs.min(0))
    seen = set()
    for i in range(20):
        sub = reduce_ensemble(qs, "min", jax.random.PRNGKey(i), subset_size=2)
        assert float(sub[0]) >= 0.0 and float(sub[0]) <= 16.0  # min of 2 distinct heads
        seen.add(float(sub[0]))
    assert len(seen) > 1  # the subset is random
    with pytest.raises(ValueError, match="critic_reduction"):
        reduce_ensemble(qs, "median")


def test_mlp_layer_norm_and_dropout():
    x = jax.random.normal(KEY, (4, 8))
    mlp = MLP((32, 32, 1), use_layer_norm=True, dropout_rate=0.5)
    params = mlp.init(KEY, x)
    assert "LayerNorm_0" in params["params"] and "LayerNorm_2" not in params["params"]
    det1, det2 = mlp.apply(params, x), mlp.apply(params, x)
    np.testing.assert_array_equal(det1, det2)
    train = mlp.apply(params, x, training=True, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not np.allclose(train, det1)


def test_multiplexer_features_and_stop_gradient():
    obs = {"pixels": _pixels(hw=16), "state": jnp.ones((2, 5))}
    for stop in (False, True):
        pm = PixelMultiplexer(
            make_encoder("small", features=(4,), strides=(2,)),
            StateActionEnsemble((8,), num_qs=2),
            bottleneck_dim=6,
            stop_gradient=stop,
        )
        params = pm.init(KEY, obs, jnp.zeros((2, 3)))
        feats = pm.apply(params, obs, method="encode")
        assert feats.shape == (2, 6 + 5)
        assert float(jnp.abs(feats[:, :6]).max()) <= 1.0  # tanh bottleneck
        np.testing.assert_array_equal(feats[:, 6:], 1.0)  # raw state appended
        grads = jax.grad(lambda p, pm=pm: pm.apply(p, obs, jnp.ones((2, 3))).sum())(params)
        enc_grad = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["params"]["encoder"]))
        assert (enc_grad == 0.0) == stop


def test_bad_encoder_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        make_encoder("vit")
    with pytest.raises(ValueError, match="same length"):
        make_encoder("small", features=(8, 8), strides=(2,))
    with pytest.raises(ValueError, match="positive"):
        make_encoder("small", features=(8, 0), strides=(2, 1))
    with pytest.raises(ValueError, match="pooling"):
        make_encoder("small", pooling="max")


def test_augmentations_keep_shape_and_range():
    pix = _pixels(b=8, hw=16, c=6)
    cropped = random_crop(KEY, pix, padding=4)
    assert cropped.shape == pix.shape and cropped.dtype == jnp.uint8
    assert not np.array_equal(cropped, pix)  # some sample shifted
    np.testing.assert_array_equal(random_crop(KEY, pix, padding=0), pix)
    # A crop is a shift: every output row of sample 0 is some (edge-clamped) row of the input.
    jittered = color_jitter(KEY, pix)
    assert jittered.shape == pix.shape and jittered.dtype == jnp.float32
    assert float(jittered.min()) >= 0.0 and float(jittered.max()) <= 1.0
    diff = jnp.abs(jittered - pix / 255.0).mean(axis=(1, 2, 3))
    assert float(diff.max()) > 1e-3 and float(diff.max()) < 0.3  # changed, but mildly
    # Zero-strength jitter is the identity.
    from dsrl.data.augmentations import ColorJitterConfig

    ident = color_jitter(KEY, pix, ColorJitterConfig(0.0, 0.0, 0.0, 0.0, 1.0))
    np.testing.assert_allclose(ident, pix / 255.0, atol=1e-5)
