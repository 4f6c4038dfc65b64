"""Training messages (``edge_lam_msgs/TensorList``) to and from what the training cores take, with their sizes.

Every message of collaborative fine-tuning is one TensorList. ``header.frame_id`` names the robot it concerns
(the sender of activations and adapter updates, the addressee of gradients; empty on the global adapter). Integer
scalars (int64, shape ``[]``) say where it belongs: ``round``, ``step``, ``cut``, ``samples``, ``rounds``. The
rest are codec parts named as :meth:`~edge_lam.training.compression.Encoded.wire` names them,
``<stream>/<codec>/<part>``, so a receiver decodes whatever codec the sender chose: ``activation``, ``gradient``
or, in adapter messages, one stream per weight (``layers.<n>.<path>``); plus plain arrays such as ``targets``
(int32 ``[B, L]``) and ``loss`` (float32 ``[]``).

Sizes are those of the serialized message (:func:`~edge_lam.training.compression.wire_bytes`), for the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from builtin_interfaces.msg import Time
from edge_lam_msgs.msg import TensorList
from std_msgs.msg import Header

from edge_lam.training.compression import Codec, Encoded, ErrorFeedback, codec_from_spec, wire_bytes
from edge_lam.training.split import IGNORE
from edge_lam.trust.checks import SIGNATURE_BYTES
from edge_lam.wire.tensors import TensorError, to_msg, to_numpy

__all__ = ["BadMessage", "Unpacked", "decode_activation", "decode_state", "decode_stream", "encode_state", "pack",
           "unpack"]

_SEPARATOR = "/"


class BadMessage(ValueError):
    """A training message that can't be used: malformed tensors, missing or bad fields, an unknown codec."""


@dataclass(frozen=True)
class Unpacked:
    """A received message: whom it concerns, its integer fields, its other arrays and its size on the wire."""

    robot: str
    fields: dict[str, int]
    arrays: dict[str, np.ndarray]
    nbytes: int


def pack(robot: str, fields: Mapping[str, int], arrays: Mapping[str, np.ndarray],
         stamp: Time | None = None, signer: str = "") -> tuple[TensorList, int]:
    """The message and its serialized size, once ``signer`` (if any) has signed it."""
    named = {name: np.array(value, dtype=np.int64) for name, value in fields.items()} | dict(arrays)
    header = Header(frame_id=robot, stamp=stamp or Time())
    msg = TensorList(header=header, tensors=[to_msg(array, name) for name, array in named.items()])
    return msg, wire_bytes(named, robot, signer, SIGNATURE_BYTES if signer else 0)


def unpack(msg: TensorList, fields: Iterable[str]) -> Unpacked:
    """Check and decode a message that must carry the integer ``fields``; BadMessage when it can't be used."""
    named: dict[str, np.ndarray] = {}
    for tensor in msg.tensors:
        if tensor.name in named:
            raise BadMessage(f"tensor '{tensor.name}' appears twice")
        try:
            named[tensor.name] = to_numpy(tensor)
        except TensorError as err:
            raise BadMessage(str(err)) from None
    nbytes = wire_bytes(named, msg.header.frame_id, msg.signature.signer, len(msg.signature.signature))
    values = {}
    for name in fields:
        array = named.pop(name, None)
        if array is None or array.shape != () or array.dtype.kind not in "iu":
            raise BadMessage(f"needs an integer scalar '{name}'")
        values[name] = int(array)
    return Unpacked(msg.header.frame_id, values, named, nbytes)


def decode_stream(arrays: Mapping[str, np.ndarray], stream: str, shape: tuple[int, ...] | None = None,
                  max_abs: float = math.inf) -> torch.Tensor:
    """One codec-encoded tensor of a message, as float32; BadMessage when it is absent, malformed, not finite,
    larger in magnitude than ``max_abs`` or (``shape`` given) of another shape. With ``shape``, the codec's parts
    (sizes, indices, stated shape) are checked before anything is allocated for the tensor."""
    try:
        encoded = Encoded.from_wire(arrays, stream)
        tensor = codec_from_spec(encoded.codec).decode(encoded, shape)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise BadMessage(f"'{stream}': {type(err).__name__}: {err}") from None
    if shape is not None and tuple(tensor.shape) != shape:
        raise BadMessage(f"'{stream}' has shape {list(tensor.shape)}, expected {list(shape)}")
    if not torch.isfinite(tensor).all():
        raise BadMessage(f"'{stream}' holds inf or NaN")
    if tensor.numel() and float(tensor.abs().max()) > max_abs:
        raise BadMessage(f"'{stream}' holds a value of magnitude {float(tensor.abs().max()):.3g}, over {max_abs:g}")
    return tensor


def decode_activation(arrays: Mapping[str, np.ndarray], hidden_size: int, vocab_size: int, max_tokens: int,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation ``[B, L, hidden_size]`` and targets ``[B, L]`` of an activation message; BadMessage unless
    the targets are token ids below ``vocab_size`` (or IGNORE) and ``B * L`` at most ``max_tokens``, checked before
    the activation is decoded: the work of a training step grows with the tokens (and attention with L squared),
    so the targets' few bytes must not buy gigabytes (a 16.8 KB message once made the edge allocate 9.8 GB)."""
    targets = arrays.get("targets")
    if targets is None or targets.ndim != 2 or targets.dtype.kind not in "iu" or 0 in targets.shape:
        raise BadMessage("needs integer 'targets' of shape [batch, length]")
    if targets.size > max_tokens:
        raise BadMessage(f"{targets.shape[0]}x{targets.shape[1]} = {targets.size} tokens, over "
                         f"max_tokens_per_message={max_tokens}")
    wide = targets.astype(np.int64)
    if not (((wide >= 0) & (wide < vocab_size)) | (wide == IGNORE)).all():
        raise BadMessage(f"targets must be token ids below {vocab_size} or {IGNORE}")
    activation = decode_stream(arrays, "activation", (*targets.shape, hidden_size))
    return activation, torch.from_numpy(wide)


def encode_state(state: Mapping[str, torch.Tensor], codec: Codec | ErrorFeedback) -> dict[str, np.ndarray]:
    """Named weights as message arrays, one stream per weight (with error feedback, one residual per weight)."""
    arrays = {}
    for name, tensor in state.items():
        encoded = codec.encode(name, tensor) if isinstance(codec, ErrorFeedback) else codec.encode(tensor)
        arrays.update(encoded.wire(name))
    return arrays


def decode_state(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                 max_abs: float = math.inf) -> dict[str, torch.Tensor]:
    """The weights named in ``shapes`` from a message's arrays, which must hold those streams, of those shapes, no
    magnitude over ``max_abs`` (finite weights of 1e30 overflow the first forward pass), and nothing else."""
    streams: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        stream = key.rsplit(_SEPARATOR, 2)[0] if key.count(_SEPARATOR) >= 2 else key
        streams.setdefault(stream, {})[key] = array
    missing, extra = sorted(set(shapes) - set(streams)), sorted(set(streams) - set(shapes))
    if missing or extra:
        raise BadMessage(f"weights do not match: missing {missing[:3]}, unexpected {extra[:3]}")
    return {name: decode_stream(streams[name], name, shape, max_abs) for name, shape in shapes.items()}
