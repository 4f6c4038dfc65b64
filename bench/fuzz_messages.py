"""Seeded generation of malformed and extreme ROS messages for bench/fuzz.py.

Most messages are mutations of a seed (a message really seen on the topic, or a type's default), so they get past
the first check and reach deeper code; some are built from nothing. Values stay within what the message's Python
class accepts: corrupted CDR never reaches a node (the middleware drops it), so what a node must survive is every
value its fields can hold. Tensors and images get mutations of their own that keep the byte count consistent
(shape or dtype changed, elements NaN, headers that claim huge images), which is what passes a size check and
reaches the consumer.
"""

from __future__ import annotations

import copy
import importlib
import random
import re
import struct
import zlib
from typing import Any

SEQUENCE = re.compile(r"^sequence<(?P<inner>[^,>]+)(?:, *(?P<bound>\d+))?>$")
ARRAY = re.compile(r"^(?P<inner>.+)\[(?P<size>\d+)\]$")
BOUNDED_STRING = re.compile(r"^w?string<=(?P<bound>\d+)$")
INTEGER_RANGES = {
    "int8": (-128, 127), "uint8": (0, 255), "octet": (0, 255), "char": (0, 255), "byte": (0, 255),
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}
FLOATS = ("float", "double", "float32", "float64")
FLOAT32_MAX = 3.4028234663852886e38
EXTREME_FLOATS = (float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e30, -1e30, 1e-45, -1.0, FLOAT32_MAX,
                  -FLOAT32_MAX, 2.0**62)
# Strings a node might act on: dtypes, encodings, module ids, policies, paths, YAML that expands, numbers.
WORDS = ("", "float32", "float16", "bfloat16", "int64", "int8", "uint8", "bool", "complex64", "rgb8", "bgr8",
         "mono8", "mono16", "32FC1", "yuv422", "png", "jpeg", "embedding", "head", "blocks:0:30", "blocks:29:0",
         "blocks:0:99999", "exit:15", "exit:-1", "shard:", "projector:x", "edge_lam.chain.shard_node:ShardNode",
         "chain", "device", "cascade", "speculative", "ngram", "exit", "../../../../tmp/x", "/dev/zero",
         "a: &a {b: *a, c: 1}", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", "nan", "-1", "1e309",
         "smollm2-135m-instruct", "hidden_states", "input_ids", "next_token", "draft_ids", "confidence", "\x00",
         "ünïcödé ✓", "session", "robot", "edge", "/", "~", "*", "None")


def interface_class(name: str) -> Any:
    """'pkg/msg/Type', 'pkg/srv/Type' or 'pkg/Type' (a field type) -> the generated Python class."""
    parts = name.split("/")
    if len(parts) == 3:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    found = getattr(importlib.import_module(f"{parts[0]}.msg"), parts[1], None)
    if found is None and "_" in parts[1]:  # an action's goal or result, named 'Action_Goal' as a field type
        action, part = parts[1].split("_", 1)
        found = getattr(getattr(importlib.import_module(f"{parts[0]}.action"), action), part, None)
    if found is None:
        raise TypeError(f"no interface {name}")
    return found


