"""The layout of a .safetensors file, checked from its header without loading a tensor.

A file passes when it has an 8-byte header length, a JSON header, and tensors whose dtypes and shapes
fill their byte ranges and tile the data area exactly. That refuses a pickle wearing a .safetensors
name (never unpickled: nothing is loaded), and a truncated or padded file, such as a download or a
volume copy cut short, in milliseconds whatever the file's size. Used for a job's LoRA files and for
the model's own weight shards. Standard library only: the image's build step runs it before the
worker's dependencies matter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class LayoutError(ValueError):
    """What is wrong with the file (the caller names the file)."""


def check_layout(path: Path) -> dict:
    """Raise LayoutError unless `path` is a whole, well-formed safetensors file; return its header (the
    tensors' entries, `__metadata__` included), with each tensor's `data_offsets` made absolute in the file."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise LayoutError("not a safetensors file (no safetensors header: a pickle or another format?)")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LayoutError("not a safetensors file (its header is not JSON)") from None
    except RecursionError:  # `[[[[...` thousands deep: no real header nests more than three levels
        raise LayoutError("not a safetensors file (its JSON header is nested too deeply)") from None
    if not isinstance(header, dict):
        raise LayoutError("not a safetensors file (its header is not a JSON object)")
    data_bytes = size - 8 - length
    spans = sorted((*_span(info, name), name) for name, info in header.items() if name != "__metadata__")
    position = 0
    for begin, end, name in spans:
        if end > data_bytes:
            raise LayoutError(f"truncated: tensor {name!r} ends at byte {end}, the data has {data_bytes}")
        if begin != position:
            raise LayoutError(f"corrupt: tensor {name!r} starts at byte {begin}, expected {position}")
        position = end
    if position != data_bytes:
        raise LayoutError(f"corrupt: {data_bytes - position} bytes after the last tensor")
    start = 8 + length
    for name, info in header.items():
        if name != "__metadata__":
            info["data_offsets"] = [start + info["data_offsets"][0], start + info["data_offsets"][1]]
    return header


def _span(info, name: str) -> tuple[int, int]:
    bad = LayoutError(f"corrupt: the header entry of tensor {name!r} is malformed")
    if not isinstance(info, dict) or info.get("dtype") not in DTYPE_BYTES:
        raise bad
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise bad
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets):
        raise bad
    begin, end = offsets
    if not 0 <= begin <= end or end - begin != math.prod(shape) * DTYPE_BYTES[info["dtype"]]:
        raise LayoutError(f"corrupt: tensor {name!r} does not fill its {end - begin} bytes")
    return begin, end
