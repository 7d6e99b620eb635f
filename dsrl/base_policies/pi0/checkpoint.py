"""Read and write Pi0 parameters in openpi's checkpoint layout.

Layout (a released checkpoint, e.g. `gs://openpi-assets/checkpoints/pi0_libero`):
  <ckpt>/params/                       orbax PyTree checkpoint of {"params": <param tree>}:
                                       OCDBT, zarr v2, float32 arrays (`_METADATA`,
                                       `manifest.ocdbt`, `ocdbt.process_0/`, `d/`)
  <ckpt>/assets/<asset_id>/norm_stats.json

Training checkpoints saved from an nnx State have every leaf path ending in "value"; that suffix
is stripped. Keys the model does not use are ignored with a warning (as openpi does).

Memory: openpi's arrays are usually stored as ONE zstd-compressed chunk each (4.8 GB float32 for
the Gemma-2B MLP), so tensorstore would decode a whole float32 array before any cast. We instead
stream the compressed bytes in pieces through a zstd decoder and cast each piece straight into
the target dtype, largest arrays first: peak host memory stays near the size of the cast
parameters. Other storage layouts fall back to tensorstore reads of chunk-aligned slices.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np

logger = logging.getLogger(__name__)

Params = dict[str, Any]
Path = tuple[str, ...]

_STREAM_BYTES = 16 << 20  # compressed bytes read per step when streaming a chunk
_COLLECT_BYTES = 64 << 20  # free host copies of arrays at least this big right away
_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, None: None}


class CheckpointMismatchError(ValueError):
    """The checkpoint's parameter tree does not match the model config."""


# --------------------------------------------------------------------------------------------
# Tree helpers


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def unflatten(flat: Mapping[Path, Any]) -> Params:
    out: Params = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _name(path: Path) -> str:
    return "/".join(path)


# --------------------------------------------------------------------------------------------
# Reading the orbax/tensorstore layout without orbax's restore (it decodes whole float32 arrays)