class Generator:
    """Makes messages of any type from a seeded ``random.Random``; ``max_bytes`` bounds any one payload."""

    def __init__(self, seed: int, max_bytes: int = 1 << 20) -> None:
        self.rng = random.Random(seed)
        self.max_bytes = max_bytes

    def message(self, cls: Any, seeds: list[Any]) -> Any:
        """A message of ``cls``: a seed with one to three mutations (most of the time), or one built from nothing."""
        if seeds and self.rng.random() < 0.85:
            msg = copy.deepcopy(self.rng.choice(seeds))
            for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
                msg = self.mutate(msg)
            return msg
        return self.fresh(cls, depth=0)

    # -- from nothing ---------------------------------------------------------------------------------------------

    def fresh(self, cls: Any, depth: int) -> Any:
        msg = cls()
        for field, field_type in cls.get_fields_and_field_types().items():
            if self.rng.random() < 0.5:
                self._set(msg, field, field_type, None, depth)
        return msg

    # -- mutations ------------------------------------------------------------------------------------------------

    def mutate(self, msg: Any, depth: int = 0) -> Any:
        """``msg`` with one field (found by walking down a random path) changed."""
        special = SPECIAL.get(type(msg).__name__)
        if special is not None and self.rng.random() < 0.6:
            return special(self, msg)
        fields = list(type(msg).get_fields_and_field_types().items())
        if not fields:
            return msg
        field, field_type = self.rng.choice(fields)
        value = getattr(msg, field)
        if hasattr(value, "get_fields_and_field_types") and depth < 6 and self.rng.random() < 0.7:
            setattr(msg, field, self.mutate(value, depth + 1))
            return msg
        sequence = SEQUENCE.match(field_type)
        if sequence and not _is_basic(sequence["inner"]) and len(value) and self.rng.random() < 0.6:
            items = list(value)
            index = self.rng.randrange(len(items))
            action = self.rng.random()
            if action < 0.6:
                items[index] = self.mutate(copy.deepcopy(items[index]), depth + 1)
            elif action < 0.8:
                items = items + [copy.deepcopy(items[index]) for _ in range(self.rng.choice((1, 3, 30)))]
            else:
                del items[index]
            setattr(msg, field, items)
            return msg
        self._set(msg, field, field_type, value, depth)
        return msg

    def _set(self, msg: Any, field: str, field_type: str, old: Any, depth: int) -> None:
        for _ in range(4):  # the class refuses values outside its field's type: draw again
            try:
                setattr(msg, field, self.value(field_type, old, depth))
                return
            except (AssertionError, TypeError, ValueError, OverflowError):
                continue

    def value(self, field_type: str, old: Any, depth: int) -> Any:
        rng = self.rng
        if m := SEQUENCE.match(field_type):
            return self._sequence(m["inner"], int(m["bound"]) if m["bound"] else None, old, depth)
        if m := ARRAY.match(field_type):
            return [self.value(m["inner"], None, depth + 1) for _ in range(int(m["size"]))]
        if field_type in INTEGER_RANGES:
            low, high = INTEGER_RANGES[field_type]
            base = old if isinstance(old, int) else 0
            return rng.choice((low, high, 0, 1, max(low, -1), rng.randint(low, high), rng.randint(0, 16),
                               min(high, max(low, base + rng.choice((-1, 1, 1000))))))
        if field_type in FLOATS:
            choice = rng.choice((*EXTREME_FLOATS, rng.gauss(0.0, 1e3)))
            if field_type in ("float", "float32") and abs(choice) > FLOAT32_MAX and choice == choice:
                return float("inf") if choice > 0 else float("-inf")
            return choice
        if field_type == "boolean":
            return rng.random() < 0.5
        if m := BOUNDED_STRING.match(field_type):
            return self.string(old)[: int(m["bound"])]
        if field_type.startswith(("string", "wstring")):
            return self.string(old)
        if depth > 6:
            return interface_class(field_type)()
        return self.fresh(interface_class(field_type), depth + 1)

    def string(self, old: Any) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.35:
            return rng.choice(WORDS)
        if pick < 0.5 and isinstance(old, str) and old:
            cut = rng.randrange(len(old) + 1)
            return old[:cut] + rng.choice(WORDS) + old[cut:]
        if pick < 0.6:
            return "A" * rng.choice((1024, 65536, min(self.max_bytes, 1 << 20)))
        if pick < 0.7:
            return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 64)))
        if pick < 0.8:
            return "{" * 2000 + "}" * 2000
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_/:0123456789 ") for _ in range(rng.randint(1, 40)))

    def _sequence(self, inner: str, bound: int | None, old: Any, depth: int) -> Any:
        rng = self.rng
        if inner in ("uint8", "octet", "byte", "char"):
            data = self.payload(bytes(old) if old is not None else b"")
            return data[:bound] if bound is not None else data
        limit = bound if bound is not None else rng.choice((0, 1, 3, 64, 1000))
        if inner in INTEGER_RANGES or inner in FLOATS or inner == "boolean" or inner.startswith(("string", "wstring")):
            if old is not None and len(old) and rng.random() < 0.5:
                items = list(old)
                items[rng.randrange(len(items))] = self.value(inner, None, depth + 1)
                return items
            size = rng.randint(0, limit)
            if inner.startswith(("string", "wstring")):
                size = min(size, 64)
            return [self.value(inner, None, depth + 1) for _ in range(size)]
        return [self.fresh(interface_class(inner), depth + 1) for _ in range(min(rng.randint(0, limit), 8))]

    def payload(self, old: bytes) -> bytes:
        """Bytes for a byte sequence: the old ones cut, grown or overwritten, or new ones of any size."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.2:
            return old[: rng.randint(0, len(old))]
        if pick < 0.35 and old:
            return old + rng.randbytes(rng.randint(1, 64))
        if pick < 0.55 and old:
            return self.fill(len(old))
        if pick < 0.65:
            return b""
        return rng.randbytes(rng.choice((1, 3, 7, 64, 4096, min(self.max_bytes, 1 << 20))))

    def fill(self, size: int) -> bytes:
        """``size`` bytes of a pattern that hurts: NaN or inf floats, huge integers, all ones, random."""
        pattern = self.rng.choice((struct.pack("<f", float("nan")), struct.pack("<f", float("inf")),
                                   struct.pack("<f", 1e30), struct.pack("<e", float("nan")), b"\xff" * 8,
                                   struct.pack("<q", 2**62), struct.pack("<q", -5), b"\x00"))
        if self.rng.random() < 0.2:
            return self.rng.randbytes(size)
        return (pattern * (size // len(pattern) + 1))[:size]


# -- mutations that keep a message self-consistent, by type name ------------------------------------------------

SAME_SIZE = {1: ("uint8", "int8", "bool"), 2: ("float16", "bfloat16", "int16"), 4: ("float32", "int32"),
             8: ("float64", "int64")}
ITEMSIZE = {name: size for size, names in SAME_SIZE.items() for name in names}


def _tensor(gen: Generator, msg: Any) -> Any:
    """A tensor whose byte count still matches its shape and dtype, but whose shape, dtype or values are wrong."""
    rng = gen.rng
    itemsize = ITEMSIZE.get(msg.dtype, 1)
    count = len(msg.data) // itemsize
    pick = rng.random()
    if pick < 0.3:  # same bytes, another shape: split, merge, add or drop dimensions
        msg.shape = _reshape(rng, count)
    elif pick < 0.5 and msg.dtype in ITEMSIZE:  # same bytes, another dtype of the same size
        msg.dtype = rng.choice(SAME_SIZE[itemsize])
    elif pick < 0.75:  # same shape and dtype, values that hurt
        msg.data = gen.fill(len(msg.data))
    elif pick < 0.9:  # a new dtype and a shape to match, fitting in the payload bound
        dtype = rng.choice(list(ITEMSIZE))
        shape = [rng.choice((0, 1, 2, 3, 576, 4096)) for _ in range(rng.randint(0, 4))]
        size = ITEMSIZE[dtype]
        for n in shape:
            size *= n
        if size <= gen.max_bytes:
            msg.dtype, msg.shape, msg.data = dtype, shape, gen.fill(size)
    else:  # a shape that claims more than the data holds
        msg.shape = [rng.choice((2**31, 2**32 - 1, 65536, 0)) for _ in range(rng.randint(1, 4))]
    return msg


def _reshape(rng: random.Random, count: int) -> list[int]:
    if count == 0:
        return [rng.choice((0, 1, 5)) for _ in range(rng.randint(0, 4))] + [0]
    factors = [f for f in range(1, min(count, 4096) + 1) if count % f == 0]
    first = rng.choice(factors)
    shape = [first, count // first]
    if rng.random() < 0.5:
        shape = [1, *shape]
    if rng.random() < 0.3:
        shape = [count]
    return shape


def _image(gen: Generator, msg: Any) -> Any:
    """A raw image whose width, height, step or encoding disagree with its data, or agree at an extreme size."""
    rng = gen.rng
    pick = rng.random()
    if pick < 0.4:
        msg.width, msg.height = rng.choice(((0, 0), (1, 1), (65535, 65535), (2**32 - 1, 1), (3, 5), (1, 10000)))
        msg.step = rng.choice((0, msg.width * 3, 2**32 - 1, 1))
    elif pick < 0.6:
        msg.encoding = rng.choice((*WORDS[8:15], "", "rgba16", "bayer_rggb8"))
    elif pick < 0.8:
        msg.data = gen.payload(bytes(msg.data))
    else:  # consistent, but tiny or long and thin
        msg.encoding, msg.width, msg.height = "rgb8", rng.choice((1, 2, 4096)), rng.choice((1, 2))
        msg.step = msg.width * 3
        msg.data = gen.fill(msg.step * msg.height)
    return msg


def _compressed(gen: Generator, msg: Any) -> Any:
    """A compressed image whose header claims an extreme size, or bytes that are no image."""
    rng = gen.rng
    pick = rng.random()
    width, height = rng.choice(((65535, 65535), (30000, 30000), (1, 100000), (0, 0), (1, 1)))
    if pick < 0.35:
        msg.format, msg.data = "png", _png_header(width, height) + rng.randbytes(rng.randint(0, 256))
    elif pick < 0.7:
        msg.format, msg.data = "jpeg", _jpeg_header(width, height) + rng.randbytes(rng.randint(0, 256))
    elif pick < 0.85:
        msg.data = gen.payload(bytes(msg.data))
    else:
        msg.format = rng.choice(("", "rgb8; jpeg compressed bgr8", "tiff", "webp", "\x00"))
    return msg


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _jpeg_header(width: int, height: int) -> bytes:
    sof = struct.pack(">BHHB", 8, min(height, 65535), min(width, 65535), 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof


SPECIAL = {"Tensor": _tensor, "Image": _image, "CompressedImage": _compressed}


def _is_basic(type_name: str) -> bool:
    return (type_name in INTEGER_RANGES or type_name in FLOATS or type_name == "boolean"
            or type_name.startswith(("string", "wstring")))
