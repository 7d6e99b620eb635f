"""Pi0 / Pi0.5 fine-tuning: openpi's loss, the train step, LoRA, norm stats, checkpoints, resume.

`tests/data/pi0_loss_openpi.npz` holds openpi's own `compute_loss` (its JAX model, run by
`scripts/make_pi0_loss_fixture.py`) on our tiny parameters, rebuilt here from the same seed.
One LoRA train step is compiled for the whole file (XLA:CPU compiles it in tens of seconds).
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from dsrl.base_policies.pi0 import Pi0Policy, checkpoint
from dsrl.base_policies.pi0 import model as model_lib
from dsrl.base_policies.pi0 import normalize as nl
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.tokenizer import train_sentencepiece_model
from dsrl.base_policies.pi0.training import lora, optim
from dsrl.base_policies.pi0.training import loss as loss_lib
from dsrl.base_policies.pi0.training import norm_stats as ns
from dsrl.base_policies.pi0.training import train_state as ts
from dsrl.utils.logging import read_metrics

FIXTURE = pathlib.Path(__file__).parent / "data" / "pi0_loss_openpi.npz"
CFG = Pi0Config.tiny()
# The TrainConfig `finetune_pi0.py --trainable lora --peak_lr 3e-3 --warmup_steps 1 --steps 6`
# builds, the right wrist masked as in its dataset: one train-step compilation serves the file.
LORA = optim.TrainConfig(trainable="lora", peak_lr=3e-3, warmup_steps=1, decay_steps=6)
ENCODED = ("base_0_rgb", "left_wrist_0_rgb")
PROMPT = "pick up the bowl"


def _fixture_batch(fx, name):
    g = {k[len(name) + 1 :]: v for k, v in fx.items() if k.startswith(name + "/")}
    obs = model_lib.Observation(
        images={k[6:]: v for k, v in g.items() if k.startswith("image/")},
        image_masks={k[11:]: v for k, v in g.items() if k.startswith("image_mask/")},
        state=g["state"],
        tokenized_prompt=g["tokenized_prompt"],
        tokenized_prompt_mask=g["tokenized_prompt_mask"],
    )
    return obs, g


# As scripts/make_pi0_loss_fixture.py made them: LoRA on both Gemmas, alpha = rank.
FIXTURE_LORA = lora.LoraConfig(
    vlm_rank=4, vlm_alpha=4.0, expert_rank=2, expert_alpha=2.0, init_stddev=0.1
)


@pytest.mark.parametrize("name", ["pi0", "pi05", "pi0_lora"])
def test_loss_equals_openpi_compute_loss(name):
    """pi0_lora: openpi's gemma LoRA einsums (its own leaves, filled with ours) against our
    merged weights; openpi restores the LoRA leaves under our names and shapes."""
    fx = dict(np.load(FIXTURE))
    cfg = Pi0Config.tiny(pi05=name == "pi05", image_resolution=(224, 224), vision_variant="mu/32")
    params = model_lib.init_params(cfg, int(fx["seed"]))
    if name == "pi0_lora":
        params = lora.add_lora(params, FIXTURE_LORA, seed=int(fx["seed"]))
    obs, g = _fixture_batch(fx, name)
    loss_fn = jax.jit(loss_lib.flow_matching_loss, static_argnums=0)
    ours = np.asarray(loss_fn(cfg, params, obs, g["actions"], g["noise"], g["time"]))
    assert ours.shape == g["loss"].shape == (2, cfg.action_horizon)
    np.testing.assert_allclose(ours, g["loss"], rtol=1e-5, atol=1e-5)
    if name == "pi0_lora":  # the LoRA leaves matter at this tolerance
        base = model_lib.init_params(cfg, int(fx["seed"]))
        plain = np.asarray(loss_fn(cfg, base, obs, g["actions"], g["noise"], g["time"]))
        assert np.abs(plain - g["loss"]).max() > 1e-3
    # The same key draws openpi's noise and time.
    noise, time = loss_lib.sample_noise_and_time(
        jax.random.wrap_key_data(g["key"]), g["actions"].shape
    )
    np.testing.assert_allclose(np.asarray(noise), g["noise"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(time), g["time"], atol=1e-6)
    assert np.all((g["time"] >= 0.001) & (g["time"] <= 1.0))


def test_augmented_loss_equals_openpi_compute_loss_with_train_true():
    """openpi's `compute_loss(..., train=True)`: augmax's crop / resize / rotate on the base
    camera and colour jitter on every camera, drawn from the key's first third; the images match
    openpi's (a centre patch is stored) and so does the loss. The wrist camera is at most
    recoloured (pixelwise), so it keeps its 8x8 blocks; the base camera is warped, so it does
    not."""
    fx = dict(np.load(FIXTURE))
    cfg = Pi0Config.tiny(image_resolution=(224, 224), vision_variant="mu/32")
    params = model_lib.init_params(cfg, int(fx["seed"]))
    obs, g = _fixture_batch(fx, "pi0")
    key = jax.random.wrap_key_data(g["key"])
    augmented = loss_lib.augment_images(jax.random.split(key, 3)[0], obs)
    centre = (slice(None), slice(96, 128), slice(96, 128))
    for cam in ("base_0_rgb", "left_wrist_0_rgb"):
        ours = np.asarray(augmented.images[cam])
        np.testing.assert_allclose(ours[centre], g[f"augmented/{cam}"], atol=1e-5)
        if "wrist" not in cam:  # (the jitter, all a wrist camera gets, has p = 0.5)
            assert np.abs(ours - obs.images[cam]).max() > 0.05
        blocks = ours[:, ::8, ::8]  # an 8x8 block's pixels all equal its corner's
        same_as_block = np.abs(np.repeat(np.repeat(blocks, 8, 1), 8, 2) - ours).max() < 1e-6
        assert same_as_block == ("wrist" in cam)
    loss_fn = jax.jit(loss_lib.compute_loss, static_argnums=0, static_argnames="augment")
    ours = np.asarray(loss_fn(cfg, params, key, obs, g["actions"], augment=True))
    np.testing.assert_allclose(ours, g["loss_augmented"], rtol=1e-5, atol=1e-5)
    plain = np.asarray(loss_fn(cfg, params, key, obs, g["actions"]))
    np.testing.assert_allclose(plain, g["loss"], rtol=1e-5, atol=1e-5)
    assert np.abs(ours - plain).max() > 1e-3


def test_time_is_beta_1_5_1_scaled():
    _, time = loss_lib.sample_noise_and_time(jax.random.key(0), (4000, 1, 1))
    time = (np.asarray(time) - 0.001) / 0.999
    assert time.min() >= 0 and time.max() <= 1
    assert abs(time.mean() - 0.6) < 0.02  # Beta(1.5, 1) has mean 1.5 / 2.5


def test_lora_leaves_have_openpi_names_and_shapes():
    shapes = lora.lora_shapes(
        model_lib.param_shapes(Pi0Config.full())["PaliGemma"]["llm"], lora.LoraConfig()
    )
    assert shapes[("layers", "attn", "q_einsum", "lora_a")] == (18, 8, 2048, 16)
    assert shapes[("layers", "attn", "q_einsum", "lora_b")] == (18, 8, 16, 256)
    assert shapes[("layers", "attn", "kv_einsum_1", "lora_a")] == (18, 2, 1, 1024, 32)
    assert shapes[("layers", "attn", "kv_einsum_1", "lora_b")] == (18, 2, 1, 32, 256)
    assert shapes[("layers", "attn", "attn_vec_einsum", "lora_a")] == (18, 8, 256, 16)
    assert shapes[("layers", "attn", "attn_vec_einsum", "lora_b")] == (18, 8, 16, 2048)
    assert shapes[("layers", "mlp", "gating_einsum_lora_a")] == (18, 2, 2048, 16)
    assert shapes[("layers", "mlp", "gating_einsum_lora_b")] == (18, 2, 16, 16384)
    assert shapes[("layers", "mlp_1", "linear_lora_a")] == (18, 4096, 32)
    assert shapes[("layers", "mlp_1", "linear_lora_b")] == (18, 32, 1024)
    assert len(shapes) == 2 * (3 * 2 + 4)


def test_lora_merge_equals_openpi_einsums():
    """The merged weight gives what openpi's two extra einsums give, incl. attn_vec's sum."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 4)).astype(np.float32)  # B T N H -> attn_vec input
    w = rng.normal(size=(1, 2, 4, 5)).astype(np.float32)
    a = rng.normal(size=(1, 2, 4, 3)).astype(np.float32)
    b = rng.normal(size=(1, 2, 3, 5)).astype(np.float32)
    merged = lora._ATTN_DELTA["attn_vec_einsum"](a, b)[0] + w[0]
    lora_out = np.einsum("btl,nld->btd", np.einsum("btnh,nhl->btl", x[:, None], a[0]), b[0])
    want = np.einsum("btnh,nhd->btd", x[:, None], w[0]) + lora_out
    np.testing.assert_allclose(np.einsum("btnh,nhd->btd", x[:, None], merged), want, rtol=1e-5)


