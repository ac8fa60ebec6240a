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
import math
import struct
from pathlib import Path
from typing import Any

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
    """One safetensors file whose header is read and checked up front; tensors are read on request.

    Every header entry must have a shape of non-negative integers and data offsets inside the file;
    for a dtype rho_jax reads, the offsets must span exactly the bytes of that shape. A truncated
    or corrupt file therefore fails on opening with a `ValueError` naming the file and the tensor,
    before any tensor is read. Unsupported dtypes fail only when such a tensor is read.
    """

    def __init__(self, path: Path):
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{path}: not a safetensors file ({size} bytes, too short for a header); empty or truncated.")
            (header_len,) = struct.unpack("<Q", prefix)
            if 8 + header_len > size:
                raise ValueError(
                    f"{path}: not a safetensors file, or truncated: its header claims {header_len} bytes, "
                    f"but the file has {size}."
                )
            try:
                header = json.loads(f.read(header_len))
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {err}).") from err
        if not isinstance(header, dict):
            raise ValueError(f"{path}: not a safetensors file (its header is {type(header).__name__}, not a mapping).")
        header.pop("__metadata__", None)
        self.path = path
        self.entries: dict[str, dict] = header
        self.data_start = 8 + header_len
        for name, entry in header.items():
            self._check_entry(name, entry, size - self.data_start)

    def _check_entry(self, name: str, entry: Any, data_bytes: int) -> None:
        """Raise a `ValueError` naming this file and tensor `name` unless its header entry is readable."""
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise ValueError(f"{self.path}: tensor {name!r} has a malformed header entry {entry!r}; the file is corrupt.")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise ValueError(
                f"{self.path}: tensor {name!r} has a malformed header entry (shape {shape!r}, "
                f"data_offsets {offsets!r}); the file is corrupt."
            )
        begin, end = offsets
        if end > data_bytes:
            raise ValueError(
                f"{self.path}: tensor {name!r} (shape {tuple(shape)}, {entry['dtype']}) needs bytes {begin}..{end} "
                f"of the data, but the file holds only {data_bytes}; the file is truncated (an interrupted download or copy?)."
            )
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is not None and end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(
                f"{self.path}: tensor {name!r} has shape {tuple(shape)} ({entry['dtype']}, "
                f"{math.prod(shape) * dtype.itemsize} bytes), but its data_offsets span {end - begin} bytes; "
                "the file is corrupt."
            )

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name` with its header shape, read from disk now."""
        entry = self.entries[name]
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}.")
        dtype = _DTYPES[entry["dtype"]]
        begin, _ = entry["data_offsets"]
        count = math.prod(entry["shape"])
        return np.fromfile(self.path, dtype=dtype, count=count, offset=self.data_start + begin).reshape(entry["shape"])


def _is_count(value: Any) -> bool:
    """Whether `value` is a non-negative JSON integer (a dimension or a byte offset)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_weight_map(index: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> file name) of a sharded checkpoint's index; a `ValueError` naming `index` if malformed."""
    try:
        data = json.loads(index.read_text())
    except ValueError as err:
        raise ValueError(f"{index}: not valid JSON ({err}).") from err
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"{index}: expected a JSON object whose 'weight_map' maps tensor names to file names.")
    return weight_map


class SafetensorsCheckpoint:
    """All tensors of an HF model directory: `model.safetensors`, or shards listed in the index."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        index = directory / INDEX_FILE
        if index.exists():
            files = sorted(set(_read_weight_map(index).values()))
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

    def file_of(self, name: str) -> Path:
        """Path of the safetensors file that stores tensor `name`."""
        return self._owner[name].path

    def __contains__(self, name: str) -> bool:
        return name in self._owner

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name`, read from disk now."""
        return self._owner[name].tensor(name)
