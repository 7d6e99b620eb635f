"""PixelSACLearner: API, bounds, one compilation, learning, encoder sharing, bad configs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dsrl.agents import ExecutionConfig, PixelSACLearner, common
from dsrl.agents.pixel_sac import learner as learner_lib
from dsrl.agents.sac import td_target

HW, D, A = 16, 3, 2
SPEC = {
    "pixels": ((HW, HW, 3), np.uint8),
    "state": ((D,), np.float32),
    "prompt": ((), object),  # a base-policy key: the learner ignores it
}
# The reference's metric names, except its next_actions_* (latents here: next_latents_*, and its
# next_actions_sampled, equal to next_actions_mean, is not repeated).
REFERENCE_METRICS = {
    "critic_loss", "q", "target_actor_entropy", "next_log_probs",
    "next_q_pi", "target_q", "next_latents_mean", "next_latents_std", "next_latents_min",
    "next_latents_max", "actor_loss", "entropy", "q_pi_in_actor", "mean_pi_norm", "std_pi_norm",
    "mean_pi_avg", "mean_pi_max", "mean_pi_min", "std_pi_avg", "std_pi_max", "std_pi_min",
    "temperature", "temperature_loss",
}  # fmt: skip


def tiny_config(**overrides):
    cfg = PixelSACLearner.default_config()
    cfg.cnn_features = (8, 8)
    cfg.cnn_strides = (2, 2)
    cfg.hidden_dims = (32, 32)
    cfg.num_qs = 2
    cfg.bottleneck_dim = 16
    cfg.crop_padding = 2
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def random_batches(rng, k, b=32):
    def obs():
        return {
            "pixels": rng.integers(0, 256, (k, b, HW, HW, 3), dtype=np.uint8),
            "state": rng.normal(size=(k, b, D)).astype(np.float32),
        }

    return {
        "observations": obs(),
        "next_observations": obs(),
        "latents": rng.uniform(-1, 1, (k, b, A)).astype(np.float32),
        "rewards": -rng.integers(0, 2, (k, b)).astype(np.float32),
        "masks": np.ones((k, b), np.float32),
        "discounts": np.full((k, b), 0.98, np.float32),
    }


@pytest.fixture(scope="module")
def learner():
    return PixelSACLearner.create(0, SPEC, A, tiny_config())


def test_defaults_are_the_reference_libero_values():
    cfg = PixelSACLearner.default_config()
    assert (cfg.actor_lr, cfg.critic_lr, cfg.temp_lr, cfg.tau) == (1e-4, 3e-4, 3e-4, 0.005)
    assert tuple(cfg.hidden_dims) == (128, 128, 128) and cfg.num_qs == 10
    assert cfg.critic_reduction == "mean" and not cfg.backup_entropy and cfg.num_min_qs == 0
    assert tuple(cfg.cnn_features) == (32,) * 4 and tuple(cfg.cnn_strides) == (2, 1, 1, 1)
    assert cfg.encoder == "small" and cfg.cnn_padding == "VALID" and cfg.bottleneck_dim == 50
    assert cfg.encoder_sharing == "separate" and cfg.color_jitter and cfg.aug_next
    learner = PixelSACLearner.create(0, SPEC, 32, tiny_config())
    assert learner.target_entropy == -16.0  # "auto" = -action_dim / 2
    assert float(np.exp(learner.temp.params["log_temp"])) == pytest.approx(1.0)


@pytest.mark.parametrize("action_magnitude", [1.0, 2.5])
def test_actions_shapes_and_bounds(action_magnitude):
    learner = PixelSACLearner.create(1, SPEC, A, tiny_config(), action_magnitude=action_magnitude)
    rng = np.random.default_rng(0)
    obs = {
        "pixels": rng.integers(0, 256, (64, HW, HW, 3), dtype=np.uint8),
        "state": rng.normal(size=(64, D)).astype(np.float32) * 100,
        "prompt": ["ignored"] * 64,
    }
    a1, learner2 = learner.sample_latents(obs)
    a2, _ = learner2.sample_latents(obs)
    assert a1.shape == (64, A) and a1.dtype == np.float32
    assert np.abs(a1).max() <= action_magnitude and np.abs(a1).max() > 0.5 * action_magnitude
    assert not np.allclose(a1, a2)  # the learner's key advanced
    a1_again, _ = learner.sample_latents(obs)
    np.testing.assert_array_equal(a1, a1_again)  # same learner, same key: reproducible
    mode = learner.mode_latents(obs)
    assert mode.shape == (64, A) and np.abs(mode).max() <= action_magnitude
    np.testing.assert_array_equal(mode, learner2.mode_latents(obs))
    single = learner.mode_latents({k: v[0] for k, v in obs.items()})
    assert single.shape == (A,)


def test_update_returns_reference_metrics_and_compiles_once(learner):
    rng = np.random.default_rng(0)
    before = learner_lib.UPDATE.compile_count()
    new, metrics = learner.update(random_batches(rng, 3))
    for k in (1, 4, 2):  # different block sizes K must not recompile
        new, metrics = new.update(random_batches(rng, k))
    assert learner_lib.UPDATE.compile_count() - before == 1
    assert REFERENCE_METRICS <= set(metrics)
    assert metrics["critic_grad_norm"] > 0 and metrics["actor_grad_norm"] > 0
    assert "actor_updated" not in metrics  # train_actor_steps off: today's step
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert int(new.critic.step) == 10 and int(learner.critic.step) == 0  # old learner untouched
    assert metrics["temperature"] < 1.0  # entropy > target: temperature decreased


def test_compiled_update_keeps_xla_convolutions_on_cpu(learner):
    """jax 0.10.2 would hand the encoder's convolutions to YNNPACK on CPU (about 10x slower here);
    the learner's jitted functions are compiled with that off."""
    rng = np.random.default_rng(0)
    batch = learner.prepare_batches(random_batches(rng, 1))
    batch = jax.tree.map(lambda x: x[0], batch)
    hlo = learner_lib.UPDATE.step_jit.lower(learner, batch).compile().as_text()
    assert "convolution(" in hlo
    assert "ynn_fusion" not in hlo
    obs = {"pixels": np.zeros((1, HW, HW, 3), np.uint8), "state": np.zeros((1, D), np.float32)}
    obs, _ = learner._batched_observations(obs)
    assert "ynn_fusion" not in common._sample_jit.lower(learner, obs).compile().as_text()