def test_trainable_splits():
    params = model_lib.param_shapes(CFG)
    names = lambda tree: {"/".join(p) for p in checkpoint.flatten(tree)}  # noqa: E731
    trained, frozen = optim.split_params(params, "expert")
    assert names(trained) == {
        n
        for n in names(params)
        if not n.startswith("PaliGemma") or (n.startswith("PaliGemma/llm") and "_1/" in n)
    }
    assert "PaliGemma/llm/final_norm_1/scale" in names(trained)
    assert all(n.startswith("PaliGemma/img") or "_1/" not in n for n in names(frozen))
    trained, frozen = optim.split_params(params, "full")
    assert not frozen
    with pytest.raises(ValueError, match="add_lora"):
        optim.split_params(params, "lora")
    with pytest.raises(ValueError, match="trainable"):
        optim.TrainConfig(trainable="some")


# ---------------------------------------------------------------------------------------------
# One compiled LoRA train step for the rest of the file


@pytest.fixture(scope="module")
def setup():
    params = model_lib.init_params(CFG, 0)
    obs = model_lib.fake_observation(CFG, 4, seed=1, masked_cameras=("right_wrist_0_rgb",))
    rng = np.random.default_rng(2)
    actions = rng.normal(size=(4, CFG.action_horizon, CFG.action_dim)).astype(np.float32)
    state = ts.init_train_state(params, LORA, seed=5)
    return params, obs, actions, state


