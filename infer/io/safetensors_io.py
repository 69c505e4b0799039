"""Reading tensors from `.safetensors` files one at a time, without a framework.

The format is an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}}, then the raw bytes. We read
it directly so that bfloat16 works (numpy has no bf16; ml_dtypes provides it)
and so that one tensor at a time is in host memory: `read(name)` seeks and reads
only that tensor's bytes.
"""
import json
import os
import struct
from typing import Dict, List

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}


class SafetensorsError(ValueError):
    """A safetensors file is malformed or truncated; the message names the file (and tensor)."""


class SafetensorsFile:
    """Index of one .safetensors file; `read(name)` returns that tensor as a numpy array (little-endian)."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{path}: truncated ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise SafetensorsError(f"{path}: truncated (header of {n} bytes, file of {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{path}: corrupt header ({e})") from None
        self._data_start = 8 + n
        header.pop("__metadata__", None)
        self._entries: Dict[str, dict] = header
        for name, e in header.items():
            if e.get("dtype") not in _DTYPES:
                raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {e.get('dtype')!r}")
            begin, end = e["data_offsets"]
            expect = int(np.prod(e["shape"], dtype=np.int64)) * _DTYPES[e["dtype"]].itemsize
            if end - begin != expect:
                raise SafetensorsError(f"{path}: tensor {name!r} has {end - begin} bytes, shape {e['shape']} "
                                       f"needs {expect}")
            if self._data_start + end > size:
                raise SafetensorsError(f"{path}: truncated: tensor {name!r} ends at byte {self._data_start + end}, "
                                       f"file has {size} bytes")

    def keys(self) -> List[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple:
        return tuple(self._entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        e = self._entries[name]
        dt = _DTYPES[e["dtype"]].newbyteorder("<")
        begin, end = e["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            buf = f.read(end - begin)
        if len(buf) != end - begin:
            raise SafetensorsError(f"{self.path}: truncated while reading tensor {name!r}")
        return np.frombuffer(buf, dtype=dt).reshape(e["shape"])
