"""A small Pi0 directory as `scripts/make_pi0_libero.py` writes it (openpi checkpoint + tokenizer +
config.json + SHA256SUMS), loaded by `shipped.load` through LIBERO's transforms, and refused when
a file is damaged or added. Real orbax files, written by the fine-tuning export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsrl.base_policies.pi0 import checkpoint, shipped
from dsrl.base_policies.pi0 import model as model_lib
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.tokenizer import train_sentencepiece_model
from dsrl.base_policies.pi0.training import norm_stats as ns

PROMPT = "pick up the chocolate pudding and place it in the basket"


def _write_made(out, config: Pi0Config):
    """A directory as make_pi0_libero.py writes it, holding a `tiny` Pi0 of `config`'s shapes."""
    rng = np.random.default_rng(0)
    stats = ns.compute_norm_stats(
        [{"state": rng.normal(size=(40, 14)), "actions": rng.normal(size=(40, 7))}]
    )
    checkpoint.save_openpi_checkpoint(
        model_lib.init_params(config, 0), out, norm_stats=stats, asset_id="libero_cpu"
    )
    (out / "tokenizer.model").write_bytes(train_sentencepiece_model([PROMPT] * 40, vocab_size=40))
    meta = {"variant": "tiny", "robot": "libero_no_delta", "asset_id": "libero_cpu"}
    meta |= {"num_steps": 3, "shared_noise": True}
    (out / "config.json").write_text(json.dumps(meta))
    shipped.write_sha256sums(out)
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    # The tiny variant's other fields are overrides here; make_pi0_libero writes `mini`.
    config = Pi0Config.tiny(action_dim=16, shared_noise=True)
    return _write_made(tmp_path_factory.mktemp("pi0_small"), config)


def _observation(batch: int) -> dict:
    rng = np.random.default_rng(1)
    return {
        "agentview_image": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=(batch, 14)).astype(np.float32),
        "prompt": PROMPT,
    }


def test_made_directory_loads_and_samples_robot_actions(made):
    policy = shipped.load(made, action_dim=16)
    assert policy.config.shared_noise and policy.num_steps == 3
    assert policy.robot.name == "libero_no_delta" and policy.robot.delta_action_mask is None
    noise = np.random.default_rng(2).normal(size=(2, *policy.noise_shape)).astype(np.float32)
    chunk = policy.sample_actions(_observation(2), noise)
    assert chunk.shape == (2, policy.config.action_horizon, 7) and np.all(np.isfinite(chunk))
    # shared noise: only the first row of the noise counts
    other = noise.copy()
    other[:, 1:] = 0.0
    np.testing.assert_allclose(policy.sample_actions(_observation(2), other), chunk, atol=1e-5)


def test_damaged_missing_or_extra_files_are_refused_before_loading(made, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(made, copy)
    norm = copy / "assets" / "libero_cpu" / "norm_stats.json"
    original = norm.read_bytes()
    norm.write_bytes(original.replace(b"[", b"[ ", 1))
    with pytest.raises(ValueError, match="norm_stats.json does not match its sha256"):
        shipped.load(copy, action_dim=16)
    norm.write_bytes(original)
    shipped.verify_sha256sums(copy)  # restored
    (copy / "params" / "stray.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not in .*SHA256SUMS"):
        shipped.load(copy, action_dim=16)
    (copy / "params" / "stray.bin").unlink()
    (copy / "tokenizer.model").unlink()
    with pytest.raises(ValueError, match="tokenizer.model is missing"):
        shipped.load(copy, action_dim=16)
    (copy / shipped.SUMS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="make_pi0_libero.py"):
        shipped.load(copy, action_dim=16)


def test_a_run_takes_a_made_directory_as_its_checkpoint_alone(tmp_path):
    """`base_policy.checkpoint=<make_pi0_libero.py --out>` needs no robot or variant: the run
    reads them from its config.json, checks its SHA256SUMS, and refuses a damaged file."""
    from dsrl.training.build import _make_local_base_policy
    from dsrl.training.config import BasePolicySection

    config = Pi0Config.tiny(shared_noise=True)  # the variant's own shapes: no overrides
    _write_made(tmp_path, config)
    assert shipped.is_made(tmp_path)
    policy = _make_local_base_policy(BasePolicySection(kind="pi0", checkpoint=str(tmp_path)))
    assert policy.robot.name == "libero_no_delta" and policy.config.shared_noise
    assert policy.num_steps == 3
    chunk = policy.sample_actions(_observation(1), np.zeros((1, *policy.noise_shape), np.float32))
    assert chunk.shape == (1, config.action_horizon, 7) and np.all(np.isfinite(chunk))
    (tmp_path / "tokenizer.model").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="tokenizer.model does not match its sha256"):
        _make_local_base_policy(BasePolicySection(kind="pi0", checkpoint=str(tmp_path)))