def _run(state, obs, actions, steps):
    for _ in range(steps):
        state, info = ts.train_step(
            state, obs, actions, model_config=CFG, config=LORA, encoded=ENCODED
        )
    return state, info


def _copy(state):
    return jax.tree.map(np.array, state)


def test_lora_steps_reduce_loss_and_change_only_trained_leaves(setup):
    params, obs, actions, state0 = setup
    noise, time = loss_lib.sample_noise_and_time(jax.random.key(9), actions.shape)
    loss_fn = jax.jit(loss_lib.flow_matching_loss, static_argnums=0)
    before = float(np.mean(loss_fn(CFG, state0.params(use_ema=False), obs, actions, noise, time)))
    state, info = _run(jax.tree.map(jax.numpy.array, state0), obs, actions, 6)
    after = float(np.mean(loss_fn(CFG, state.params(use_ema=False), obs, actions, noise, time)))
    assert after < 0.9 * before, (before, after)
    assert int(state.step) == 6 and np.isfinite(float(info["grad_norm"]))
    new = checkpoint.flatten(state.params(use_ema=False))
    old = checkpoint.flatten(state0.params(use_ema=False))
    changed = {"/".join(p) for p in new if not np.array_equal(new[p], old[p])}
    llm = {n for n in changed if n.startswith("PaliGemma/llm")}
    assert llm and all("lora" in n for n in llm)  # every Gemma base weight frozen
    assert any(n.startswith("PaliGemma/img") for n in changed)  # SigLIP trains, as openpi
    assert "action_out_proj/kernel" in changed
    # Frozen leaves hold no optimizer state: Adam's moments mirror the trained tree only.
    moments = jax.tree.leaves(state.opt_state)
    assert sum(x.size for x in moments) < 3 * sum(x.size for x in jax.tree.leaves(state.trained))
    # EMA: ema = 0.99 ema + 0.01 new, so it moves but lags.
    ema, cur = checkpoint.flatten(state.ema), checkpoint.flatten(state.trained)
    p = ("action_out_proj", "kernel")
    init = checkpoint.flatten(state0.trained)[p]
    assert 0 < np.abs(ema[p] - init).max() < np.abs(cur[p] - init).max()
    # The caller's parameters survive the donated steps.
    assert np.isfinite(np.asarray(params["action_out_proj"]["kernel"])).all()


