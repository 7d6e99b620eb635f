"""`Pi0Policy.from_checkpoint("random")`: a full-stack Pi0 policy with random weights and no files
(what `--pi0_checkpoint random` and scripts/gpu_check.py run), and bfloat16 random init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.base_policies.pi0 import Pi0Policy
from dsrl.base_policies.pi0 import model as model_lib
from dsrl.base_policies.pi0.config import Pi0Config


def _libero_obs(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "agentview_image": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "state": rng.normal(size=(batch, 8)).astype(np.float32),
        "prompt": "pick up the cream cheese and put it in the tray",
    }


def test_init_params_bfloat16_has_the_float32_tree_cast_leaf_by_leaf():
    cfg = Pi0Config.tiny()
    f32 = model_lib.init_params(cfg, 3)
    bf16 = model_lib.init_params(cfg, 3, dtype="bfloat16")
    assert jax.tree.structure(f32) == jax.tree.structure(bf16)
    for a, b in zip(jax.tree.leaves(f32), jax.tree.leaves(bf16), strict=True):
        assert b.dtype == jnp.bfloat16 and b.shape == a.shape
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a.astype(jnp.bfloat16)))
    with pytest.raises(ValueError, match="float32' or 'bfloat16"):
        model_lib.init_params(cfg, 3, dtype="float16")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_random_checkpoint_gives_a_working_deterministic_policy(dtype):
    policy = Pi0Policy.from_checkpoint("random", "libero", variant="tiny", dtype=dtype, num_steps=3)
    leaves = jax.tree.leaves(policy.model.params)
    assert {x.dtype for x in leaves} == {jnp.dtype(dtype)}
    assert policy.model.config.dtype == dtype
    assert policy.noise_shape == (10, 32) and policy.action_dim == 7

    obs = _libero_obs(2)
    noise = np.random.default_rng(1).normal(size=(2, 10, 32)).astype(np.float32)
    chunk = policy.sample_actions(obs, noise)
    assert chunk.shape == (2, 10, 7) and chunk.dtype == np.float32
    assert np.isfinite(chunk).all()
    np.testing.assert_array_equal(chunk, policy.sample_actions(obs, noise))
    assert np.abs(policy.sample_actions(obs, -noise) - chunk).max() > 0  # the noise steers it
    multi = policy.sample_actions_multi(obs, np.stack([noise, -noise], axis=1))
    assert multi.shape == (2, 2, 10, 7)
    # The prompt went through the throwaway tokenizer into real (non-padding) tokens.
    prepared, _ = policy.prepare(obs)
    assert prepared.tokenized_prompt_mask.sum(axis=1).min() > 2


def test_random_checkpoint_is_seeded_and_checks_its_arguments():
    a = Pi0Policy.from_checkpoint("random", "aloha", variant="tiny", dtype="float32")
    b = Pi0Policy.from_checkpoint("random", "aloha", variant="tiny", dtype="float32")
    for x, y in zip(jax.tree.leaves(a.model.params), jax.tree.leaves(b.model.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.action_dim == 14 and a.prompt == "Transfer cube"
    with pytest.raises(ValueError, match="dtype"):
        Pi0Policy.from_checkpoint("random", "libero", variant="tiny", dtype="float16")
    with pytest.raises(ValueError, match="Unknown Pi0 variant"):
        Pi0Policy.from_checkpoint("random", "libero", variant="huge")
