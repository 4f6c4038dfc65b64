"""A distinct, non-default value for every field of any ROS interface type, and a field-by-field comparison.

Publisher and receiver processes both build the sample from the type alone, so the receiver can check every field
of what arrived, nested messages and sequences included, without the two sharing anything but this module.
Values are chosen to survive the wire exactly (floats representable in float32, full-width integers, non-ASCII
strings), and each differs from its type's default so that a field left unset is caught.
"""

from __future__ import annotations

import array
import importlib
import itertools
import re
from typing import Any

INTEGER_RANGES = {
    "int8": (-128, 127), "uint8": (0, 255), "octet": (0, 255), "char": (0, 255),
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}
SEQUENCE = re.compile(r"^sequence<(?P<inner>[^,>]+)(?:, *(?P<bound>\d+))?>$")
ARRAY = re.compile(r"^(?P<inner>.+)\[(?P<size>\d+)\]$")


def interface_class(name: str) -> Any:
    """'pkg/msg/Type', 'pkg/srv/Type' or 'pkg/Type' (a field type) -> the generated Python class."""
    parts = name.split("/")
    package, kind, type_name = (parts[0], "msg", parts[1]) if len(parts) == 2 else parts
    return getattr(importlib.import_module(f"{package}.{kind}"), type_name)


def make_sample(cls: Any) -> Any:
    """An instance of ``cls`` with every field set to a distinct, non-default value."""
    return _message(cls, itertools.count(1))


def _message(cls: Any, counter: itertools.count) -> Any:
    msg = cls()
    for field, field_type in cls.get_fields_and_field_types().items():
        setattr(msg, field, _value(field_type, counter))
    return msg


def _value(field_type: str, counter: itertools.count) -> Any:
    n = next(counter)
    if m := SEQUENCE.match(field_type):
        inner, bound = m["inner"], int(m["bound"] or 3)
        if inner in ("uint8", "octet"):  # byte payloads: long enough to cover every byte value
            return bytes((n + i) % 256 for i in range(300 if not m["bound"] else bound))
        return [_value(inner, counter) for _ in range(min(3, bound))]
    if m := ARRAY.match(field_type):
        return [_value(m["inner"], counter) for _ in range(int(m["size"]))]
    if field_type in INTEGER_RANGES:
        low, high = INTEGER_RANGES[field_type]
        return high - n if low == 0 else low + n  # near the type's limits, to catch a narrowed field
    if field_type in ("float", "double", "float32", "float64"):
        return n + 0.25
    if field_type == "boolean":
        return True
    if field_type.startswith(("string", "wstring")):
        return f"value {n}: ünïcödé ✓"
    return _message(interface_class(field_type), counter)


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every field path where ``actual`` differs from ``expected``; empty when they agree."""
    if hasattr(expected, "get_fields_and_field_types"):
        if type(actual) is not type(expected):
            return [f"{path or '<root>'}: type {type(actual).__name__} != {type(expected).__name__}"]
        found: list[str] = []
        for field in expected.get_fields_and_field_types():
            found += differences(getattr(expected, field), getattr(actual, field), f"{path}.{field}".lstrip("."))
        return found
    if isinstance(expected, (bytes, bytearray, array.array)):  # rclpy keeps numeric sequences as array.array
        if type(actual) is not type(expected) or bytes(actual) != bytes(expected):
            return [f"{path}: {actual!r:.60} != {expected!r:.60}"]
        return []
    if isinstance(expected, str):
        return [] if actual == expected else [f"{path}: {actual!r} != {expected!r}"]
    try:
        expected_items, actual_items = list(expected), list(actual)
    except TypeError:
        return [] if actual == expected else [f"{path}: {actual!r} != {expected!r}"]
    if len(expected_items) != len(actual_items):
        return [f"{path}: {len(actual_items)} elements != {len(expected_items)}"]
    found = []
    for i, (e, a) in enumerate(zip(expected_items, actual_items, strict=True)):
        found += differences(e, a, f"{path}[{i}]")
    return found