def test_exact_resume(setup, tmp_path):
    _, obs, actions, state0 = setup
    straight, _ = _run(jax.tree.map(jax.numpy.array, state0), obs, actions, 3)
    straight = _copy(straight)
    part, _ = _run(jax.tree.map(jax.numpy.array, state0), obs, actions, 1)
    ts.save_train_state(part, tmp_path)
    del part
    resumed = ts.restore_train_state(tmp_path, state0)
    resumed, _ = _run(resumed, obs, actions, 2)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(_copy(resumed)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_rejects_other_config(setup, tmp_path):
    _, _, _, state0 = setup
    ts.save_train_state(state0, tmp_path)
    other = ts.init_train_state(
        model_lib.init_params(CFG, 0), optim.TrainConfig(trainable="expert")
    )
    with pytest.raises(ValueError, match="resume with the model config"):
        ts.restore_train_state(tmp_path, other)


def test_norm_stats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    batches = [
        {"state": rng.normal(2, 3, (50, 8)), "actions": rng.uniform(-1, 1, (50, 10, 7))}
        for _ in range(4)
    ]
    stats = ns.compute_norm_stats(batches)
    acts = np.concatenate([b["actions"] for b in batches]).reshape(-1, 7)
    np.testing.assert_allclose(stats["actions"].mean, acts.mean(0))
    np.testing.assert_allclose(stats["actions"].std, acts.std(0))
    np.testing.assert_allclose(stats["actions"].q99, np.quantile(acts, 0.99, axis=0))
    path = ns.write_norm_stats(tmp_path, "my/robot", stats)
    assert path == tmp_path / "assets" / "my/robot" / "norm_stats.json"
    assert set(json.loads(path.read_text())["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}
    loaded = nl.load_checkpoint_norm_stats(tmp_path, "my/robot")
    for key in ("state", "actions"):
        for field in ("mean", "std", "q01", "q99"):
            np.testing.assert_array_equal(getattr(loaded[key], field), getattr(stats[key], field))
    with pytest.raises(ValueError, match="row 1, dim 2"):
        bad = rng.normal(size=(3, 8))
        bad[1, 2] = np.nan
        ns.compute_norm_stats([{"state": bad, "actions": bad}])


def test_export_loads_in_pi0_policy(setup, tmp_path):
    """A LoRA fine-tune written in openpi's layout (LoRA leaves kept, as openpi saves them) loads
    through Pi0Policy.from_checkpoint, with the LoRA folded in."""
    _, obs, actions, state0 = setup
    state, _ = _run(jax.tree.map(jax.numpy.array, state0), obs, actions, 2)
    stats = ns.compute_norm_stats(
        [
            {
                "state": np.random.default_rng(0).normal(size=(20, 8)),
                "actions": np.random.default_rng(1).normal(size=(20, 7)),
            }
        ]
    )
    ckpt = ts.export_openpi(
        state, tmp_path / "ckpt", norm_stats=stats, asset_id="physical-intelligence/libero"
    )
    assert (ckpt / "params" / "_METADATA").is_file()
    stored = checkpoint.OrbaxParamsReader(ckpt / "params").arrays
    assert any("q_einsum" in "/".join(p) and p[-1] == "lora_a" for p in stored)
    tok = tmp_path / "tok.model"
    tok.write_bytes(train_sentencepiece_model([PROMPT, "put it in the tray"] * 50, vocab_size=30))
    policy = Pi0Policy.from_checkpoint(
        ckpt, "libero", variant=CFG, dtype="float32", tokenizer_path=tok
    )
    merged = lora.merge(state.params(), LORA.lora)
    noise = np.random.default_rng(3).normal(size=(4, *policy.model.noise_shape)).astype("f4")
    want = model_lib.Pi0.create(CFG, merged).sample_actions(None, obs, noise=noise, num_steps=2)
    got = policy.model.sample_actions(None, obs, noise=noise, num_steps=2)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    np.testing.assert_array_equal(policy.norm_stats["actions"].q01, stats["actions"].q01)


def _finetune_script_and_data(tmp_path, n: int, seed: int, prompts: list[str]):
    """scripts/finetune_pi0.py as a module, a random .npz dataset of n examples (prompts cycled)
    and a SentencePiece tokenizer trained on the prompts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "finetune_pi0", pathlib.Path(__file__).parents[1] / "scripts" / "finetune_pi0.py"
    )
    ft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ft)
    rng = np.random.default_rng(seed)
    data = tmp_path / "demos.npz"
    np.savez(
        data,
        **{
            "images/base_0_rgb": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "images/left_wrist_0_rgb": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "state": rng.normal(size=(n, 8)).astype("f4"),
            "actions": rng.normal(size=(n, 10, 7)).astype("f4"),
            "prompt": np.array([prompts[i % len(prompts)] for i in range(n)]),
        },
    )
    tok = tmp_path / "tok.model"
    tok.write_bytes(train_sentencepiece_model([PROMPT, "put it in the tray"] * 50, vocab_size=30))
    return ft, data, tok


def test_finetune_script_resumes_exactly(tmp_path):
    """scripts/finetune_pi0.py stopped after 3 steps and resumed reaches the same weights as one
    uninterrupted 6-step run (LoRA kept in the checkpoint), and writes a checkpoint Pi0Policy
    loads. Reuses the file's compiled LoRA step when run with the other tests."""
    ft, data, tok = _finetune_script_and_data(tmp_path, 12, 0, [PROMPT])
    common = [
        *("--data", str(data), "--variant", "tiny", "--tokenizer", str(tok), "--steps", "6"),
        *("--batch", "4", "--warmup_steps", "1", "--peak_lr", "3e-3", "--trainable", "lora"),
        *("--wandb_mode", "disabled", "--log_every", "1"),
    ]
    assert ft.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert ft.main([*common, "--out", str(tmp_path / "b"), "--stop_after", "3"]) == 0
    assert (tmp_path / "b" / "3" / "train_state").is_dir() and not (tmp_path / "b" / "6").exists()
    assert ft.main([*common, "--out", str(tmp_path / "b"), "--resume"]) == 0
    read = lambda d: checkpoint.restore_params(d, dtype=None, to_device=False)  # noqa: E731
    a, b = (
        checkpoint.flatten(read(tmp_path / "a" / "6")),
        checkpoint.flatten(read(tmp_path / "b" / "6")),
    )
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    policy = Pi0Policy.from_checkpoint(
        tmp_path / "a" / "6",
        "libero",
        variant=CFG,
        dtype="float32",
        tokenizer_path=tok,
        asset_id="dataset",
    )
    assert policy.norm_stats["actions"].mean.shape == (7,)
    assert (tmp_path / "a" / "loss.png").is_file()
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "a") if "train/loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))


_DATA_PARALLEL = """
import jax, numpy as np
from dsrl.base_policies.pi0 import model as model_lib
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.training import optim, train_state as ts
cfg = Pi0Config.tiny()
tc = optim.TrainConfig(trainable="expert", peak_lr=1e-3, warmup_steps=1, decay_steps=10)
params = model_lib.init_params(cfg, 0)
obs = model_lib.fake_observation(cfg, 4, seed=1)
actions = np.random.default_rng(2).normal(size=(4, cfg.action_horizon, 32)).astype("f4")
out = []
for mesh in (None, ts.make_mesh(2)):
    state = ts.shard_state(ts.init_train_state(params, tc), mesh)
    for _ in range(2):
        batch = ts.shard_batch((obs, actions), mesh)
        state, info = ts.train_step(state, *batch, model_config=cfg, config=tc)
    out.append(jax.tree.map(np.asarray, state.trained))
assert len(state.trained["action_out_proj"]["kernel"].sharding.device_set) == 2
for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
print("OK")
"""


@pytest.mark.slow
def test_data_parallel_step_matches_one_device():
    """Two CPU devices on the learner's one-axis mesh compute the same steps (up to summation
    order) as one. (~2 min on a busy 2-core machine: two compilations.)"""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env["JAX_PLATFORMS"] = "cpu"
    root = pathlib.Path(__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL], env=env, cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_training_targets_come_back_as_the_data_actions_through_the_libero_policy():
    """What fine-tuning trains on (pi0_libero's DeltaActions, norm stats of the delta actions,
    normalised and padded) is what `Pi0Policy(robot="libero")` turns back into the recorded robot
    actions: a model that fits its targets replays the demonstrations. Without the delta transform
    the policy's AbsoluteActions would shift every position action by the robot's state."""
    from dsrl.base_policies.pi0 import transforms as tf
    from dsrl.base_policies.pi0.random_init import random_parts
    from dsrl.base_policies.pi0.training import data as data_lib

    rng = np.random.default_rng(0)
    batch = {
        "images": {"base_0_rgb": rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)},
        "state": rng.normal(size=(5, 14)).astype("f4") + 3.0,
        "actions": rng.uniform(-1, 1, size=(5, CFG.action_horizon, 7)).astype("f4"),
        "prompt": [PROMPT] * 5,
    }
    mask = tf.get_robot("libero").delta_action_mask
    trained_on = data_lib.delta_batch(batch, mask)
    stats = ns.compute_norm_stats([trained_on])
    model, tokenizer, _ = random_parts(CFG, "float32", None)
    obs, targets = data_lib.to_model_inputs(trained_on, CFG, stats, tokenizer)
    policy = Pi0Policy(model, tokenizer, stats, "libero")
    replayed = policy.postprocess(np.asarray(targets), np.asarray(obs.state))
    np.testing.assert_allclose(replayed, batch["actions"], atol=1e-5)
    assert not np.allclose(trained_on["actions"], batch["actions"])  # the transform did act
    # The batch itself is not modified, and no mask leaves it as it is.
    np.testing.assert_array_equal(data_lib.delta_batch(batch, None)["actions"], batch["actions"])


def test_remat_gives_the_same_gradients_and_keeps_fewer_activations():
    """`Pi0Config.remat` (finetune_pi0.py --remat) recomputes each Gemma layer in the backward
    pass: the loss and gradients are those without it, and the dry run's activation bytes drop."""
    import dataclasses

    from dsrl.base_policies.pi0.training import memory

    cfg = dataclasses.replace(CFG, action_dim=16)
    params = model_lib.init_params(cfg, 0)
    obs = model_lib.fake_observation(cfg, 3, seed=1)
    actions = np.random.default_rng(2).normal(size=(3, cfg.action_horizon, 16)).astype("f4")

    def grads(config):
        def loss(p):
            key = jax.random.key(4)
            return jax.numpy.mean(loss_lib.compute_loss(config, p, key, obs, actions))

        return jax.jit(jax.value_and_grad(loss))(params)

    (plain_loss, plain), (remat_loss, remat) = (
        grads(cfg),
        grads(dataclasses.replace(cfg, remat=True)),
    )
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    full = optim.TrainConfig(trainable="full")
    kept = memory.training_bytes(cfg, full, 8)["activations"]
    kept_remat = memory.training_bytes(dataclasses.replace(cfg, remat=True), full, 8)["activations"]
    assert kept_remat < 0.7 * kept


def test_shared_noise_uses_row_0_of_the_noise_in_training_and_sampling():
    """`Pi0Config.shared_noise` (finetune_pi0.py --shared_noise, the small LIBERO Pi0): only the
    noise's first row counts, repeated over the chunk, in the loss and in sampling; without it
    every row counts."""
    import dataclasses

    shared = dataclasses.replace(CFG, shared_noise=True)
    params = model_lib.init_params(CFG, 0)
    obs = model_lib.fake_observation(CFG, 2, seed=1)
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(2, CFG.action_horizon, CFG.action_dim)).astype("f4")
    other = noise.copy()
    other[:, 1:] = rng.normal(size=other[:, 1:].shape)
    repeated = np.broadcast_to(noise[:, :1], noise.shape)
    actions = rng.normal(size=noise.shape).astype("f4")
    time = np.array([0.3, 0.8], "f4")

    def loss(config, n):
        return np.asarray(loss_lib.flow_matching_loss(config, params, obs, actions, n, time))

    np.testing.assert_array_equal(loss(shared, noise), loss(shared, other))
    np.testing.assert_allclose(loss(shared, noise), loss(CFG, repeated), rtol=1e-6)
    assert not np.allclose(loss(CFG, noise), loss(CFG, other))
    sample = lambda config, n: np.asarray(  # noqa: E731
        model_lib.Pi0.create(config, params).sample_actions(None, obs, noise=n, num_steps=2)
    )
    np.testing.assert_array_equal(sample(shared, noise), sample(shared, other))
    np.testing.assert_allclose(sample(shared, noise), sample(CFG, repeated), atol=1e-6)