@dataclasses.dataclass(frozen=True)
class StoredArray:
    """One array of an orbax checkpoint: its tree path (without the "params" root) and layout."""

    path: Path
    name: str  # orbax's param name: the full key path joined with "."
    shape: tuple[int, ...]
    dtype: np.dtype
    zarray: dict | None  # zarr v2 metadata when readable, else None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class OrbaxParamsReader:
    """Lists and reads the arrays of an orbax PyTree checkpoint directory (openpi's `params/`)."""

    def __init__(self, params_dir: str | pathlib.Path):
        import tensorstore as ts

        self._ts = ts
        self.directory = pathlib.Path(params_dir).resolve()
        meta_file = self.directory / "_METADATA"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{self.directory} is not an orbax PyTree checkpoint (no _METADATA file). Pass the "
                "checkpoint directory that contains params/ and assets/."
            )
        meta = json.loads(meta_file.read_text())
        self.use_ocdbt = bool(meta.get("use_ocdbt", True))
        self.use_zarr3 = bool(meta.get("use_zarr3", False))
        self._context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        base = f"file://{self.directory}"
        if self.use_ocdbt:
            self._kvstore_spec = {"driver": "ocdbt", "base": base}
        else:
            self._kvstore_spec = {"driver": "file", "path": str(self.directory) + "/"}
        self._kv = ts.KvStore.open(self._kvstore_spec, context=self._context).result()
        self.arrays: dict[Path, StoredArray] = {}
        for entry in meta["tree_metadata"].values():
            keys = tuple(str(k["key"]) for k in entry["key_metadata"])
            if entry.get("value_metadata", {}).get("skip_deserialize"):
                continue
            self.arrays[keys] = self._describe(keys)

    def _describe(self, keys: Path) -> StoredArray:
        name = ".".join(keys)
        if not self.use_zarr3:
            raw = self._kv.read(f"{name}/.zarray").result()
            if raw.state == "value":
                zarray = json.loads(raw.value)
                dtype = (
                    np.dtype(ml_dtypes.bfloat16)
                    if zarray["dtype"] == "bfloat16"
                    else np.dtype(zarray["dtype"])
                )
                return StoredArray(keys, name, tuple(zarray["shape"]), dtype, zarray)
        store = self._open(name)
        return StoredArray(keys, name, tuple(store.shape), np.dtype(store.dtype.numpy_dtype), None)

    def _open(self, name: str):
        spec = {
            "driver": "zarr3" if self.use_zarr3 else "zarr",
            "kvstore": {**self._kvstore_spec, "path": f"{name}/"},
        }
        return self._ts.open(spec, open=True, read=True, context=self._context).result()

    def read(self, array: StoredArray, dtype: Any = None) -> np.ndarray:
        """The whole array as numpy in `dtype` (default: the stored dtype)."""
        target = np.dtype(dtype) if dtype is not None else array.dtype
        z = array.zarray
        streamable = (
            z is not None
            and len(array.shape) > 0
            and list(z["chunks"]) == list(array.shape)
            and z.get("order", "C") == "C"
            and not z.get("filters")
            and (z.get("compressor") is None or z["compressor"].get("id") == "zstd")
        )
        if streamable:
            return self._read_streaming(array, target)
        return self._read_slices(array, target)

    def _read_streaming(self, array: StoredArray, target: np.dtype) -> np.ndarray:
        """Single-chunk zarr v2 array: stream compressed bytes -> decode -> cast, piece by piece."""
        sep = array.zarray.get("dimension_separator", ".")
        key = f"{array.name}/" + sep.join("0" for _ in array.shape)
        out = np.empty(array.shape, dtype=target)
        flat = out.reshape(-1)
        src = array.dtype
        if array.zarray.get("compressor") is None:
            decoder = None
        else:
            import zstandard

            decoder = zstandard.ZstdDecompressor().decompressobj()
        pos, offset, pending, done = 0, 0, b"", False
        while not done:
            try:
                piece = self._kv.read(key, byte_range=slice(offset, offset + _STREAM_BYTES))
                piece = piece.result()
            except ValueError:  # the range runs past the end of the value: read the tail
                piece, done = self._kv.read(key, byte_range=slice(offset, None)).result(), True
            if piece.state != "value":  # never written: orbax skips chunks equal to fill value
                fill = array.zarray.get("fill_value") or 0
                out[...] = np.asarray(fill).astype(target)
                return out
            data = piece.value
            offset += len(data)
            done = done or len(data) < _STREAM_BYTES
            if decoder is not None:
                data = decoder.decompress(data)
            data = pending + data
            n = len(data) // src.itemsize
            if n:
                flat[pos : pos + n] = np.frombuffer(data, dtype=src, count=n).astype(target)
                pos += n
            pending = data[n * src.itemsize :]
        if pos != flat.size:
            raise ValueError(
                f"Checkpoint array {array.name} is truncated: read {pos} of {flat.size} values."
            )
        return out

    def _read_slices(self, array: StoredArray, target: np.dtype) -> np.ndarray:
        store = self._ts.cast(self._open(array.name), target)
        if not array.shape:
            return np.asarray(store.read().result())
        out = np.empty(array.shape, dtype=target)
        step = store.chunk_layout.read_chunk.shape[0] if store.chunk_layout.read_chunk.shape else 0
        step = step or array.shape[0]
        for start in range(0, array.shape[0], step):
            out[start : start + step] = store[start : start + step].read().result()
        return out


# --------------------------------------------------------------------------------------------
# Validation


def _strip(paths: list[Path]) -> dict[Path, Path]:
    """Maps checkpoint paths (with the "params" root, maybe a "value" suffix) to model paths."""
    strip_value = bool(paths) and all(p[-1] == "value" for p in paths)
    out = {}
    for p in paths:
        q = p[1:] if p and p[0] == "params" else p
        out[p] = q[:-1] if strip_value else q
    return out


