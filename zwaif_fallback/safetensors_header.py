"""Read a safetensors file's header (tensor names, dtypes, shapes) without its weights.

The format: an 8-byte little-endian header length N, N bytes of JSON, then the
data. Only the JSON is read, after checking N against the file size.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidModelFile

__all__ = ["DTYPE_BYTES", "SafetensorsTensor", "read_safetensors_header"]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit

DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}


@dataclass(frozen=True)
class SafetensorsTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: str | Path) -> list[SafetensorsTensor]:
    """The tensors a safetensors file declares.

    Raises:
        InvalidModelFile: not a safetensors file, truncated, or inconsistent.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                raise InvalidModelFile(path, f"truncated: {size} bytes is too short for safetensors")
            (n,) = struct.unpack("<Q", handle.read(8))
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise InvalidModelFile(path, f"header length {n} does not fit a file of {size} bytes "
                                             "(truncated or not safetensors)")
            raw = handle.read(n)
    except OSError as exc:
        raise InvalidModelFile(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidModelFile(path, "header is not valid JSON (not a safetensors file?)") from None
    if not isinstance(header, dict):
        raise InvalidModelFile(path, "header is not a JSON object")
    data_size = size - 8 - n
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors.append(_tensor(path, name, entry, data_size))
    return tensors


def _tensor(path: Path, name: str, entry: object, data_size: int) -> SafetensorsTensor:
    try:
        assert isinstance(entry, dict)
        dtype = str(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
    except (AssertionError, KeyError, TypeError, ValueError):
        raise InvalidModelFile(path, f"tensor {name!r} has a malformed entry") from None
    if dtype not in DTYPE_BYTES:
        raise InvalidModelFile(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if any(d < 0 for d in shape) or not 0 <= begin <= end:
        raise InvalidModelFile(path, f"tensor {name!r} has a negative shape or offset")
    if end > data_size:
        raise InvalidModelFile(path, f"truncated: tensor {name!r} ends at byte {end} of the data, "
                                     f"which holds {data_size} bytes")
    return SafetensorsTensor(name, dtype, shape, end - begin)