def fast_config():
    """Higher learning rates for the learning tests (one compilation shared by both)."""
    return tiny_config(actor_lr=1e-3, critic_lr=1e-3, crop_padding=1, target_entropy=-2.0)


def test_losses_fall_on_a_fixed_batch():
    learner = PixelSACLearner.create(0, SPEC, A, fast_config())
    rng = np.random.default_rng(1)
    batch = random_batches(rng, 1)
    batch["rewards"][:] = np.where(batch["latents"][..., 0] > 0, 0.0, -1.0)
    batch["masks"][:] = 0.0  # terminal: the target is the reward, so Q must fit it
    many = {
        k: ({kk: np.repeat(vv, 60, 0) for kk, vv in v.items()} if isinstance(v, dict)
            else np.repeat(v, 60, 0))
        for k, v in batch.items()
    }  # fmt: skip
    lrn, first = learner.update(batch)
    lrn, last = lrn.update(many)
    assert last["critic_loss"] < 0.5 * first["critic_loss"]
    # The actor moves toward the rewarded half (action[0] > 0): by the critic's own measure its
    # actions gain value over the batch's random ones.
    gain_first = first["q_pi_in_actor"] - first["q"]
    gain_last = last["q_pi_in_actor"] - last["q"]
    assert gain_last > 0.0 and gain_last > gain_first + 0.1


def test_scan_mode_matches_loop_mode():
    rng = np.random.default_rng(2)
    batches = random_batches(rng, 5, b=8)
    loop = PixelSACLearner.create(3, SPEC, A, tiny_config(), execution=ExecutionConfig("loop"))
    scan_mode = ExecutionConfig("scan", scan_length=3)
    scan = PixelSACLearner.create(3, SPEC, A, tiny_config(), execution=scan_mode)
    loop, m_loop = loop.update(batches)
    scan, m_scan = scan.update(batches)  # 2 chunks of 3: the last one padded by one step
    assert int(scan.critic.step) == 5
    for a, b in zip(
        np.concatenate([x.ravel() for x in _leaves(loop.critic.params)]),
        np.concatenate([x.ravel() for x in _leaves(scan.critic.params)]),
        strict=True,
    ):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-5)
    assert m_loop["critic_loss"] == pytest.approx(m_scan["critic_loss"], rel=1e-3)


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_shared_encoder_actor_never_changes_the_critic():
    import jax

    rng = np.random.default_rng(3)
    batches = random_batches(rng, 1)
    slow = PixelSACLearner.create(4, SPEC, A, tiny_config(encoder_sharing="shared"))
    fast = PixelSACLearner.create(4, SPEC, A, tiny_config(encoder_sharing="shared", actor_lr=1.0))
    assert "encoder" not in slow.actor.params  # the actor owns only its head
    slow, _ = slow.update(batches)
    fast, _ = fast.update(batches)
    # A 10^4 x larger actor step changes the actor but not one critic parameter.
    assert not np.allclose(_leaves(slow.actor.params)[0], _leaves(fast.actor.params)[0])
    for a, b in zip(_leaves(slow.critic.params), _leaves(fast.critic.params), strict=True):
        np.testing.assert_array_equal(a, b)
    # ... while the actor does read the critic's encoder.
    obs = {k: v[0] for k, v in batches["observations"].items()}
    perturbed = slow.replace(
        critic=slow.critic.replace(params=jax.tree.map(lambda x: x * 1.5, slow.critic.params))
    )
    assert not np.allclose(slow.mode_latents(obs), perturbed.mode_latents(obs))


