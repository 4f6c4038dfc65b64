"""Wire codecs for activations, gradients and adapters, with error feedback and exact byte counts.

A codec turns a float tensor into a few named numpy arrays (:class:`Encoded`), each of which travels as one
``edge_lam_msgs/Tensor`` inside a ``TensorList``; decoding gives a float32 tensor back. The codecs and their
error bounds, per element, for a tensor ``x`` with largest magnitude ``m`` (float32 rounding aside, a few parts in
10^7 of the values involved):

- ``fp32``: the float32 values; exact.
- ``fp16``: ``x / m`` as float16 plus ``m``: ``|err| <= 2^-11 |x| + 2^-25 m``. Scaling by ``m`` is why this is not a
  plain cast: gradients at a cut are often 1e-6..1e-4, under float16's normal range (6.1e-5), where a plain cast
  keeps only an absolute 6e-8; and outlier activations can never overflow.
- ``int8``: per-channel (last axis) symmetric int8 with one float32 scale per channel, ``s_c = max_c |x| / 127``:
  ``|err| <= s_c / 2``. Per channel because a transformer's hidden states have a few outlier channels that would
  set a per-tensor scale and round every other channel to zero.
- ``topk:F``: the ``ceil(F * numel)`` largest magnitudes, as float16 scaled by ``m`` with int32 flat indices; an
  element not sent is at most the smallest sent magnitude ``t``: ``|err| <= t`` there, ``2^-11 |x| + 2^-25 m``
  where sent.

:class:`ErrorFeedback` wraps a lossy codec and adds to each stream's next tensor what was lost from the previous
one, so the sum of what was received tracks the sum of what was meant to be sent; that only helps a stream whose
successive tensors refer to the same elements (weights or their updates), not per-batch activations.

:func:`wire_bytes` counts what a TensorList really takes on the wire (its CDR serialization as rmw_fastrtps
produces it, checked against rclpy's serializer in the tests): data bytes plus names, dtype strings, shapes,
sequence lengths, alignment padding, the header and the 4-byte encapsulation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Codec",
    "Encoded",
    "ErrorFeedback",
    "Float16Codec",
    "Float32Codec",
    "Int8Codec",
    "TopKCodec",
    "codec_from_spec",
    "wire_bytes",
]

_SEPARATOR = "/"


@dataclass(frozen=True)
class Encoded:
    """A tensor as it travels: the spec of the codec that made it and its parts as named arrays."""

    codec: str
    arrays: dict[str, np.ndarray]

    def wire(self, stream: str) -> dict[str, np.ndarray]:
        """The parts named as their Tensor messages are: ``<stream>/<codec>/<part>``, so a receiver knows the codec."""
        return {_SEPARATOR.join((stream, self.codec, part)): array for part, array in self.arrays.items()}

    @staticmethod
    def from_wire(named: Mapping[str, np.ndarray], stream: str) -> Encoded:
        """The inverse of :meth:`wire` for one stream among the named arrays of a message."""
        prefix = stream + _SEPARATOR
        mine = {name.removeprefix(prefix): a for name, a in named.items() if name.startswith(prefix)}
        codecs = {name.rpartition(_SEPARATOR)[0] for name in mine}
        if len(codecs) != 1:
            raise ValueError(f"stream '{stream}' needs the parts of exactly one codec, found {sorted(codecs)}")
        (codec,) = codecs
        return Encoded(codec, {name.rpartition(_SEPARATOR)[2]: a for name, a in mine.items()})


class Codec(ABC):
    """Float tensor to :class:`Encoded` and back (to float32); ``spec`` names it and is what ``codec_from_spec``
    reads."""

    spec: str

    @abstractmethod
    def encode(self, tensor: torch.Tensor) -> Encoded: ...

    def decode(self, encoded: Encoded, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The tensor; with ``shape``, its parts are first checked against what a tensor of that shape takes
        (names, dtypes, sizes, index ranges), so a received message allocates nothing its receiver did not expect."""
        if encoded.codec != self.spec:
            raise ValueError(f"codec '{self.spec}' cannot decode a tensor encoded by '{encoded.codec}'")
        if shape is not None:
            self.check(encoded.arrays, shape)
        return self._decode(encoded.arrays)

    @abstractmethod
    def check(self, arrays: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> None:
        """ValueError unless ``arrays`` are the parts this codec makes of a tensor of ``shape``."""

    @abstractmethod
    def _decode(self, arrays: dict[str, np.ndarray]) -> torch.Tensor: ...


def _expect(arrays: Mapping[str, np.ndarray], parts: Mapping[str, tuple[str, tuple[int, ...] | None]]) -> None:
    """The parts named, no others, each of its dtype and (where given) shape."""
    if set(arrays) != set(parts):
        raise ValueError(f"parts {sorted(arrays)}, expected {sorted(parts)}")
    for name, (dtype, shape) in parts.items():
        array = arrays[name]
        if array.dtype.name != dtype or (shape is not None and array.shape != shape):
            raise ValueError(f"part '{name}' is {array.dtype.name} of shape {list(array.shape)}, expected {dtype} "
                             f"of shape {'any' if shape is None else list(shape)}")


def _finite_scale(scale: np.ndarray) -> None:
    if not np.isfinite(scale).all():
        raise ValueError("a scale is inf or NaN")


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32).contiguous()


