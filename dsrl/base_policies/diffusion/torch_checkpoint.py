"""Reading PyTorch `.pt` checkpoints (DPPO's) into numpy, without importing torch.

`torch.save` (since torch 1.6) writes a zip archive: `<prefix>/data.pkl` holds a pickle of the
saved object in which every tensor is a call to `torch._utils._rebuild_tensor_v2` on a storage
named by a persistent id `("storage", <StorageType>, key, location, numel)`; the raw
little-endian bytes of storage `key` are in `<prefix>/data/<key>`.

We unpickle with a restricted unpickler that knows only the few globals a checkpoint of plain
tensors, dicts and numbers uses, and rebuilds each tensor as a numpy array from its storage,
offset, size and stride. Anything else in the pickle (a pickled module, an optimizer with custom
classes, arbitrary callables) is refused with an error rather than executed: loading a checkpoint
must never run code from it.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import zipfile
from typing import Any

import numpy as np

# torch's typed-storage class names -> numpy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for `torch.<X>Storage` in a persistent id: only its dtype is needed."""

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """One storage: a flat numpy array read from the archive."""

    def __init__(self, array: np.ndarray):
        self.array = array


class CheckpointFormatError(ValueError):
    """The file is not a torch.save zip checkpoint of tensors we can read."""


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # `_ignored`: requires_grad, backward_hooks and (newer torch) metadata; none affect values.
    flat = storage.array
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return flat[storage_offset].copy()
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[storage_offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_ignored):
    # nn.Parameter pickled directly (not through a state_dict): its value is the tensor.
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: pathlib.Path):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointFormatError(
            f"{self._path} pickles {module}.{name}, which a checkpoint of tensors does not need; "
            "refusing to load it without torch (it could run code). Re-save just the state dicts "
            "(torch.save({'model': sd, 'ema': sd}, path)) or load it with torch yourself."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r}.")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(
                f"{self._path}: storage {key} has type {storage_type!r}; this reader handles "
                f"{sorted(_STORAGE_DTYPES)} (bfloat16 and untyped storages are not supported)."
            )
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            array = np.frombuffer(
                raw, dtype=np.dtype(_STORAGE_DTYPES[storage_type.name]).newbyteorder("<")
            )
            self._storages[key] = _Storage(array)
        return self._storages[key]


def load_torch_checkpoint(path: str | pathlib.Path) -> Any:
    """The object saved by `torch.save`, with every tensor as a numpy array.

    Supports the zip format (torch >= 1.6) with little-endian storages of the dtypes in
    `_STORAGE_DTYPES`. Raises `FileNotFoundError` or `CheckpointFormatError` naming the problem.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path} is not a zip-format torch checkpoint (torch.save since torch 1.6 writes one). "
            "Re-save it with a current torch: torch.save(torch.load(path), path)."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path}: expected one data.pkl in the archive, found {pickles or 'none'}."
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = f"{prefix}byteorder"
        if byteorder_name in archive.namelist():
            byteorder = archive.read(byteorder_name).decode().strip()
            if byteorder != "little":
                raise CheckpointFormatError(
                    f"{path}: {byteorder}-endian storages are not supported."
                )
        with archive.open(pickles[0]) as file:
            return _RestrictedUnpickler(file, archive, prefix, path).load()
