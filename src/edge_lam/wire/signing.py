"""Signing and verifying edge_lam's control messages, the one place that does it for every type: ComputeAdvert,
PlacementPlan, LoadModule and UnloadModule requests, TensorList, ChainPacket (any message with a ``signature``
field of type edge_lam_msgs/Signature).

The signed bytes are a canonical encoding of every field of the message, walked in the order its type declares
them (nested messages and sequences included, each length-prefixed, under the type's name), with
``signature.signature`` left out: signer and stamp are inside, so neither can be changed, and neither can any other
field. Not the CDR serialization (``rclpy.serialization.serialize_message``): Fast CDR leaves its alignment padding
unwritten, so the same message serializes to different bytes from one call to the next (seen here: a string
followed by garbage padding), and a receiver could never reproduce the sender's bytes. Byte and number arrays are
appended as their raw bytes, so a hidden state costs one copy; float32 scalars are packed as float32, as the
receiver will hold them."""

from __future__ import annotations

import array
import struct

import numpy

from edge_lam.trust.checks import Signed, Stamper, Verdict, Verifier

__all__ = ["sign", "signed_bytes", "signed_of", "verify"]


SCALARS = {"float": "<f", "double": "<d", "boolean": "<?", "octet": "<B", "char": "<B", "uint8": "<B", "int8": "<b",
           "uint16": "<H", "int16": "<h", "uint32": "<I", "int32": "<i", "uint64": "<Q", "int64": "<q"}


def signed_bytes(msg) -> bytes:
    """What the signature covers: every field of ``msg`` but ``signature.signature``."""
    parts: list[bytes] = []
    _message(msg, parts, top=True)
    return b"".join(parts)


def _message(msg, parts: list[bytes], top: bool = False) -> None:
    name = type(msg).__module__ + "." + type(msg).__name__
    parts.append(_sized(name.encode()))
    for field, field_type in msg.get_fields_and_field_types().items():
        value = getattr(msg, field)
        if top and field == "signature":
            parts += [_sized(value.signer.encode()), struct.pack("<Q", value.stamp_ns)]
        else:
            _value(value, field_type, parts)


def _value(value, field_type: str, parts: list[bytes]) -> None:
    if field_type in SCALARS:
        parts.append(struct.pack(SCALARS[field_type], value))
    elif field_type.startswith(("string", "wstring")):
        parts.append(_sized(value.encode()))
    elif hasattr(value, "get_fields_and_field_types"):
        _message(value, parts)
    elif isinstance(value, bytes):
        parts.append(_sized(value))
    elif isinstance(value, (array.array, numpy.ndarray)):  # number sequences and fixed arrays: their raw bytes
        parts.append(_sized(value.tobytes()))
    elif isinstance(value, (list, tuple)):
        inner = field_type.partition("<")[2].rpartition(">")[0].split(",")[0] or field_type.rpartition("[")[0]
        parts.append(struct.pack("<Q", len(value)))
        for item in value:
            _value(item, inner, parts)
    else:
        raise TypeError(f"cannot sign a field of type {field_type} ({type(value).__name__})")


def _sized(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def sign(msg, stamper: Stamper, now_ns: int):
    """Sign ``msg`` in place as ``stamper``'s key, stamped ``now_ns`` (or just after its last stamp); returns it."""
    msg.signature.signer = stamper.key.name
    msg.signature.stamp_ns = stamper.stamp(now_ns)
    msg.signature.signature = stamper.key.sign(signed_bytes(msg))  # bytes: rclpy copies them at once
    return msg


def signed_of(msg) -> Signed:
    """The signature a message carries."""
    sig = msg.signature
    return Signed(sig.signer, sig.stamp_ns, bytes(sig.signature))


def verify(msg, verifier: Verifier, channel: str, now_ns: int, identity: str | None = None,
           max_age: bool = True) -> Verdict:
    """The receiver's verdict on ``msg`` arriving on ``channel`` (see ``trust.checks.Verifier.check``)."""
    signed = signed_of(msg)
    data = signed_bytes(msg) if signed.signature else b""
    return verifier.check(channel, signed, data, now_ns, identity, max_age)