def test_td_target_uses_per_transition_discount_and_masks():
    r, d, m = np.array([-1.0, 0.0]), np.array([0.9, 0.5]), np.array([1.0, 0.0])
    q, logp = np.array([2.0, 2.0]), np.array([1.0, 1.0])
    np.testing.assert_allclose(td_target(r, d, m, q), [-1 + 0.9 * 2, 0.0])
    np.testing.assert_allclose(td_target(r, d, m, q, logp, 0.5), [-1 + 0.9 * 1.5, 0.0])


def make_bandit_batch(rng, n):
    """One-step bandit: a bright bar on the left or right half of the image; reward 0 when
    sign(action[0]) points to the bar's side, else -1; every transition is terminal."""
    side = rng.integers(0, 2, n)
    pixels = rng.integers(0, 40, (n, HW, HW, 3), dtype=np.uint8)
    for i, s in enumerate(side):
        cols = slice(0, HW // 2) if s == 0 else slice(HW // 2, HW)
        pixels[i, 4:12, cols] = 255
    return pixels, np.where(side == 0, -1.0, 1.0)


def test_learner_solves_a_pixel_bandit():  # ~15 s on 2 busy cores
    rng = np.random.default_rng(0)
    learner = PixelSACLearner.create(0, SPEC, A, fast_config())
    buf_pix, buf_sign, buf_act = [], [], []
    for _ in range(25):
        pixels, sign = make_bandit_batch(rng, 32)
        state = np.zeros((32, D), np.float32)
        actions, learner = learner.sample_latents({"pixels": pixels, "state": state})
        buf_pix.append(pixels), buf_sign.append(sign), buf_act.append(actions)
        pix, sgn, act = map(np.concatenate, (buf_pix, buf_sign, buf_act))
        idx = rng.integers(0, len(pix), (10, 64))
        reward = np.where(np.sign(act[idx, 0]) == sgn[idx], 0.0, -1.0).astype(np.float32)
        obs = {"pixels": pix[idx], "state": np.zeros((10, 64, D), np.float32)}
        learner, metrics = learner.update(
            {
                "observations": obs,
                "next_observations": obs,
                "latents": act[idx],
                "rewards": reward,
                "masks": np.zeros((10, 64), np.float32),
                "discounts": np.full((10, 64), 0.98, np.float32),
            }
        )
    pixels, sign = make_bandit_batch(np.random.default_rng(123), 200)
    greedy = learner.mode_latents({"pixels": pixels, "state": np.zeros((200, D), np.float32)})
    accuracy = float(np.mean(np.sign(greedy[:, 0]) == sign))
    assert accuracy > 0.9, (accuracy, metrics)


@pytest.mark.parametrize(
    "overrides,spec,match",
    [
        ({"encoder": "vit"}, SPEC, "unknown encoder 'vit'"),
        ({"hidden_dims": (32, 0)}, SPEC, "hidden_dims"),
        ({"num_qs": 0}, SPEC, "num_qs"),
        ({"num_min_qs": 5}, SPEC, "num_min_qs"),
        ({"bottleneck_dim": -1}, SPEC, "bottleneck_dim"),
        # The reference's name for it is the flag table's alias (tests/test_reference_flags.py),
        # not a learner option.
        ({"latent_dim": -1}, SPEC, r"unknown config keys \['latent_dim'\]"),
        ({"cnn_strides": (2,)}, SPEC, "cnn_strides"),
        ({"critic_reduction": "max"}, SPEC, "critic_reduction"),
        ({"encoder_sharing": "tied"}, SPEC, "encoder_sharing"),
        ({"update_mode": "fast"}, SPEC, "update_mode"),
        ({"target_entropy": "high"}, SPEC, "target_entropy"),
        ({}, {"image": ((16, 16, 3), np.uint8), "state": ((3,), np.float32)}, "'pixels'"),
        ({}, {"pixels": ((16, 16, 3), np.uint8)}, "'state'"),
        ({}, {"pixels": ((16, 16, 3), np.float32), "state": ((3,), np.float32)}, "uint8"),
        ({}, {"pixels": ((16, 16), np.uint8), "state": ((3,), np.float32)}, r"\(H, W, C\)"),
        ({"cnn_features": (8, 8, 8, 8, 8), "cnn_strides": (2,) * 5}, SPEC, "cannot build"),
        ({"cql_alpha": -1.0}, SPEC, "cql_alpha must be a finite number >= 0"),
        ({"cql_samples": 0}, SPEC, "cql_samples must be >= 1"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, spec, match):
    with pytest.raises(ValueError, match=match):
        PixelSACLearner.create(0, spec, A, tiny_config(**overrides))


def test_unknown_config_key_and_bad_inputs_raise(learner):
    cfg = tiny_config()
    cfg.unlock()
    cfg.actor_learning_rate = 1e-3
    with pytest.raises(ValueError, match="unknown config keys"):
        PixelSACLearner.create(0, SPEC, A, cfg)
    with pytest.raises(ValueError, match="latent_dim"):
        PixelSACLearner.create(0, SPEC, 0, tiny_config())
    batches = random_batches(np.random.default_rng(0), 2)
    del batches["discounts"]
    with pytest.raises(ValueError, match="discounts"):
        learner.update(batches)
    batches = random_batches(np.random.default_rng(0), 2)
    batches["latents"] = batches["latents"][0]  # missing the K axis
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        learner.update(batches)
    with pytest.raises(ValueError, match="spec"):
        learner.mode_latents(
            {"pixels": np.zeros((1, 8, 8, 3), np.uint8), "state": np.zeros((1, D))}
        )


def test_execution_settings_are_not_learner_config():
    """update_mode / scan_length moved out of the learner config: an old config that still sets
    them gets an error saying where they went."""
    cfg = tiny_config()
    cfg.update_mode = "scan"
    with pytest.raises(ValueError, match="execution settings"):
        PixelSACLearner.create(0, SPEC, A, cfg)
    with pytest.raises(ValueError, match="execution mode"):
        ExecutionConfig("fast")
    with pytest.raises(ValueError, match="scan_length"):
        ExecutionConfig("scan", scan_length=0)


def test_learner_asks_the_loop_to_store_only_its_latents(learner):
    spec = learner.transition_spec()
    assert spec.action_chunks is False and spec.policy_observation_keys == ()
    assert learner.batch_fields() == {"latents": (A,)}


def test_conservative_term_pushes_the_critic_down_away_from_the_data():
    """cql_alpha > 0 (CQL's term): trained on terminal transitions worth -1 whose latents all
    lie near 0, the critic keeps about -1 there but values the box's far corners well below
    what the plain critic of the same seed and batches gives them; the penalty is logged;
    cql_alpha = 0 leaves the update bit-identical to a config without the fields set."""
    rng = np.random.default_rng(0)
    blocks = []
    for _ in range(8):
        batch = random_batches(rng, 25)
        batch["latents"] = rng.uniform(-0.1, 0.1, batch["latents"].shape).astype(np.float32)
        batch["rewards"] = np.full_like(batch["rewards"], -1.0)
        batch["masks"] = np.zeros_like(batch["masks"])
        blocks.append(batch)
    probe = jax.tree.map(lambda x: x[0, :16], random_batches(rng, 1)["observations"])
    corners = np.sign(rng.normal(size=(16, A))).astype(np.float32)
    near = rng.uniform(-0.1, 0.1, (16, A)).astype(np.float32)
    trained = {}
    for alpha in (0.0, 2.0):
        learner = PixelSACLearner.create(0, SPEC, A, tiny_config(cql_alpha=alpha))
        for batch in blocks:
            learner, metrics = learner.update(batch)
        trained[alpha] = learner
        assert ("critic_penalty" in metrics) == (alpha > 0)
    for learner in trained.values():
        np.testing.assert_allclose(learner.latent_q(probe, near), -1.0, atol=0.35)
    plain, conservative = (trained[a].latent_q(probe, corners) for a in (0.0, 2.0))
    assert np.mean(conservative) < np.mean(plain) - 0.3, (plain, conservative)
    default = PixelSACLearner.create(0, SPEC, A, tiny_config())
    default, _ = default.update(blocks[0])
    off = PixelSACLearner.create(0, SPEC, A, tiny_config(cql_alpha=0.0))
    off, _ = off.update(blocks[0])
    for x, y in zip(jax.tree.leaves(default.critic), jax.tree.leaves(off.critic), strict=True):
        np.testing.assert_array_equal(x, y)
