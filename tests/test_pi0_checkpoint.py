"""Pi0 checkpoints in openpi's on-disk layout: real orbax files written and read back."""

from __future__ import annotations

import logging
import math

import jax
import ml_dtypes
import numpy as np
import pytest

from dsrl.base_policies.pi0 import checkpoint as ck
from dsrl.base_policies.pi0 import download
from dsrl.base_policies.pi0 import model as model_lib
from dsrl.base_policies.pi0.config import Pi0Config

TINY = Pi0Config.tiny()


def random_params(cfg, seed=0):
    """Random float32 params with the model's exact tree (numpy: no jitted init needed)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32),
        model_lib.param_shapes(cfg),
    )


@pytest.fixture(scope="module")
def tiny_params():
    return random_params(TINY, 1)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_params):
    return ck.save_openpi_checkpoint(tiny_params, tmp_path_factory.mktemp("ckpt") / "pi0_tiny")


def _shapes(cfg):
    return {p: tuple(s.shape) for p, s in ck.flatten(model_lib.param_shapes(cfg)).items()}


def test_written_layout_is_openpis(tiny_ckpt):
    params = tiny_ckpt / "params"
    assert (params / "_METADATA").is_file() and (params / "manifest.ocdbt").is_file()
    reader = ck.OrbaxParamsReader(params)
    assert reader.use_ocdbt and not reader.use_zarr3
    # Root key "params", float32 on disk, one array per leaf of the model tree.
    assert all(p[0] == "params" for p in reader.arrays)
    assert {a.dtype for a in reader.arrays.values()} == {np.dtype(np.float32)}
    assert {p[1:] for p in reader.arrays} == set(_shapes(TINY))


def test_roundtrip_float32_is_exact(tiny_ckpt, tiny_params):
    model = ck.load_pi0(tiny_ckpt, TINY, dtype="float32")
    flat = ck.flatten(model.params)
    for path, value in ck.flatten(tiny_params).items():
        assert flat[path].dtype == np.float32
        np.testing.assert_array_equal(np.asarray(flat[path]), value, err_msg=str(path))


def test_bfloat16_cast_on_restore(tiny_ckpt, tiny_params):
    model = ck.load_pi0(tiny_ckpt, "tiny", dtype="bfloat16")
    assert model.config.dtype == "bfloat16"
    flat = ck.flatten(model.params)
    for path, value in ck.flatten(tiny_params).items():
        assert flat[path].dtype == jax.numpy.bfloat16
        np.testing.assert_array_equal(
            np.asarray(flat[path]).view(np.uint16),
            value.astype(ml_dtypes.bfloat16).view(np.uint16),  # round-to-nearest-even, as orbax
        )


def test_streamed_read_equals_tensorstore_read(tmp_path):
    """The zstd-streaming reader and a plain tensorstore read agree bit for bit (multi-piece)."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((3, 1000, 2000), dtype=np.float32)  # 24 MB > one streamed piece
    ck.save_openpi_checkpoint({"w": big, "b": np.float32(3.0) * np.ones(())}, tmp_path)
    reader = ck.OrbaxParamsReader(tmp_path / "params")
    arr = reader.arrays[("params", "w")]
    streamed = reader.read(arr, ml_dtypes.bfloat16)
    sliced = reader._read_slices(arr, np.dtype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(streamed.view(np.uint16), sliced.view(np.uint16))
    np.testing.assert_array_equal(reader.read(arr), big)
    assert reader.read(reader.arrays[("params", "b")]).item() == 3.0


def test_nnx_value_suffix_is_stripped(tmp_path, tiny_params):
    ck.save_openpi_checkpoint(tiny_params, tmp_path, nnx_state=True)
    reader = ck.OrbaxParamsReader(tmp_path / "params")
    assert all(p[-1] == "value" for p in reader.arrays)
    model = ck.load_pi0(tmp_path, TINY, dtype="float32")
    np.testing.assert_array_equal(
        np.asarray(model.params["action_in_proj"]["kernel"]),
        tiny_params["action_in_proj"]["kernel"],
    )


def test_extra_keys_are_ignored_with_a_warning(tmp_path, tiny_params, caplog):
    params = dict(tiny_params, ema_step=np.zeros((2,), np.float32))
    ck.save_openpi_checkpoint(params, tmp_path)
    with caplog.at_level(logging.WARNING):
        model = ck.load_pi0(tmp_path, TINY, dtype="float32")
    assert "ema_step" in caplog.text
    assert "ema_step" not in model.params


def test_mismatches_are_all_listed_in_one_error(tmp_path, tiny_params):
    params = jax.tree.map(lambda x: x, tiny_params)
    del params["state_proj"]  # missing (2 leaves)
    params["action_out_proj"]["kernel"] = np.zeros((5, 32), np.float32)  # wrong shape
    params["bogus"] = {"kernel": np.zeros((2, 2), np.float32)}  # unexpected
    ck.save_openpi_checkpoint(params, tmp_path)
    with pytest.raises(ck.CheckpointMismatchError) as info:
        ck.load_pi0(tmp_path, TINY, dtype="float32")
    msg = str(info.value)
    assert "2 missing key(s)" in msg
    assert "state_proj/kernel" in msg and "state_proj/bias" in msg
    assert "action_out_proj/kernel: checkpoint (5, 32), model (32, 32)" in msg
    assert "bogus/kernel" in msg


def test_pi05_checkpoint_loaded_as_pi0_hints_the_variant():
    # Shapes only: the dummy trees are 429M parameters, never allocated here.
    with pytest.raises(ck.CheckpointMismatchError, match="variant='pi05_dummy'") as info:
        ck.check_tree(_shapes(Pi0Config.dummy()), _shapes(Pi0Config.dummy(pi05=True)), "ckpt")
    assert "time_mlp_in/kernel" in str(info.value) and "state_proj/kernel" in str(info.value)
    with pytest.raises(ck.CheckpointMismatchError, match="variant='dummy'"):
        ck.check_tree(_shapes(Pi0Config.full()), _shapes(Pi0Config.dummy()), "ckpt")


def test_dummy_tree_matches_openpi_names_and_size():
    shapes = _shapes(Pi0Config.dummy())
    assert sum(math.prod(s) for s in shapes.values()) == 429_337_808
    assert shapes[("PaliGemma", "llm", "layers", "attn", "kv_einsum_1", "w")] == (4, 2, 1, 64, 16)
    assert shapes[("PaliGemma", "img", "pos_embedding")] == (1, 256, 1152)
    assert ck.check_tree(shapes, shapes, "ckpt") == []


def test_missing_checkpoint_names_files_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENPI_DATA_HOME", str(tmp_path / "cache"))
    with pytest.raises(download.DownloadError) as info:
        download.resolve_checkpoint("pi0_libero", allow_download=False)
    msg = str(info.value)
    dest = tmp_path / "cache" / "openpi-assets" / "checkpoints" / "pi0_libero"
    assert str(dest) in msg
    assert "params/_METADATA" in msg and "assets/<asset_id>/norm_stats.json" in msg
    assert str(tmp_path / "cache" / "big_vision" / "paligemma_tokenizer.model") in msg
    # Legacy s3:// URLs map to the same cache entry, which is used once present (offline).
    (dest / "params").mkdir(parents=True)
    assert download.maybe_download("s3://openpi-assets/checkpoints/pi0_libero") == dest
    with pytest.raises(FileNotFoundError, match="params/_METADATA"):
        ck.load_pi0(tmp_path / "empty", TINY)
    with pytest.raises(download.DownloadError, match="paligemma_tokenizer.model"):
        download.resolve_tokenizer(allow_download=False)