def guess_variant(shapes: Mapping[Path, tuple[int, ...]]) -> str | None:
    """Best guess of the `variant=` matching a checkpoint's tree (for error hints)."""
    pi05 = any(p[0] == "time_mlp_in" for p in shapes)
    width = None
    for p, shape in shapes.items():
        if _name(p) == "PaliGemma/llm/final_norm/scale":
            width = shape[-1]
    size = {2048: "full", 64: "dummy"}.get(width)
    if size is None:
        return None
    return f"pi05_{size}" if pi05 else size


def check_tree(
    expected: Mapping[Path, tuple[int, ...]], found: Mapping[Path, tuple[int, ...]], what: str
) -> list[Path]:
    """Raises one CheckpointMismatchError listing every missing key and shape mismatch (and, in
    that case, the unexpected keys); returns the unexpected keys otherwise (to be ignored)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(p for p in set(expected) & set(found) if tuple(expected[p]) != tuple(found[p]))
    if not missing and not wrong:
        return unexpected
    lines = [f"{what} does not match the model config:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s):")
        lines += [f"    {_name(p)} (expected shape {tuple(expected[p])})" for p in missing]
    if wrong:
        lines.append(f"  {len(wrong)} shape mismatch(es):")
        lines += [
            f"    {_name(p)}: checkpoint {tuple(found[p])}, model {tuple(expected[p])}"
            for p in wrong
        ]
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s):")
        lines += [f"    {_name(p)} {tuple(found[p])}" for p in unexpected]
    guess = guess_variant(found)
    if guess is not None:
        kind = "Pi0.5" if guess.startswith("pi05") else "Pi0"
        lines.append(f"  Hint: this looks like a {kind} checkpoint: pass variant={guess!r}.")
    if any("lora" in p[-1] for p in unexpected):
        lines.append("  Hint: the checkpoint has LoRA leaves; merge them into the base weights.")
    raise CheckpointMismatchError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Public API


def params_dir(checkpoint_dir: str | pathlib.Path) -> pathlib.Path:
    """`<ckpt>/params` (also accepts the params directory itself)."""
    path = pathlib.Path(checkpoint_dir)
    if (path / "params" / "_METADATA").is_file():
        return path / "params"
    if (path / "_METADATA").is_file():
        return path
    raise FileNotFoundError(
        f"No openpi checkpoint at {path}: expected {path}/params/_METADATA (an orbax PyTree "
        "checkpoint of {'params': ...}) and assets/<asset_id>/norm_stats.json. For a gs:// "
        "checkpoint use dsrl.base_policies.pi0.download.maybe_download(url) first."
    )


def restore_params(
    checkpoint_dir: str | pathlib.Path,
    expected: Mapping[Path, tuple[int, ...]] | None = None,
    dtype: str | None = "bfloat16",
    to_device: bool = True,
) -> Params:
    """Restores openpi params as a nested dict, cast to `dtype` leaf by leaf (largest first).

    With `expected` (model path -> shape), validates the tree first and reads only its keys.
    Returns jax Arrays (`to_device`) or numpy arrays.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'bfloat16', 'float32' or None, got {dtype!r}.")
    target = _DTYPES[dtype]
    pdir = params_dir(checkpoint_dir)
    reader = OrbaxParamsReader(pdir)
    mapping = _strip(list(reader.arrays))
    found = {mapping[p]: reader.arrays[p].shape for p in reader.arrays}
    wanted = list(reader.arrays)
    if expected is not None:
        unexpected = check_tree(expected, found, f"Checkpoint {pdir}")
        if unexpected:
            logger.warning(
                "Ignoring %d checkpoint key(s) the model does not use: %s",
                len(unexpected),
                ", ".join(_name(p) for p in unexpected[:8])
                + (" ..." if len(unexpected) > 8 else ""),
            )
        keep = set(expected)
        wanted = [p for p in wanted if mapping[p] in keep]
    flat: dict[Path, Any] = {}
    for path in sorted(wanted, key=lambda p: -reader.arrays[p].nbytes):
        host = reader.read(reader.arrays[path], target)
        if to_device:
            flat[mapping[path]] = jax.device_put(host).block_until_ready()
            # device_put keeps the host array alive in a reference cycle: free it now, before
            # the next array is read, or peak memory grows by the largest array.
            big = host.nbytes >= _COLLECT_BYTES
            del host
            if big:  # a full collection costs ~0.1-0.5 s with jax loaded: only where it matters
                gc.collect()
        else:
            flat[mapping[path]] = host
    return unflatten(flat)


