"""RunCheckpointer: real orbax checkpoints of a training state written and read back."""

from __future__ import annotations

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsrl.data.replay_buffer import ReplayBuffer
from dsrl.utils.checkpoints import RunCheckpointer


class TinyAgent(flax.struct.PyTreeNode):
    """A learner-shaped pytree: params, optax state, a typed PRNG key, a static optimizer."""

    params: dict
    opt_state: optax.OptState
    rng: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, seed: int, hidden: int = 4) -> TinyAgent:
        key, init_key = jax.random.split(jax.random.key(seed))
        params = {
            "dense": {
                "kernel": jax.random.normal(init_key, (3, hidden)),
                "bias": jnp.zeros((hidden,), jnp.bfloat16),
            },
            "log_alpha": jnp.zeros((), jnp.float32),
        }
        tx = optax.adam(1e-2)
        return cls(params=params, opt_state=tx.init(params), rng=key, tx=tx)

    @jax.jit
    def update(self) -> TinyAgent:
        key, noise_key = jax.random.split(self.rng)
        x = jax.random.normal(noise_key, (5, 3))

        def loss(params):
            h = x @ params["dense"]["kernel"] + params["dense"]["bias"].astype(jnp.float32)
            return jnp.mean(h**2) + params["log_alpha"] ** 2

        grads = jax.grad(loss)(self.params)
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(
            params=optax.apply_updates(self.params, updates), opt_state=opt_state, rng=key
        )


def make_state(agent: TinyAgent, step: int, rng: np.random.Generator) -> dict:
    return {
        "agent": agent,
        "counters": {"grad_steps": step, "env_steps": 20 * step, "best_success": 0.5},
        "np_rng": rng.bit_generator.state,
        "raw_key": jax.random.PRNGKey(step),  # an old-style uint32 key
        "eval_seeds": np.arange(3, dtype=np.int64),
    }


def make_buffer(n: int) -> ReplayBuffer:
    example = {
        "observations": {"pixels": np.zeros((4, 4, 3), np.uint8), "state": np.zeros(2, np.float32)},
        "actions": np.zeros(2, np.float32),
        "rewards": np.float32(0),
    }
    buffer = ReplayBuffer(example, capacity=8, seed=5)
    for i in range(n):
        buffer.insert(
            {
                "observations": {
                    "pixels": np.full((4, 4, 3), i, np.uint8),
                    "state": np.full(2, i, np.float32),
                },
                "actions": np.full(2, -i, np.float32),
                "rewards": np.float32(-1),
            }
        )
        if i % 3 == 2:
            buffer.end_trajectory()
    return buffer


def assert_trees_identical(a, b) -> None:
    # Compare leaf paths, not treedefs: static fields (the optax transform's closures) come from
    # the template and are different objects by design.
    flat_a, flat_b = (
        jax.tree_util.tree_flatten_with_path(a)[0],
        jax.tree_util.tree_flatten_with_path(b)[0],
    )
    assert [jax.tree_util.keystr(p) for p, _ in flat_a] == [
        jax.tree_util.keystr(p) for p, _ in flat_b
    ]
    leaves_a, leaves_b = [x for _, x in flat_a], [x for _, x in flat_b]
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert type(x) is type(y), (type(x), type(y))
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if isinstance(x, np.ndarray | jax.Array):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert x == y


def test_no_checkpoint_restores_to_none(tmp_path):
    checkpointer = RunCheckpointer(tmp_path)
    assert checkpointer.latest_step() is None
    assert (
        checkpointer.restore(make_state(TinyAgent.create(0), 0, np.random.default_rng(0))) is None
    )