def test_image_dropout_masks_whole_examples():
    """finetune_pi0.py --image_dropout: a dropped example loses every camera (black, mask False,
    as openpi feeds an absent camera); the others, the state and the prompt are untouched."""
    from dsrl.base_policies.pi0.training import data as data_lib

    obs = model_lib.fake_observation(CFG, 64, seed=1)
    obs = model_lib.Observation(
        {k: np.asarray(v) for k, v in obs.images.items()},
        {k: np.ones(64, bool) for k in obs.images},
        np.asarray(obs.state),
        np.asarray(obs.tokenized_prompt),
        np.asarray(obs.tokenized_prompt_mask),
    )
    assert data_lib.drop_images(obs, 0.0, np.random.default_rng(0)) is obs
    out = data_lib.drop_images(obs, 0.5, np.random.default_rng(0))
    masks = np.stack([out.image_masks[k] for k in CFG.image_keys])
    assert np.all(masks == masks[0]) and 10 < masks[0].sum() < 54  # whole examples, about half
    for k in CFG.image_keys:
        np.testing.assert_array_equal(out.images[k][~masks[0]], -1.0)
        np.testing.assert_array_equal(out.images[k][masks[0]], obs.images[k][masks[0]])
    np.testing.assert_array_equal(out.state, obs.state)