def _max_magnitude(x: torch.Tensor) -> np.ndarray:
    """The tensor's largest magnitude as a one-element array (1 for an all-zero tensor, so dividing is safe)."""
    m = float(x.abs().max()) if x.numel() else 0.0
    if not math.isfinite(m):
        raise ValueError("cannot encode a tensor holding inf or NaN")
    return np.array([m or 1.0], dtype=np.float32)


class Float32Codec(Codec):
    """Exact: the float32 values as they are."""

    spec = "fp32"

    def encode(self, tensor: torch.Tensor) -> Encoded:
        return Encoded(self.spec, {"data": _float32(tensor).numpy()})

    def check(self, arrays: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> None:
        _expect(arrays, {"data": ("float32", shape)})

    def _decode(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.array(arrays["data"], dtype=np.float32))


class Float16Codec(Codec):
    """Half the bytes: float16 of the tensor scaled to its largest magnitude (see the module docstring)."""

    spec = "fp16"

    def encode(self, tensor: torch.Tensor) -> Encoded:
        x = _float32(tensor)
        scale = _max_magnitude(x)
        return Encoded(self.spec, {"data": (x / float(scale[0])).half().numpy(), "scale": scale})

    def check(self, arrays: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> None:
        _expect(arrays, {"data": ("float16", shape), "scale": ("float32", (1,))})
        _finite_scale(arrays["scale"])

    def _decode(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(arrays["data"].astype(np.float32)) * float(arrays["scale"][0])


class Int8Codec(Codec):
    """A quarter of the bytes: symmetric int8 with one float32 scale per channel of the last axis."""

    spec = "int8"

    def encode(self, tensor: torch.Tensor) -> Encoded:
        x = _float32(tensor)
        if x.dim() == 0:
            raise ValueError("int8 needs a channel axis; a scalar has none")
        channels = x.reshape(-1, x.shape[-1])
        if not torch.isfinite(channels).all():
            raise ValueError("cannot encode a tensor holding inf or NaN")
        scale = channels.abs().amax(dim=0) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(x / safe).clamp_(-127, 127).to(torch.int8)
        return Encoded(self.spec, {"q": q.reshape(tensor.shape).numpy(), "scale": scale.numpy()})

    def check(self, arrays: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> None:
        if not shape:
            raise ValueError("int8 needs a channel axis; a scalar has none")
        _expect(arrays, {"q": ("int8", shape), "scale": ("float32", shape[-1:])})
        _finite_scale(arrays["scale"])

    def _decode(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        q = torch.from_numpy(arrays["q"].astype(np.float32))
        return q * torch.from_numpy(np.array(arrays["scale"], dtype=np.float32))


class TopKCodec(Codec):
    """Sparse: only the largest-magnitude fraction of the elements, float16 values scaled by the largest."""

    def __init__(self, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.spec = f"topk:{fraction:g}"

    def encode(self, tensor: torch.Tensor) -> Encoded:
        x = _float32(tensor)
        flat = x.reshape(-1)
        if flat.numel() >= 2**31:
            raise ValueError("top-k indices are int32: the tensor has too many elements")
        scale = _max_magnitude(flat)
        k = min(flat.numel(), math.ceil(self.fraction * flat.numel()))
        indices = torch.topk(flat.abs(), k, sorted=False).indices.sort().values  # sorted: a deterministic payload
        values = (flat[indices] / float(scale[0])).half()
        return Encoded(self.spec, {
            "values": values.numpy(), "indices": indices.to(torch.int32).numpy(), "scale": scale,
            "shape": np.array(x.shape, dtype=np.int64),
        })

    def check(self, arrays: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> None:
        _expect(arrays, {"values": ("float16", None), "indices": ("int32", None), "scale": ("float32", (1,)),
                         "shape": ("int64", (len(shape),))})
        if tuple(int(n) for n in arrays["shape"]) != shape:
            raise ValueError(f"stated shape {arrays['shape'].tolist()}, expected {list(shape)}")
        values, indices, numel = arrays["values"], arrays["indices"], math.prod(shape)
        if values.ndim != 1 or indices.shape != values.shape or values.size > numel:
            raise ValueError(f"{list(values.shape)} values and {list(indices.shape)} indices for {numel} elements")
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= numel):
            raise ValueError(f"indices outside 0..{numel - 1}")
        _finite_scale(arrays["scale"])

    def _decode(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        shape = tuple(int(n) for n in arrays["shape"])
        dense = torch.zeros(math.prod(shape), dtype=torch.float32)
        values = torch.from_numpy(arrays["values"].astype(np.float32)) * float(arrays["scale"][0])
        dense[torch.from_numpy(arrays["indices"].astype(np.int64))] = values
        return dense.reshape(shape)


def codec_from_spec(spec: str) -> Codec:
    """``fp32``, ``fp16``, ``int8`` or ``topk:F`` with F the fraction of elements kept (e.g. ``topk:0.1``)."""
    fixed: dict[str, type[Codec]] = {"fp32": Float32Codec, "fp16": Float16Codec, "int8": Int8Codec}
    if spec in fixed:
        return fixed[spec]()
    kind, _, fraction = spec.partition(":")
    if kind == "topk" and fraction:
        try:
            return TopKCodec(float(fraction))
        except ValueError as error:
            raise ValueError(f"bad codec '{spec}': {error}") from None
    raise ValueError(f"unknown codec '{spec}' (expected fp32, fp16, int8 or topk:FRACTION)")


class ErrorFeedback:
    """A lossy codec that remembers, per stream, what its last encoding lost and sends it with the next tensor.

    The residual is kept only while the stream's shape stays the same: a tensor of another shape refers to other
    elements, so it starts the stream afresh.
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._residuals: dict[str, torch.Tensor] = {}

    def encode(self, stream: str, tensor: torch.Tensor) -> Encoded:
        x = _float32(tensor)
        residual = self._residuals.get(stream)
        corrected = x + residual if residual is not None and residual.shape == x.shape else x
        encoded = self.codec.encode(corrected)
        self._residuals[stream] = corrected - self.codec.decode(encoded)
        return encoded

    def decode(self, encoded: Encoded, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        return self.codec.decode(encoded, shape)

    def reset(self, stream: str | None = None) -> None:
        """Forget one stream's residual (e.g. after the weights it tracks were replaced), or every stream's."""
        if stream is None:
            self._residuals.clear()
        else:
            self._residuals.pop(stream, None)


def _align(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def _cdr_string(offset: int, text: str) -> int:
    return _align(offset, 4) + 4 + len(text.encode()) + 1  # uint32 length, the bytes, a NUL


def wire_bytes(named: Mapping[str, np.ndarray], frame_id: str = "", signer: str = "", signature_bytes: int = 0
               ) -> int:
    """Serialized bytes of one ``edge_lam_msgs/TensorList`` carrying ``named`` as its tensors, in order, signed by
    ``signer`` with a signature of ``signature_bytes`` (none: empty).

    CDR (XCDR1, little endian) as rmw_fastrtps writes it: 4-byte encapsulation, the header (stamp 8 bytes,
    ``frame_id``), then per tensor its name and dtype strings, its uint32 shape and its uint8 data, each sequence
    with a uint32 length and aligned as CDR requires, then the signature (signer, uint64 stamp, uint8 bytes). DDS
    and IP framing come on top and are not counted.
    """
    offset = _cdr_string(8, frame_id)  # header.stamp (int32 sec, uint32 nanosec), header.frame_id
    offset = _align(offset, 4) + 4  # tensors: the sequence's length
    for name, array in named.items():
        offset = _cdr_string(offset, name)
        offset = _cdr_string(offset, array.dtype.name)
        offset = _align(offset, 4) + 4 + 4 * array.ndim
        offset = _align(offset, 4) + 4 + array.nbytes
    offset = _align(_cdr_string(offset, signer), 8) + 8  # signature.signer, signature.stamp_ns
    offset = _align(offset, 4) + 4 + signature_bytes
    return 4 + offset