def test_round_trip_is_exact_and_training_continues_identically(tmp_path):
    agent = TinyAgent.create(seed=1)
    for _ in range(3):
        agent = agent.update()
    np_rng = np.random.default_rng(9)
    np_rng.random(5)
    state = make_state(agent, step=3, rng=np_rng)
    buffer = make_buffer(11)
    buffer.sample(2, num_batches=2)

    RunCheckpointer(tmp_path).save(3, state, buffer)
    assert os.path.isdir(tmp_path / "checkpoints" / "3" / "replay_buffer")

    # A fresh process would rebuild the template from the config: a different seed's agent.
    template = make_state(TinyAgent.create(seed=123), step=0, rng=np.random.default_rng(0))
    restored, restored_buffer = RunCheckpointer(tmp_path).restore(template)
    assert_trees_identical(restored, state)
    assert jax.random.key_impl(restored["agent"].rng) == jax.random.key_impl(agent.rng)
    assert restored["agent"].params["dense"]["bias"].dtype == jnp.bfloat16
    assert isinstance(restored["counters"]["grad_steps"], int)

    # Continuing from the restored state is bitwise identical to never stopping.
    assert_trees_identical(restored["agent"].update().update(), agent.update().update())
    continued_rng = np.random.default_rng(0)
    continued_rng.bit_generator.state = restored["np_rng"]
    assert continued_rng.random() == np_rng.random()
    assert restored_buffer.trajectory_bounds == buffer.trajectory_bounds
    np.testing.assert_array_equal(
        restored_buffer.sample(3, num_batches=2)["actions"],
        buffer.sample(3, num_batches=2)["actions"],
    )


def test_numpy_generators_in_the_state_are_restored_as_generators(tmp_path):
    rng = np.random.default_rng(4)
    rng.integers(0, 10, 7)
    RunCheckpointer(tmp_path).save(1, {"rng": rng, "w": jnp.ones(2)})
    restored, buffer = RunCheckpointer(tmp_path).restore(
        {"rng": np.random.default_rng(0), "w": jnp.zeros(2)}
    )
    assert buffer is None
    assert isinstance(restored["rng"], np.random.Generator)
    np.testing.assert_array_equal(restored["rng"].random(4), rng.random(4))
    # A state without any array leaf (counters and RNG only) round-trips too.
    RunCheckpointer(tmp_path / "no_arrays").save(1, {"rng": rng, "steps": {"env": 40}})
    restored, _ = RunCheckpointer(tmp_path / "no_arrays").restore(
        {"rng": np.random.default_rng(0), "steps": {"env": 0}}
    )
    assert restored["steps"] == {"env": 40}
    assert restored["rng"].random() == rng.random()


