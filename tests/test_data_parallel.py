"""Data-parallel learner updates (ExecutionConfig.num_devices) on CPU with two forced host
devices: the batch is really split, parameters really replicated, the result equals one device's
to float tolerance, for both algorithms and both execution modes, and a checkpoint written on two
devices restores on one. Each case runs in a fresh process: the device count is fixed when JAX
starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

COMMON = """
import json, sys
import jax, numpy as np
from dsrl.agents import ExecutionConfig, PixelSACLearner
from dsrl.agents.noise_aliasing import JaxBasePolicy, NoiseAliasingLearner

SPEC = {"pixels": ((16, 16, 3), np.uint8), "state": ((3,), np.float32)}
K, B = 3, 8


def config(cls):
    cfg = cls.default_config()
    cfg.hidden_dims, cfg.num_qs, cfg.cnn_features, cfg.cnn_strides = (16, 16), 2, (4,), (2,)
    cfg.bottleneck_dim = 8
    return cfg


def batches(rng):
    def obs():
        return {"pixels": rng.integers(0, 256, (K, B, 16, 16, 3), dtype=np.uint8),
                "state": rng.normal(size=(K, B, 3)).astype(np.float32),
                "policy_state": rng.normal(size=(K, B, 2)).astype(np.float32)}
    return {"observations": obs(), "next_observations": obs(),
            "latents": rng.uniform(-1, 1, (K, B, 2)).astype(np.float32),
            "action_chunks": rng.normal(size=(K, B, 2, 2)).astype(np.float32),
            "rewards": -np.ones((K, B), np.float32), "masks": np.ones((K, B), np.float32),
            "discounts": np.full((K, B), 0.99, np.float32)}


def linear_policy():
    return JaxBasePolicy(
        apply_fn=lambda p, o, n: p["scale"] * n + o["policy_state"][:, None, :],
        params={"scale": jax.numpy.asarray(2.0)},
        observation_spec={"policy_state": ((2,), np.float32)},
        noise_shape=(3, 2), action_dim=2)


def make(algorithm, execution):
    if algorithm == "pixel_sac":
        return PixelSACLearner.create(0, SPEC, 2, config(PixelSACLearner), execution=execution)
    return NoiseAliasingLearner.create(
        0, SPEC, 2, config(NoiseAliasingLearner), execution=execution,
        base_policy=linear_policy(),
        noise_fn=lambda z: jax.numpy.broadcast_to(z[:, None, :], (z.shape[0], 3, 2)),
        query_freq=2)
"""


def run(script: str, devices: int, timeout: int = 600) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(
        [sys.executable, "-c", COMMON + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "algorithm,mode", [("pixel_sac", "loop"), ("pixel_sac", "scan"), ("dsrl_na", "loop")]
)
def test_two_devices_split_the_batch_and_match_one_device(algorithm, mode):
    out = run(
        f"""
        assert len(jax.devices()) == 2
        data = batches(np.random.default_rng(0))
        one = make("{algorithm}", ExecutionConfig("{mode}", scan_length=2))
        two = make("{algorithm}", ExecutionConfig("{mode}", scan_length=2, num_devices=2))
        for _ in range(2):
            one, m1 = one.update(data)
            two, m2 = two.update(data)
        leaves1 = jax.tree.leaves(one.actor.params) + jax.tree.leaves(one.acting_critic_params)
        leaves2 = jax.tree.leaves(two.actor.params) + jax.tree.leaves(two.acting_critic_params)
        diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                   for a, b in zip(leaves1, leaves2, strict=True))
        scale = max(float(np.abs(np.asarray(a)).max()) for a in leaves1)
        replicated = all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 2
                         for x in leaves2)
        single = all(len(x.sharding.device_set) == 1 for x in leaves1)
        # How the runner places one step's batch on two devices.
        from dsrl.agents.execution import BATCH_AXIS, NamedSharding, P
        mesh = two.execution.mesh()
        placed = jax.device_put(data["rewards"][0], NamedSharding(mesh, P(BATCH_AXIS)))
        shard_rows = sorted(s.data.shape[0] for s in placed.addressable_shards)
        print(json.dumps(dict(diff=diff, scale=scale, replicated=replicated, single=single,
                              shard_rows=shard_rows, loss1=m1["critic_loss"],
                              loss2=m2["critic_loss"], steps=int(two.actor.step))))
        """,
        devices=2,
    )
    assert out["replicated"] and out["single"]
    assert out["shard_rows"] == [4, 4]  # 8 rows split 4 + 4
    assert out["steps"] == 6
    assert out["diff"] <= 1e-4 * max(out["scale"], 1.0), out
    assert abs(out["loss1"] - out["loss2"]) <= 1e-4 * max(abs(out["loss1"]), 1.0)


def test_batch_that_does_not_split_and_too_many_devices_are_clear_errors():
    out = run(
        """
        rng = np.random.default_rng(0)
        errors = []
        learner = make("pixel_sac", ExecutionConfig("loop", num_devices=2))
        data = batches(rng)
        data = jax.tree.map(lambda x: x[:, :7], data)
        for attempt in (lambda: learner.update(data),
                        lambda: make("pixel_sac", ExecutionConfig(num_devices=3)).update(data)):
            try:
                attempt()
                errors.append("")
            except ValueError as e:
                errors.append(str(e))
        print(json.dumps(errors))
        """,
        devices=2,
    )
    assert "does not split over 2 devices" in out[0]
    assert "num_devices=3" in out[1] and "sees 2 device(s)" in out[1]


def test_checkpoint_written_on_two_devices_restores_on_one(tmp_path):
    save = run(
        f"""
        from dsrl.utils.checkpoints import RunCheckpointer
        learner = make("pixel_sac", ExecutionConfig("loop", num_devices=2))
        learner, _ = learner.update(batches(np.random.default_rng(0)))
        with RunCheckpointer("{tmp_path}") as ckpt:
            ckpt.save(1, {{"agent": learner}})
        print(json.dumps([float(np.asarray(x).sum()) for x in jax.tree.leaves(learner.actor.params)]))
        """,
        devices=2,
    )
    restored = run(
        f"""
        from dsrl.utils.checkpoints import RunCheckpointer
        template = make("pixel_sac", ExecutionConfig("loop"))
        with RunCheckpointer("{tmp_path}") as ckpt:
            state, _ = ckpt.restore({{"agent": template}})
        learner = state["agent"]
        learner, m = learner.update(batches(np.random.default_rng(1)))  # and it trains on
        assert np.isfinite(m["critic_loss"])
        print(json.dumps([float(np.asarray(x).sum()) for x in jax.tree.leaves(state["agent"].actor.params)]))
        """,
        devices=1,
    )
    assert restored == pytest.approx(save, rel=1e-6)