def test_cached_prefix_training_equals_the_uncached_steps(tmp_path):
    """`finetune_pi0.py --trainable expert --cache_prefix` (each example's prefix encoded once,
    training/prefix_cache.py) takes the same steps as without the cache: the same losses and
    the same weights after 4 steps; and the flag is refused where the prefix would move."""
    ft, data, tok = _finetune_script_and_data(tmp_path, 10, 1, [PROMPT, "put it in the tray"])
    common = [
        *("--data", str(data), "--variant", "tiny", "--tokenizer", str(tok), "--steps", "4"),
        *("--batch", "4", "--warmup_steps", "1", "--peak_lr", "3e-3", "--trainable", "expert"),
        *("--wandb_mode", "disabled", "--log_every", "1", "--ema_decay", "-1"),
    ]
    assert ft.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert ft.main([*common, "--out", str(tmp_path / "cached"), "--cache_prefix"]) == 0
    losses = {
        run: [r["train/loss"] for r in read_metrics(tmp_path / run) if "train/loss" in r]
        for run in ("plain", "cached")
    }
    assert len(losses["plain"]) == 4
    np.testing.assert_allclose(losses["cached"], losses["plain"], rtol=1e-5)
    read = lambda d: checkpoint.flatten(checkpoint.restore_params(d, dtype=None, to_device=False))  # noqa: E731
    plain, cached = read(tmp_path / "plain" / "4"), read(tmp_path / "cached" / "4")
    init = checkpoint.flatten(jax.tree.map(np.asarray, model_lib.init_params(CFG, 0)))
    moved = [k for k in plain if not np.array_equal(plain[k], init[k])]
    assert moved and all(optim.is_trainable(k, "expert") for k in moved)
    for key in plain:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-4, atol=1e-6)
    for bad in (["--trainable", "full"], ["--image_dropout", "0.5"], ["--augment"]):
        with pytest.raises(SystemExit):
            ft.parse_args([*common, "--cache_prefix", *bad])
