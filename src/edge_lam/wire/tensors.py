"""Arrays to and from ``edge_lam_msgs/Tensor`` without touching elements one by one.

Every node that sends hidden states, embeddings or gradients goes through this module, so the wire format
(C-contiguous little-endian bytes, a dtype name and a shape) is decided in one place. Filling ``data`` from
``bytes`` is what keeps it fast: rclpy walks a numpy array or memoryview element by element (about a thousand
times slower for 64 KB).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
from edge_lam_msgs.msg import Tensor

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "TensorError", "check", "to_msg", "to_numpy", "to_torch"]

# Wire dtype name -> item size in bytes. bfloat16 has no numpy dtype; it travels as its raw 2-byte words.
DTYPES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


class TensorError(ValueError):
    """A Tensor message that does not describe a valid array (bad dtype, shape or byte count)."""


def to_msg(array: Any, name: str = "") -> Tensor:
    """Encode a numpy array or scalar, or a torch tensor (any device, any layout), as a Tensor message."""
    if isinstance(array, (np.ndarray, np.generic)):
        array = np.asarray(array)
        dtype, data = _numpy_bytes(array)
    elif "torch" in sys.modules and isinstance(array, sys.modules["torch"].Tensor):  # no torch import for numpy users
        dtype, data = _torch_bytes(array)
    else:
        raise TensorError(f"cannot encode a {type(array).__name__}: expected a numpy array or a torch tensor")
    msg = Tensor()
    msg.name = name
    msg.dtype = dtype
    msg.shape = [int(n) for n in array.shape]
    msg.data = data
    return msg


def to_numpy(msg: Tensor) -> np.ndarray:
    """Decode a Tensor message into a read-only numpy view of its bytes (no copy).

    bfloat16 has no numpy dtype: use :func:`to_torch` for it.
    """
    shape = check(msg)
    if msg.dtype == "bfloat16":
        raise TensorError("bfloat16 has no numpy dtype; decode it with to_torch()")
    return np.frombuffer(msg.data, dtype=np.dtype(msg.dtype).newbyteorder("<")).reshape(shape)


def to_torch(msg: Tensor) -> torch.Tensor:
    """Decode a Tensor message into a new, writable CPU torch tensor (one memory copy).

    torch knows no byte order, so this assumes a little-endian host (x86-64, arm64: every ROS 2 target).
    """
    import torch

    shape = check(msg)
    raw = torch.from_numpy(np.frombuffer(msg.data, dtype=np.uint8).copy())
    return raw.view(getattr(torch, msg.dtype)).reshape(shape)


def check(msg: Tensor) -> tuple[int, ...]:
    """Validate dtype, shape and byte count without decoding; return the shape. Raises TensorError."""
    itemsize = DTYPES.get(msg.dtype)
    if itemsize is None:
        raise TensorError(f"tensor '{msg.name}': unknown dtype '{msg.dtype}' (expected one of {sorted(DTYPES)})")
    shape = tuple(int(n) for n in msg.shape)
    expected = math.prod(shape) * itemsize
    if len(msg.data) != expected:
        raise TensorError(
            f"tensor '{msg.name}': {len(msg.data)} bytes for shape {list(shape)} of {msg.dtype}, expected {expected}"
        )
    return shape


def _numpy_bytes(array: np.ndarray) -> tuple[str, bytes]:
    name = "bool" if array.dtype == np.bool_ else array.dtype.name
    if name not in DTYPES:
        raise TensorError(f"numpy dtype {array.dtype} cannot be sent (supported: {sorted(DTYPES)})")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return name, little.tobytes()


def _torch_bytes(tensor: torch.Tensor) -> tuple[str, bytes]:
    import torch

    name = str(tensor.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise TensorError(f"torch dtype {tensor.dtype} cannot be sent (supported: {sorted(DTYPES)})")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return name, flat.view(torch.uint8).numpy().tobytes()
