"""Lazy reading of (sharded) safetensors checkpoints, bfloat16 included.

`safetensors.numpy` cannot return bfloat16 tensors (numpy has no such dtype), and most
Llama/Mistral checkpoints are stored in bfloat16. The format is simple and documented: an
8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}}`, then
raw little-endian data. Only headers are read up front; each tensor is read from disk on request
(into a fresh array, typed with `ml_dtypes` where numpy lacks the type), so a caller that converts
and drops tensors one at a time never holds the whole checkpoint in host memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(bool),
}


class _SafetensorsFile:
    def __init__(self, path: Path):
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        self.path = path
        self.entries: dict[str, dict] = header
        self.data_start = 8 + header_len

    def tensor(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}.")
        dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = (end - begin) // dtype.itemsize
        return np.fromfile(self.path, dtype=dtype, count=count, offset=self.data_start + begin).reshape(entry["shape"])


class SafetensorsCheckpoint:
    """All tensors of an HF model directory: `model.safetensors`, or shards listed in the index."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        index = directory / INDEX_FILE
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (directory / SINGLE_FILE).exists():
            files = [SINGLE_FILE]
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
            hint = ""
            if any(name.endswith((".bin", ".pt", ".pth")) for name in present):
                hint = (" PyTorch .bin weights are not read; re-save them with "
                        "`model.save_pretrained(dir, safe_serialization=True)`.")
            raise FileNotFoundError(
                f"No model weights in {directory}: expected {SINGLE_FILE}, or shards listed in {INDEX_FILE} "
                f"(found: {present or 'nothing'}).{hint}"
            )
        self.directory = directory
        self._files: dict[str, _SafetensorsFile] = {}
        self._owner: dict[str, _SafetensorsFile] = {}
        for name in files:
            path = directory / name
            if not path.exists():
                raise FileNotFoundError(f"{index} lists weight file {name}, which is missing from {directory}.")
            shard = _SafetensorsFile(path)
            self._files[name] = shard
            for tensor_name in shard.entries:
                if tensor_name in self._owner:
                    raise ValueError(
                        f"{directory}: tensor {tensor_name!r} is stored twice, in "
                        f"{self._owner[tensor_name].path.name} and {name}."
                    )
                self._owner[tensor_name] = shard

    def names(self) -> set[str]:
        return set(self._owner)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._owner[name].entries[name]["shape"])

    def __contains__(self, name: str) -> bool:
        return name in self._owner

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name`, read from disk now."""
        return self._owner[name].tensor(name)