def save_openpi_checkpoint(
    params: Params,
    directory: str | pathlib.Path,
    *,
    norm_stats: Mapping[str, Any] | None = None,
    asset_id: str | None = None,
    nnx_state: bool = False,
) -> pathlib.Path:
    """Writes `params` exactly as openpi stores checkpoints: `<directory>/params` (orbax PyTree,
    OCDBT, zarr v2, float32, root key "params"), and optionally
    `<directory>/assets/<asset_id>/norm_stats.json`. `nnx_state=True` adds the trailing "value"
    keys of a training checkpoint. Returns `directory`."""
    import orbax.checkpoint as ocp

    from dsrl.base_policies.pi0 import normalize

    directory = pathlib.Path(directory).resolve()
    flat = {
        (*p, "value") if nnx_state else p: np.asarray(v, dtype=np.float32)
        for p, v in flatten(params).items()
    }
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=False)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(directory / "params", args=ocp.args.PyTreeSave({"params": unflatten(flat)}))
    if norm_stats is not None:
        if asset_id is None:
            raise ValueError("save_openpi_checkpoint: pass asset_id= together with norm_stats=.")
        normalize.save_norm_stats(directory / "assets" / asset_id, dict(norm_stats))
    return directory


def load_pi0(
    checkpoint_dir: str | pathlib.Path,
    variant: str | Any = "full",
    dtype: str = "bfloat16",
):
    """Builds a `model.Pi0` from an openpi checkpoint directory.

    Args:
      checkpoint_dir: local directory holding `params/` (see `download.maybe_download` for gs://).
      variant: a `Pi0Config` or a name for `Pi0Config.from_name` ("full", "dummy", "tiny",
        "pi05_full", ...).
      dtype: parameter and compute dtype, "bfloat16" (openpi's inference default) or "float32".
        The cast happens while reading: no float32 copy of the whole model is ever held.
    """
    from dsrl.base_policies.pi0 import config as config_lib
    from dsrl.base_policies.pi0 import model as model_lib

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}.")
    if isinstance(variant, config_lib.Pi0Config):
        cfg = dataclasses.replace(variant, dtype=dtype)
    else:
        cfg = config_lib.Pi0Config.from_name(variant, dtype=dtype)
    from dsrl.base_policies.pi0.training import lora as lora_lib

    expected = {p: tuple(s.shape) for p, s in flatten(model_lib.param_shapes(cfg)).items()}
    # A LoRA fine-tune (openpi's gemma_*_lora leaves): read them too and fold them into the base
    # weights (alpha = rank, as openpi's presets), instead of silently ignoring them.
    reader = OrbaxParamsReader(params_dir(checkpoint_dir))
    mapping = _strip(list(reader.arrays))
    lora = {mapping[p]: a.shape for p, a in reader.arrays.items() if "lora" in mapping[p][-1]}
    if lora:
        llm = model_lib.param_shapes(cfg)["PaliGemma"]["llm"]
        ranks = {"_1" in "".join(p): s[-1] for p, s in lora.items() if p[-1] == "lora_a"}
        lcfg = lora_lib.LoraConfig(
            vlm_rank=ranks.get(False, 1),
            vlm_alpha=ranks.get(False, 1),
            expert_rank=ranks.get(True, 1),
            expert_alpha=ranks.get(True, 1),
        )
        shapes = lora_lib.lora_shapes(llm, lcfg, sorted({int(k) for k in ranks}))
        expected.update({("PaliGemma", "llm", *p): s for p, s in shapes.items()})
    params = restore_params(checkpoint_dir, expected, dtype=dtype)
    if lora:
        params = lora_lib.merge(params)
    return model_lib.Pi0.create(cfg, params)
