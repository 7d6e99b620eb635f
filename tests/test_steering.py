"""Noise parameterisations: the agent's latent -> base-policy noise."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsrl.steering import MODES, dct_basis, make_noise_param

PI0_LIBERO = (50, 32)


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    horizon=st.integers(3, 12),
    noise_dim=st.integers(1, 6),
    batch=st.integers(1, 5),
)
def test_shapes_and_dtype(mode, horizon, noise_dim, batch):
    param = make_noise_param(mode, (horizon, noise_dim), 1.0, num_basis=3)
    expected_dim = {"repeat": noise_dim, "full": horizon * noise_dim, "basis": 3 * noise_dim}
    assert param.latent_dim == expected_dim[mode]
    actions = np.random.default_rng(0).standard_normal((batch, param.latent_dim))
    noise = param.to_noise(actions)
    assert noise.shape == (batch, horizon, noise_dim) and noise.dtype == np.float32


def test_repeat_is_the_reference_tiling():
    param = make_noise_param("repeat", PI0_LIBERO, 1.0)
    assert param.latent_dim == 32
    actions = np.random.default_rng(1).uniform(-1, 1, (4, 32)).astype(np.float32)
    np.testing.assert_array_equal(param.to_noise(actions), np.tile(actions[:, None, :], (1, 50, 1)))


def test_full_is_a_reshape():
    param = make_noise_param("full", (10, 32), 2.5)
    actions = np.random.default_rng(2).standard_normal((3, 320)).astype(np.float32)
    np.testing.assert_array_equal(param.to_noise(actions), actions.reshape(3, 10, 32))


def test_basis_gives_unit_variance_smooth_noise():
    param = make_noise_param("basis", PI0_LIBERO, 1.0, num_basis=3)
    assert param.latent_dim == 96
    coeffs = np.random.default_rng(3).standard_normal((20000, param.latent_dim))
    noise = param.to_noise(coeffs)
    # Unit variance at every horizon step and noise dim, like the base policy's own prior.
    np.testing.assert_allclose(noise.var(axis=0), 1.0, atol=0.06)
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=0.06)
    # Smooth over time: neighbouring steps are far more alike than i.i.d. noise (E diff^2 = 2).
    assert np.mean(np.diff(noise, axis=1) ** 2) < 0.1
    np.testing.assert_allclose(np.linalg.norm(dct_basis(50, 3), axis=1), 1.0, rtol=1e-6)


def test_basis_with_one_function_is_repeat():
    basis = make_noise_param("basis", (8, 2), 1.0, num_basis=1)
    repeat = make_noise_param("repeat", (8, 2), 1.0)
    actions = np.random.default_rng(4).standard_normal((5, 2))
    np.testing.assert_allclose(basis.to_noise(actions), repeat.to_noise(actions), rtol=1e-6)


def test_controlled_dims_leave_padding_at_zero():
    param = make_noise_param("repeat", PI0_LIBERO, 1.0, controlled_dims=7)
    assert param.latent_dim == 7
    noise = param.to_noise(np.ones((2, 7)))
    assert np.all(noise[..., :7] == 1.0) and np.all(noise[..., 7:] == 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_one_map_for_numpy_and_inside_jit(mode):
    param = make_noise_param(mode, (8, 4), 1.0, controlled_dims=3)
    latents = np.random.default_rng(5).standard_normal((6, param.latent_dim)).astype(np.float32)
    from_numpy = param.to_noise(latents)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    traced = jax.jit(param.to_noise)(latents)  # a tracer inside jit: the jax path
    assert isinstance(traced, jax.Array) and traced.shape == (6, 8, 4)
    np.testing.assert_allclose(np.asarray(traced), from_numpy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(param.to_noise(jax.numpy.asarray(latents))), from_numpy)
    # Differentiable through the jax path (a learner may take gradients through the map).
    grad = jax.grad(lambda z: param.to_noise(z).sum())(jax.numpy.asarray(latents))
    assert grad.shape == latents.shape and np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("magnitude", [0.5, 1.0, 2.5])
def test_warmup_is_clipped_gaussian_in_action_space(magnitude):
    param = make_noise_param("basis", (10, 32), magnitude)
    actions = param.sample_warmup(np.random.default_rng(6), 4000)
    assert actions.shape == (4000, param.latent_dim) and actions.dtype == np.float32
    assert np.abs(actions).max() <= magnitude
    # N(0, 1) before clipping: the bound is hit exactly as often as |z| > magnitude.
    clipped = np.mean(np.abs(actions) == magnitude)
    expected = np.mean(np.abs(np.random.default_rng(7).standard_normal(100000)) > magnitude)
    assert abs(clipped - expected) < 0.01
    again = param.sample_warmup(np.random.default_rng(6), 4000)
    np.testing.assert_array_equal(actions, again)


def test_iid_noise_is_standard_normal_over_the_full_chunk():
    param = make_noise_param("repeat", (8, 2), 1.0)
    noise = param.sample_iid_noise(np.random.default_rng(8), 5000)
    assert noise.shape == (5000, 8, 2) and noise.dtype == np.float32
    np.testing.assert_allclose(noise.std(axis=0), 1.0, atol=0.05)
    # Independent across the horizon, unlike `repeat`.
    assert abs(np.corrcoef(noise[:, 0, 0], noise[:, 1, 0])[0, 1]) < 0.05


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="repeat"):
        make_noise_param("tile", (8, 2), 1.0)
    with pytest.raises(ValueError, match="action_magnitude"):
        make_noise_param("repeat", (8, 2), 0.0)
    with pytest.raises(ValueError, match="num_basis"):
        make_noise_param("basis", (4, 2), 1.0, num_basis=5)
    with pytest.raises(ValueError, match="controlled_dims"):
        make_noise_param("repeat", (8, 2), 1.0, controlled_dims=3)
    param = make_noise_param("full", (8, 2), 1.0)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        param.to_noise(np.zeros((3, 2)))