def test_latest_step_is_restored_and_only_max_to_keep_are_kept(tmp_path):
    checkpointer = RunCheckpointer(tmp_path, max_to_keep=2)
    agent = TinyAgent.create(0)
    states = {}
    for step in (10, 20, 30):
        agent = agent.update()
        states[step] = make_state(agent, step, np.random.default_rng(step))
        checkpointer.save(step, states[step], make_buffer(step // 10))
    assert checkpointer.latest_step() == 30
    assert checkpointer.all_steps() == [20, 30]

    template = make_state(TinyAgent.create(5), 0, np.random.default_rng(0))
    restored, buffer = RunCheckpointer(tmp_path).restore(template)
    assert_trees_identical(restored, states[30])
    assert len(buffer) == 3
    older, older_buffer = checkpointer.restore(template, step=20)
    assert_trees_identical(older, states[20])
    assert len(older_buffer) == 2
    with pytest.raises(FileNotFoundError, match="step 10"):
        checkpointer.restore(template, step=10)


def test_saving_an_existing_step_replaces_it(tmp_path):
    checkpointer = RunCheckpointer(tmp_path)
    agent = TinyAgent.create(0)
    checkpointer.save(5, make_state(agent, 5, np.random.default_rng(0)), make_buffer(2))
    newer = make_state(agent.update(), 5, np.random.default_rng(1))
    checkpointer.save(5, newer, make_buffer(4))
    restored, buffer = checkpointer.restore(make_state(agent, 0, np.random.default_rng(0)))
    assert_trees_identical(restored, newer)
    assert len(buffer) == 4


def test_crash_while_writing_the_buffer_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
    checkpointer = RunCheckpointer(tmp_path, max_to_keep=2)
    agent = TinyAgent.create(0)
    good = {}
    for step in (1, 2):
        agent = agent.update()
        good[step] = make_state(agent, step, np.random.default_rng(step))
        checkpointer.save(step, good[step], make_buffer(3))

    def crash_mid_write(self, directory):
        np.save(os.path.join(directory, "leaf_000.npy"), np.zeros(3))  # a partial file
        raise OSError("No space left on device")

    monkeypatch.setattr(ReplayBuffer, "write_to", crash_mid_write)
    with pytest.raises(OSError, match="the disk is full.*step 2 stays the latest"):
        checkpointer.save(
            3, make_state(agent.update(), 3, np.random.default_rng(3)), make_buffer(5)
        )
    monkeypatch.undo()

    # The failed step is not a checkpoint, and neither earlier checkpoint was deleted for it.
    assert checkpointer.all_steps() == [1, 2]
    template = make_state(TinyAgent.create(7), 0, np.random.default_rng(0))
    # A restarted run (new RunCheckpointer) sees step 2 as the latest and restores it.
    restarted = RunCheckpointer(tmp_path, max_to_keep=2)
    assert restarted.latest_step() == 2
    restored, buffer = restarted.restore(template)
    assert_trees_identical(restored, good[2])
    assert len(buffer) == 3
    # The leftover temporary directory is cleaned up once the restarted run saves again.
    restarted.save(3, make_state(agent, 3, np.random.default_rng(3)), make_buffer(5))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]


def test_template_mismatch_names_the_keys_and_the_cause(tmp_path):
    agent = TinyAgent.create(0, hidden=4)
    RunCheckpointer(tmp_path).save(1, make_state(agent, 1, np.random.default_rng(0)))

    wider = make_state(TinyAgent.create(0, hidden=8), 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*different config"):
        RunCheckpointer(tmp_path).restore(wider)

    renamed = make_state(agent, 0, np.random.default_rng(0))
    renamed["counters"]["updates"] = renamed["counters"].pop("grad_steps")
    with pytest.raises(ValueError) as error:
        RunCheckpointer(tmp_path).restore(renamed)
    message = str(error.value)
    assert "['counters']['updates']" in message and "['counters']['grad_steps']" in message

    raw_key_template = make_state(
        agent.replace(rng=jax.random.PRNGKey(0)), 0, np.random.default_rng(0)
    )
    with pytest.raises(ValueError, match=r"\.rng is PRNG key \(threefry2x32\)"):
        RunCheckpointer(tmp_path).restore(raw_key_template)


def test_python_scalar_template_leaves_take_the_saved_weakly_typed_array(tmp_path):
    # flax's TrainState.step is the Python int 0 in a fresh learner and a weakly typed int32 once
    # a jitted update has run; restoring it strong would recompile the update on resume.
    saved_step = jax.jit(lambda s: s + 1)(0)
    assert jax.typeof(saved_step).weak_type
    RunCheckpointer(tmp_path).save(1, {"step": saved_step, "updates": 7})
    restored, _ = RunCheckpointer(tmp_path).restore({"step": 0, "updates": 0})
    assert jax.typeof(restored["step"]) == jax.typeof(saved_step)
    assert int(restored["step"]) == 1 and restored["updates"] == 7
    with pytest.raises(
        ValueError, match=r"\['step'\] is jax array int32\(\) on disk but jax array float32"
    ):
        RunCheckpointer(tmp_path).restore({"step": jnp.zeros(()), "updates": 0})


def test_buffer_layout_mismatch_on_restore_is_named(tmp_path):
    RunCheckpointer(tmp_path).save(1, {"w": jnp.ones(2)}, make_buffer(3))
    other = make_buffer(0).example_transition()
    other["actions"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"'actions' is float32 \(2,\) on disk.*different config"):
        RunCheckpointer(tmp_path).restore({"w": jnp.zeros(2)}, example_transition=other)


def test_unsupported_leaf_types_are_rejected_with_a_hint(tmp_path):
    with pytest.raises(TypeError, match=r"\['env'\].*pytree_node=False"):
        RunCheckpointer(tmp_path).save(1, {"env": object()})


# ---------------------------------------------------------------------------------------------
# Resume equality with the real learner.

PIX, STATE_D, NOISE_DIM = (16, 16, 3), 3, 4


def _learner_transition(rng: np.random.Generator) -> dict:
    def obs() -> dict:
        return {
            "pixels": rng.integers(0, 256, PIX, dtype=np.uint8),
            "state": rng.standard_normal(STATE_D).astype(np.float32),
        }

    return {
        "observations": obs(),
        "latents": rng.uniform(-1, 1, NOISE_DIM).astype(np.float32),
        "rewards": np.float32(-1),
        "masks": np.float32(1),
        "discounts": np.float32(0.99),
        "next_observations": obs(),
    }


def _observations(buffer: ReplayBuffer, batch_size: int) -> dict:
    """A (B, ...) batch of observations (sample returns (K, B, ...))."""
    return jax.tree.map(lambda x: x[0], buffer.sample(batch_size)["observations"])


@pytest.mark.slow  # compiles the learner's update (about a minute on a busy 2-core machine)
def test_resumed_pixel_sac_learner_continues_bitwise_identically(tmp_path):
    from dsrl.agents.pixel_sac.learner import PixelSACLearner

    config = PixelSACLearner.default_config()
    config.hidden_dims = (16, 16)
    config.num_qs = 2
    config.cnn_features = (4, 4)
    config.cnn_strides = (2, 1)
    config.bottleneck_dim = 8  # the reference flag --latent_dim
    config.color_jitter = False  # smaller program, faster compile; not what is under test
    observation_spec = {"pixels": (PIX, np.uint8), "state": ((STATE_D,), np.float32)}

    data_rng = np.random.default_rng(0)
    buffer = ReplayBuffer(_learner_transition(data_rng), capacity=64, seed=1)
    for i in range(24):
        buffer.insert(_learner_transition(data_rng))
        if i % 8 == 7:
            buffer.end_trajectory()
    learner = PixelSACLearner.create(0, observation_spec, NOISE_DIM, config)
    learner, _ = learner.update(buffer.sample(4, num_batches=2))
    _, learner = learner.sample_latents(_observations(buffer, 2))  # advance the key

    RunCheckpointer(tmp_path).save(2, {"agent": learner, "grad_steps": 2}, buffer)
    fresh = PixelSACLearner.create(99, observation_spec, NOISE_DIM, config)
    (restored, resumed_buffer) = RunCheckpointer(tmp_path).restore(
        {"agent": fresh, "grad_steps": 0}
    )
    resumed = restored["agent"]
    assert restored["grad_steps"] == 2

    # Uninterrupted and resumed runs: same batches, same update, same sampled noise.
    batch, resumed_batch = buffer.sample(4, num_batches=2), resumed_buffer.sample(4, num_batches=2)
    assert_trees_identical(batch, resumed_batch)
    # Same abstract values (shape, dtype, weak type) leaf by leaf: the restored learner runs the
    # same compiled program as the one that was saved.
    assert [jax.typeof(x) for x in jax.tree.leaves(resumed)] == [
        jax.typeof(x) for x in jax.tree.leaves(learner)
    ]
    learner, metrics = learner.update(batch)
    resumed, resumed_metrics = resumed.update(resumed_batch)
    assert metrics == resumed_metrics
    assert_trees_identical(
        jax.tree.leaves(learner, is_leaf=lambda x: x is None),
        jax.tree.leaves(resumed, is_leaf=lambda x: x is None),
    )
    observations = _observations(buffer, 3)
    actions, _ = learner.sample_latents(observations)
    resumed_actions, _ = resumed.sample_latents(observations)
    np.testing.assert_array_equal(actions, resumed_actions)
    np.testing.assert_array_equal(
        learner.mode_latents(observations), resumed.mode_latents(observations)
    )
